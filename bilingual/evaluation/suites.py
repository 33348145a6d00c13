"""Evaluation suites: named lists of tasks, defined as data in ``suites.json``, run over a data root.

A task is ``{"type": <evaluator>, "languages": [...], "files": {role: path relative to the data root}}``.
Roles per type: ``sts``/``bitext``/``clustering``/``pair_classification``: ``data``; ``retrieval``:
``queries``, ``corpus``, ``qrels``; ``classification``: ``train`` and optional ``test`` (without a test
file, k-fold cross-validation on ``train``). A bitext may instead give ``source`` and ``target``
(two line-aligned text files).

Long-document tasks (``bilingual.evaluation.long_documents``) generate their documents at run time, sized
with the encoder's tokenizer, at the lengths in ``params.lengths`` (default 256 ... 8192): ``passkey``
(role ``filler``), ``needle`` (``filler``, ``queries``, ``corpus``) and ``literature`` (``data``: a sections
JSONL, or a glob of raw text files for the full build). ``params`` may also give ``documents`` (per length)
and ``seed``. Their main score is the mean over lengths; ``lengths`` in the result holds each length's row.

The default data root is the bundled demo data (``data/demo/eval`` in a source checkout); any directory
with the same layout (``shared/data``, a user's full sets) plugs in unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import pathlib
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from bilingual.evaluation import data_files, long_documents
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
               "pair_classification": "ap", "classification": "accuracy", **long_documents.MAIN_METRIC}
LONG_TYPES = long_documents.KINDS
FILE_ROLES = {"passkey": ({"filler"},), "needle": ({"filler", "queries", "corpus"},), "literature": ({"data"},),
              "sts": ({"data"},), "pair_classification": ({"data"},), "clustering": ({"data"},),
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
    params: dict = dataclasses.field(default_factory=dict)

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
        params = dict(spec.get("params", {}))
        if kind in LONG_TYPES and len(spec.get("languages", ())) != 1:
            raise SuiteError(f"{path}: tasks.{name}.languages must name exactly one language for a {kind} task")
        unknown = set(params) - {"lengths", "documents", "seed"}
        if unknown:
            raise SuiteError(f"{path}: tasks.{name}.params has unknown key(s) {sorted(unknown)}")
        tasks[name] = Task(name, kind, tuple(spec.get("languages", ())), dict(files), params)
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


def _is_glob(path) -> bool:
    return any(c in str(path) for c in "*?[")


def sha256(path: pathlib.Path) -> str:
    """The file's sha256; for a glob, the sha256 of its matches' names and contents in sorted order."""
    digest = hashlib.sha256()
    paths = sorted(pathlib.Path(p) for p in glob.glob(str(path))) if _is_glob(path) else [pathlib.Path(path)]
    for p in paths:
        if len(paths) > 1 or _is_glob(path):
            digest.update(p.name.encode("utf-8") + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_task_data(task: Task, data_root, limit: Optional[int] = None):
    """The task's data (loader output), optionally cut to the first ``limit`` rows / queries."""
    p = task.paths(data_root)
    if task.type in LONG_TYPES:
        raw = task.type == "literature" and _is_glob(p["data"])
        return long_documents.load_source(task.type, task.languages[0], p, demo_training_sentences() if raw else None)
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


@functools.lru_cache(maxsize=1)
def demo_training_sentences() -> frozenset:
    """Sentences of the bundled demo training files (``data/demo/train``; empty where it is absent): a
    raw-text literature build drops the paragraphs that hold one, so the demo's model is scored on text
    it never trained on."""
    train = DEMO_DATA_ROOT.parent / "train"
    files = [p for p in train.rglob("*") if p.suffix in (".txt", ".tsv")] if train.is_dir() else []
    return frozenset(long_documents.sentences_of_files(files))


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


def long_settings(task: Task, limit: Optional[int] = None, long_options: Optional[dict] = None) -> dict:
    """``lengths``, ``documents`` and ``seed`` of a long-document task: the suite's ``params``, overridden
    by ``long_options`` (command-line values), the document count capped by ``limit``."""
    options = {k: v for k, v in (long_options or {}).items() if v is not None}
    lengths = tuple(int(x) for x in options.get("lengths", task.params.get("lengths", long_documents.LENGTHS)))
    documents = int(options.get("documents", task.params.get("documents",
                                                             long_documents.DEFAULT_DOCUMENTS[task.type])))
    if limit is not None:
        documents = min(documents, max(int(limit), 2))
    return {"lengths": lengths, "n_documents": documents, "seed": int(options.get("seed", task.params.get("seed", 0)))}


def generate_long(task: Task, source, encoder=None, limit: Optional[int] = None,
                  long_options: Optional[dict] = None) -> list:
    """The task's generated problems, lengths counted with ``encoder.count_tokens`` where it has one."""
    counter = getattr(encoder, "count_tokens", None)
    return long_documents.generate(source, count_tokens=counter, **long_settings(task, limit, long_options))


def evaluate_task(encoder: TextEncoder, task: Task, data) -> dict[str, float]:
    if task.type in LONG_TYPES:  # data: the generated LongTask list
        return long_documents.evaluate_long(encoder, data)["metrics"]
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

        self.long_cache: dict[tuple[int, str], np.ndarray] = {}
        if hasattr(encoder, "count_tokens"):
            self.count_tokens = encoder.count_tokens

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._cached(texts, self.cache, lambda t: t, self.encoder.encode)

    def encode_at(self, texts: Sequence[str], length: int) -> np.ndarray:
        """Long-document encoding at ``length`` tokens (the wrapped encoder's ``encode_at`` if it has one)."""
        if hasattr(self.encoder, "encode_at"):
            return self._cached(texts, self.long_cache, lambda t: (length, t),
                                lambda m: self.encoder.encode_at(m, length))
        return self.encode(texts)

    def _cached(self, texts, cache, key, encode) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if key(t) not in cache))
        if missing:
            start = time.perf_counter()
            embeddings = np.asarray(encode(missing))
            self.seconds += time.perf_counter() - start
            if embeddings.ndim != 2 or embeddings.shape[0] != len(missing):
                raise ValueError(f"encoder returned shape {embeddings.shape} for {len(missing)} texts")
            cache.update(zip(map(key, missing), embeddings))
        return np.stack([cache[key(t)] for t in texts]) if texts else np.zeros((0, 0), np.float32)


def check_files(tasks: Sequence[Task], data_root=None) -> pathlib.Path:
    """The data root (default: the bundled demo data), after checking that every task file exists."""
    data_root = pathlib.Path(data_root) if data_root is not None else DEMO_DATA_ROOT
    missing = [str(p) for t in tasks for p in t.paths(data_root).values()
               if not (glob.glob(str(p)) if _is_glob(p) else p.is_file())]
    if missing:
        raise DataError(None, f"missing evaluation file(s) under data root {data_root}: {', '.join(missing)}")
    return data_root


def run_suite(encoder: TextEncoder, tasks: Sequence[Task], data_root=None, *, limit: Optional[int] = None,
              log: Optional[Callable[[str], None]] = None, long_options: Optional[dict] = None) -> dict[str, Any]:
    """Run ``tasks`` and return ``{"tasks": {name: {...}}, "data_root", "timings"}``.

    Per task: type, languages, main metric and score, all metrics, files with sha256, seconds; a
    long-document task also ``lengths`` (one row per length: scores, documents, chance, tokens) and the
    sha256 of its generated documents. ``long_options`` (``lengths``, ``documents``, ``seed``) override the
    long-document tasks' suite params. All files of all tasks are checked for existence before anything
    is encoded.
    """
    data_root = check_files(tasks, data_root)
    cached = CachingEncoder(encoder)
    results: dict[str, Any] = {}
    start_all = time.perf_counter()
    for task in tasks:
        start = time.perf_counter()
        data = load_task_data(task, data_root, limit)
        encode_before = cached.seconds
        extra = {}
        if task.type in LONG_TYPES:
            problems = generate_long(task, data, cached, limit, long_options)
            long_result = long_documents.evaluate_long(cached, problems, log)
            metrics = long_result["metrics"]
            extra = {"lengths": long_result["lengths"], "generated_sha256": long_documents.digest(problems),
                     "settings": {k: (list(v) if isinstance(v, tuple) else v)
                                  for k, v in long_settings(task, limit, long_options).items()}}
        else:
            metrics = evaluate_task(cached, task, data)
        results[task.name] = {
            "type": task.type, "languages": list(task.languages), "main_metric": task.main_metric,
            "main_score": metrics[task.main_metric], "metrics": metrics,
            "files": {role: {"path": rel, "sha256": sha256(data_root / rel)} for role, rel in task.files.items()},
            "seconds": time.perf_counter() - start, "encode_seconds": cached.seconds - encode_before, **extra,
        }
        if log:
            log(f"{task.name}: {task.main_metric} = {metrics[task.main_metric]:.2f} "
                f"({results[task.name]['seconds']:.1f}s)")
    return {"data_root": str(data_root), "limit": limit, "tasks": results,
            "timings": {"total_seconds": time.perf_counter() - start_all, "encode_seconds": cached.seconds,
                        "texts_encoded": len(cached.cache)}}


def average_main_score(result: dict[str, Any]) -> float:
    return float(np.mean([t["main_score"] for t in result["tasks"].values()]))
