"""Evaluation suites: named lists of tasks, defined as data in ``suites.json``, run over a data root.

A task is ``{"type": <evaluator>, "languages": [...], "files": {role: path relative to the data root}}``.
Roles per type: ``sts``/``bitext``/``clustering``/``pair_classification``: ``data``; ``retrieval``:
``queries``, ``corpus``, ``qrels``; ``classification``: ``train`` and optional ``test`` (without a test
file, k-fold cross-validation on ``train``). A bitext may instead give ``source`` and ``target``
(two line-aligned text files).

The default data root is the bundled demo data (``data/demo/eval`` in a source checkout); any directory
with the same layout (``shared/data``, a user's full sets) plugs in unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from bilingual.evaluation import data_files
from bilingual.evaluation.bitext import evaluate_bitext
from bilingual.evaluation.classification import evaluate_classification
from bilingual.evaluation.clustering import evaluate_clustering
from bilingual.evaluation.common import TextEncoder
from bilingual.evaluation.data_files import Bitext, Labelled, PairScores, RetrievalData
from bilingual.evaluation.pair_classification import evaluate_pair_classification
from bilingual.evaluation.retrieval import evaluate_retrieval
from bilingual.evaluation.sts import evaluate_sts
from bilingual.rows import DataError

SUITES_FILE = pathlib.Path(__file__).with_name("suites.json")
DEMO_DATA_ROOT = pathlib.Path(__file__).resolve().parents[2] / "data" / "demo" / "eval"

MAIN_METRIC = {"sts": "spearman", "retrieval": "ndcg_at_10", "bitext": "f1", "clustering": "v_measure",
               "pair_classification": "ap", "classification": "accuracy"}
FILE_ROLES = {"sts": ({"data"},), "pair_classification": ({"data"},), "clustering": ({"data"},),
              "bitext": ({"data"}, {"source", "target"}), "retrieval": ({"queries", "corpus", "qrels"},),
              "classification": ({"train"}, {"train", "test"})}


class SuiteError(ValueError):
    """An unknown suite or task, or a malformed suite definition; the message names the file and key."""


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    type: str
    languages: tuple[str, ...]
    files: dict[str, str]

    @property
    def main_metric(self) -> str:
        return MAIN_METRIC[self.type]

    def paths(self, data_root) -> dict[str, pathlib.Path]:
        return {role: pathlib.Path(data_root) / rel for role, rel in self.files.items()}


def load_definitions(path=SUITES_FILE) -> tuple[dict[str, Task], dict[str, list[str]]]:
    """``(tasks by name, suites: name -> task names)`` from a suites JSON file, validated."""
    path = pathlib.Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SuiteError(f"cannot read suite definitions {path}: {err}") from err
    tasks = {}
    for name, spec in doc.get("tasks", {}).items():
        kind = spec.get("type")
        if kind not in FILE_ROLES:
            raise SuiteError(f"{path}: tasks.{name}.type is {kind!r}; expected one of {sorted(FILE_ROLES)}")
        files = spec.get("files", {})
        if set(files) not in FILE_ROLES[kind]:
            expected = " or ".join(str(sorted(r)) for r in FILE_ROLES[kind])
            raise SuiteError(f"{path}: tasks.{name}.files has roles {sorted(files)}; a {kind} task needs {expected}")
        tasks[name] = Task(name, kind, tuple(spec.get("languages", ())), dict(files))
    suites = {}
    for suite, names in doc.get("suites", {}).items():
        unknown = [n for n in names if n not in tasks]
        if unknown:
            raise SuiteError(f"{path}: suites.{suite} names unknown task(s) {unknown}")
        suites[suite] = list(names)
    return tasks, suites


def get_suite(name: str, definitions=SUITES_FILE) -> list[Task]:
    tasks, suites = load_definitions(definitions)
    if name in suites:
        return [tasks[n] for n in suites[name]]
    if name in tasks:  # a single task by name
        return [tasks[name]]
    raise SuiteError(f"unknown suite {name!r}; suites: {', '.join(suites)}; or a task name from {definitions}")


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_task_data(task: Task, data_root, limit: Optional[int] = None):
    """The task's data (loader output), optionally cut to the first ``limit`` rows / queries."""
    p = task.paths(data_root)
    if task.type == "sts":
        data = data_files.load_sts(p["data"])
    elif task.type == "pair_classification":
        data = data_files.load_pair_labels(p["data"])
    elif task.type == "bitext":
        data = data_files.load_bitext(p["data"]) if "data" in p else data_files.load_bitext(p["source"], p["target"])
    elif task.type == "retrieval":
        data = data_files.load_retrieval(p["corpus"], p["queries"], p["qrels"])
    elif task.type == "clustering":
        data = data_files.load_labelled(p["data"])
    else:
        train = data_files.load_labelled(p["train"])
        test = data_files.load_labelled(p["test"]) if "test" in p else None
        data = (train, test)
    return data if limit is None else _limit(data, limit)


def _limit(data, n: int):
    if isinstance(data, PairScores):
        return PairScores(data.sentences1[:n], data.sentences2[:n], data.values[:n])
    if isinstance(data, Bitext):
        return Bitext(data.source[:n], data.target[:n], data.source_name, data.target_name)
    if isinstance(data, Labelled):
        return Labelled(data.labels[:n], data.texts[:n])
    if isinstance(data, RetrievalData):
        queries = dict(list(data.queries.items())[:n])
        return RetrievalData(data.corpus, queries, {q: data.qrels[q] for q in queries})
    train, test = data
    return _limit(train, n), (None if test is None else _limit(test, n))


def evaluate_task(encoder: TextEncoder, task: Task, data) -> dict[str, float]:
    if task.type == "sts":
        return evaluate_sts(encoder, data)
    if task.type == "pair_classification":
        return evaluate_pair_classification(encoder, data)
    if task.type == "bitext":
        return evaluate_bitext(encoder, data)
    if task.type == "retrieval":
        return evaluate_retrieval(encoder, data)
    if task.type == "clustering":
        return evaluate_clustering(encoder, data)
    train, test = data
    return evaluate_classification(encoder, train, test)


class CachingEncoder:
    """Remembers embeddings by text within one suite run (tasks share sentences and corpora)."""

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder
        self.cache: dict[str, np.ndarray] = {}
        self.seconds = 0.0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            start = time.perf_counter()
            embeddings = np.asarray(self.encoder.encode(missing))
            self.seconds += time.perf_counter() - start
            if embeddings.ndim != 2 or embeddings.shape[0] != len(missing):
                raise ValueError(f"encoder returned shape {embeddings.shape} for {len(missing)} texts")
            self.cache.update(zip(missing, embeddings))
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)


def check_files(tasks: Sequence[Task], data_root=None) -> pathlib.Path:
    """The data root (default: the bundled demo data), after checking that every task file exists."""
    data_root = pathlib.Path(data_root) if data_root is not None else DEMO_DATA_ROOT
    missing = [str(p) for t in tasks for p in t.paths(data_root).values() if not p.is_file()]
    if missing:
        raise DataError(None, f"missing evaluation file(s) under data root {data_root}: {', '.join(missing)}")
    return data_root


def run_suite(encoder: TextEncoder, tasks: Sequence[Task], data_root=None, *, limit: Optional[int] = None,
              log: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Run ``tasks`` and return ``{"tasks": {name: {...}}, "data_root", "timings"}``.

    Per task: type, languages, main metric and score, all metrics, files with sha256, seconds.
    All files of all tasks are checked for existence before anything is encoded.
    """
    data_root = check_files(tasks, data_root)
    cached = CachingEncoder(encoder)
    results: dict[str, Any] = {}
    start_all = time.perf_counter()
    for task in tasks:
        start = time.perf_counter()
        data = load_task_data(task, data_root, limit)
        encode_before = cached.seconds
        metrics = evaluate_task(cached, task, data)
        results[task.name] = {
            "type": task.type, "languages": list(task.languages), "main_metric": task.main_metric,
            "main_score": metrics[task.main_metric], "metrics": metrics,
            "files": {role: {"path": rel, "sha256": sha256(data_root / rel)} for role, rel in task.files.items()},
            "seconds": time.perf_counter() - start, "encode_seconds": cached.seconds - encode_before,
        }
        if log:
            log(f"{task.name}: {task.main_metric} = {metrics[task.main_metric]:.2f} "
                f"({results[task.name]['seconds']:.1f}s)")
    return {"data_root": str(data_root), "limit": limit, "tasks": results,
            "timings": {"total_seconds": time.perf_counter() - start_all, "encode_seconds": cached.seconds,
                        "texts_encoded": len(cached.cache)}}


def average_main_score(result: dict[str, Any]) -> float:
    return float(np.mean([t["main_score"] for t in result["tasks"].values()]))
