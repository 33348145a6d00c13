"""Fine-tuning data for backbone probes: task specs, TSV loaders, the transfer guard, tokenised batches.

Plain Python + numpy + the Hugging Face ``tokenizers`` tokenizer (no seqio): the sets are small and every
epoch reshuffles them in memory. Formats are the uniform TSVs of ``shared/data`` (its README), with one
header line; errors (:class:`bilingual.rows.DataError`) name the file and the 1-based line (the header is
line 1), or the task-spec field:

- classification: ``label  text`` (further header columns such as SIB-200's ``index_id`` are ignored);
- pair classification: ``sentence1  sentence2  label`` (or ``premise/hypothesis``, ``question/sentence``;
  PAWS-X adds ``id``), labels ``0``/``1``, ``not_entailment``/``entailment`` or any label list;
- scored pairs (STS): ``sentence1  sentence2  score`` with the score in ``[0, 5]``. The regression target
  is ``score / 5`` (in [0, 1]); Spearman, the STS metric, does not depend on that scaling.

A user's GLUE/XTREME files in these formats plug in through :class:`TaskSpec` (paths relative to a data
root, or absolute). Single texts are tokenised as ``<s> a </s>`` and pairs as one sequence
``<s> a </s></s> b </s>`` (the tokenizer's RoBERTa post-processor), truncated longest-first to
``max_length``; ``token_type_ids`` are all zero (the JinaBERT backbones have one token type). Batches are
padded to the smallest length bucket that holds their longest row, so a run compiles a handful of shapes.

Zero-shot transfer (``TaskSpec.train_language != TaskSpec.language``): :func:`check_transfer` raises
unless every train and dev example is provably not in the target language (file name tag, a stop-word
language guess per example, and no text shared with the target test set).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import unicodedata
from typing import Optional, Sequence

import numpy as np

from bilingual.evaluation.data_files import PAIR_COLUMNS
from bilingual.rows import DataError, read_headed_tsv, valid_number, valid_text
# tokenising and batching live in the library (the finetune stage uses them); re-exported for data users
from bilingual.training.finetune_batches import (DEFAULT_BUCKETS, TokenizedSplit, batch_order,  # noqa: F401
                                                 bucket_length, iterate_batches, num_batches, tokenize)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
BUNDLED_DATA_ROOT = REPO_ROOT / "data" / "finetune"
SHARED_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"  # the project's sibling data folder, when present
DATA_ROOT_ENV = "BILINGUAL_FINETUNE_DATA"

HEAD_TASKS = ("classification", "regression")
INPUTS = ("text", "pair")
METRICS = ("accuracy", "macro_f1", "spearman", "pearson")
# Powers of two from 64: on a CPU each new shape costs seconds of compilation, more than its padding.
SIB200_LABELS = ("science/technology", "travel", "politics", "sports", "health", "entertainment", "geography")


# --------------------------------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One fine-tuning probe.

    ``train``/``dev``/``test``: TSV paths relative to the data root (or absolute). Without a ``dev`` file,
    ``dev_fraction`` of the train rows (grouped by their first text, so a question or sentence never lands
    on both sides; fixed seed) is held out for model selection. ``labels``: the label strings in class-id
    order; ``None`` takes the sorted labels of the train file. ``train_language`` differs from ``language``
    for zero-shot cross-lingual transfer (train and select on one language, test on another).
    """

    name: str
    head: str  # "classification" | "regression"
    inputs: str  # "text" | "pair"
    language: str  # the test language
    train: str
    test: str
    dev: Optional[str] = None
    train_language: Optional[str] = None  # default: ``language``
    labels: Optional[tuple[str, ...]] = None
    metric: str = "accuracy"
    dev_fraction: float = 0.0
    score_range: tuple[float, float] = (0.0, 5.0)
    note: str = ""

    def __post_init__(self):
        if self.head not in HEAD_TASKS:
            raise DataError(None, f"TaskSpec {self.name!r}: head={self.head!r}, expected one of {HEAD_TASKS}")
        if self.inputs not in INPUTS:
            raise DataError(None, f"TaskSpec {self.name!r}: inputs={self.inputs!r}, expected one of {INPUTS}")
        if self.metric not in METRICS:
            raise DataError(None, f"TaskSpec {self.name!r}: metric={self.metric!r}, expected one of {METRICS}")
        if self.head == "regression" and self.metric not in ("spearman", "pearson"):
            raise DataError(None, f"TaskSpec {self.name!r}: metric={self.metric!r}, but a regression task is "
                                    "scored by spearman or pearson")
        if self.dev is None and not 0.0 < self.dev_fraction < 1.0:
            raise DataError(None, f"TaskSpec {self.name!r}: without a dev file, dev_fraction must be in (0, 1)")

    @property
    def source_language(self) -> str:
        return self.train_language or self.language

    @property
    def transfer(self) -> bool:
        return self.source_language != self.language

    @property
    def num_labels(self) -> int:
        return 1 if self.head == "regression" else len(self.labels or ())


def _sib200(train_lang: str, test_lang: str) -> TaskSpec:
    name = f"sib200-{test_lang}" if train_lang == test_lang else f"sib200-{train_lang}2{test_lang}"
    return TaskSpec(name=name, head="classification", inputs="text", language=test_lang,
                    train_language=train_lang, train=f"sib200/{train_lang}-train.tsv",
                    dev=f"sib200/{train_lang}-dev.tsv", test=f"sib200/{test_lang}-test.tsv",
                    labels=SIB200_LABELS, metric="accuracy",
                    note="zero-shot: train+dev en" if train_lang != test_lang else "")


def _stsb(lang: str) -> TaskSpec:
    return TaskSpec(name=f"stsb-{lang}", head="regression", inputs="pair", language=lang,
                    train=f"stsb_multi_mt/{lang}-train.tsv", dev=f"stsb_multi_mt/{lang}-dev.tsv",
                    test=f"stsb_multi_mt/{lang}-test.tsv", metric="spearman")


BENCHMARK_TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    _sib200("en", "en"), _sib200("de", "de"), _sib200("es", "es"),
    _sib200("en", "de"), _sib200("en", "es"),
    TaskSpec(name="pawsx-de", head="classification", inputs="pair", language="de",
             train="pawsx_de/de-dev.tsv", test="pawsx_de/de-test.tsv", labels=("0", "1"), metric="accuracy",
             dev_fraction=0.2, note="no train split here: fit on 80% of dev, select on 20% of dev"),
    _stsb("de"), _stsb("es"), _stsb("en"),
    TaskSpec(name="sqac-qnli-es", head="classification", inputs="pair", language="es",
             train="sqac_qnli_es/es-dev.tsv", test="sqac_qnli_es/es-test.tsv",
             labels=("not_entailment", "entailment"), metric="accuracy", dev_fraction=0.2,
             note="no train split here: fit on 80% of dev, select on 20% of dev"),
]}
DEFAULT_SUITE = tuple(BENCHMARK_TASKS)


def get_tasks(names: Sequence[str] | None = None) -> list[TaskSpec]:
    names = list(names or DEFAULT_SUITE)
    unknown = [n for n in names if n not in BENCHMARK_TASKS]
    if unknown:
        raise DataError(None, f"unknown fine-tuning task(s) {unknown}; known: {sorted(BENCHMARK_TASKS)}")
    return [BENCHMARK_TASKS[n] for n in names]


def default_data_root(tasks: Sequence[TaskSpec] = ()) -> pathlib.Path:
    """``$BILINGUAL_FINETUNE_DATA``, else the full sets in ``../shared/data`` next to the repository when
    they hold every file of ``tasks``, else the bundled subsets in ``data/finetune``."""
    if os.environ.get(DATA_ROOT_ENV):
        return pathlib.Path(os.environ[DATA_ROOT_ENV])
    needed = [p for t in tasks for p in (t.train, t.dev, t.test) if p]
    if SHARED_DATA_ROOT.is_dir() and all((SHARED_DATA_ROOT / p).is_file() for p in needed):
        return SHARED_DATA_ROOT
    return BUNDLED_DATA_ROOT


# ------------------------------------------------------------------------------------------- loading


@dataclasses.dataclass
class Examples:
    """Rows of one file (or a part of one). ``labels``: int64 class ids, or float32 regression targets."""

    texts: list[str]
    pairs: Optional[list[str]]  # second texts of pair tasks, else None
    labels: np.ndarray
    path: str
    lines: list[int]  # source line per row, for messages

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int]) -> "Examples":
        index = list(index)
        return Examples([self.texts[i] for i in index], None if self.pairs is None else [self.pairs[i] for i in index],
                        self.labels[index], self.path, [self.lines[i] for i in index])


def _text_columns(path, header: list[str]) -> tuple[int, int]:
    named = [(header.index(a), header.index(b)) for a, b in PAIR_COLUMNS if a in header and b in header]
    if named:
        return named[0]
    others = [i for i, name in enumerate(header) if name not in ("label", "score", "id", "index_id")]
    if len(others) < 2:
        raise DataError(path, f"header {header} has no two text columns for a pair task "
                              f"(expected one of {[list(p) for p in PAIR_COLUMNS]})", 1)
    return others[0], others[1]


def read_label_set(path, spec_name: str = "") -> tuple[str, ...]:
    """The sorted label strings of a headed TSV's ``label`` column (for specs without ``labels``)."""
    header, body = read_headed_tsv(path, required=("label",))
    i = header.index("label")
    return tuple(sorted({cells[i].strip() for _, cells in body}))


def load_examples(path, spec: TaskSpec, labels: Optional[Sequence[str]] = None) -> Examples:
    """Read one TSV of ``spec``'s format; ``labels`` (default ``spec.labels``) lists the label strings in
    class-id order (classification)."""
    path = pathlib.Path(path)
    texts, pairs, values, lines = [], [], [], []
    if spec.head == "regression":
        header, body = read_headed_tsv(path, required=("score",), min_columns=3)
        i1, i2 = _text_columns(path, header)
        iscore = header.index("score")
        low, high = spec.score_range
        for number, cells in body:
            texts.append(valid_text(cells[i1], path, number, header[i1]))
            pairs.append(valid_text(cells[i2], path, number, header[i2]))
            score = valid_number(cells[iscore], path, number, "score", spec.score_range)
            lines.append(number)
            values.append((score - low) / (high - low))
        return Examples(texts, pairs, np.asarray(values, np.float32), str(path), lines)

    labels = labels if labels is not None else spec.labels
    if labels is None:
        raise DataError(None, f"TaskSpec {spec.name!r}: a classification file needs its label list")
    label_ids = {label: i for i, label in enumerate(labels)}
    if spec.inputs == "text":
        header, body = read_headed_tsv(path, required=("label", "text"))
        i1, i2 = header.index("text"), None
    else:
        header, body = read_headed_tsv(path, required=("label",), min_columns=3)
        i1, i2 = _text_columns(path, header)
    ilabel = header.index("label")
    for number, cells in body:
        label = cells[ilabel].strip()
        if label not in label_ids:
            raise DataError(path, f"label {label!r} is not one of {list(labels)} (task {spec.name!r})", number)
        texts.append(valid_text(cells[i1], path, number, header[i1]))
        if i2 is not None:
            pairs.append(valid_text(cells[i2], path, number, header[i2]))
        values.append(label_ids[label])
        lines.append(number)
    return Examples(texts, pairs if i2 is not None else None, np.asarray(values, np.int64), str(path), lines)


@dataclasses.dataclass
class TaskData:
    spec: TaskSpec
    labels: Optional[tuple[str, ...]]  # class names in id order (None for regression)
    train: Examples
    dev: Examples
    test: Examples
    dev_source: str  # "file" or "held out of train"
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # train/dev rows equal to a test row


def resolve(data_root, relative: str) -> pathlib.Path:
    path = pathlib.Path(relative)
    return path if path.is_absolute() else pathlib.Path(data_root) / path


def split_off_dev(examples: Examples, fraction: float, seed: int = 0) -> tuple[Examples, Examples]:
    """``(train, dev)``: about ``fraction`` of the rows for dev, whole groups of equal first text at once."""
    keys = [_normalise(t) for t in examples.texts]
    groups = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(groups))
    n_dev = max(1, int(round(fraction * len(groups))))
    dev_groups = {groups[i] for i in order[:n_dev]}
    dev_idx = [i for i, k in enumerate(keys) if k in dev_groups]
    train_idx = [i for i, k in enumerate(keys) if k not in dev_groups]
    if not train_idx:
        raise DataError(examples.path, f"too few rows to hold out a dev part ({len(examples)} rows)")
    return examples.subset(train_idx), examples.subset(dev_idx)


def load_task(spec: TaskSpec, data_root=None) -> TaskData:
    """The task's three splits (dev held out of train when there is no dev file); checks transfer runs.

    Train and dev rows whose input equals a test row's (text, or both texts of a pair; case- and
    whitespace-insensitive) are dropped and counted in ``TaskData.dropped``: upstream splits are not always
    disjoint (full sets: STSb de train 13 and dev 7 such pairs, es 10/4, en 9/2; PAWS-X de dev 6)."""
    data_root = pathlib.Path(data_root) if data_root is not None else default_data_root([spec])
    paths = {role: resolve(data_root, rel) for role, rel in
             (("train", spec.train), ("dev", spec.dev), ("test", spec.test)) if rel}
    missing = [f"{role}={p}" for role, p in paths.items() if not p.is_file()]
    if missing:
        raise DataError(None, f"task {spec.name!r}: missing file(s) under data root {data_root}: "
                              f"{', '.join(missing)}")
    labels = None
    if spec.head == "classification":
        labels = tuple(spec.labels) if spec.labels else read_label_set(paths["train"], spec.name)
        if len(labels) < 2:
            raise DataError(paths["train"], f"task {spec.name!r} needs at least two labels, got {labels}")
    train = load_examples(paths["train"], spec, labels)
    test = load_examples(paths["test"], spec, labels)
    if "dev" in paths:
        dev, dev_source = load_examples(paths["dev"], spec, labels), "file"
    else:
        train, dev = split_off_dev(train, spec.dev_fraction)
        dev_source = f"{spec.dev_fraction:.0%} of train held out"
    if spec.transfer:
        check_transfer(spec, train, dev, test)
    test_keys = {_example_key(test, i) for i in range(len(test))}
    dropped = {}
    for role in ("train", "dev"):
        part = train if role == "train" else dev
        keep = [i for i in range(len(part)) if _example_key(part, i) not in test_keys]
        dropped[role] = len(part) - len(keep)
        if dropped[role]:
            part = part.subset(keep)
            train, dev = (part, dev) if role == "train" else (train, part)
    return TaskData(spec, labels, train, dev, test, dev_source, dropped)


def _example_key(examples: Examples, i: int) -> tuple[str, str]:
    return _normalise(examples.texts[i]), _normalise(examples.pairs[i]) if examples.pairs is not None else ""


def limit_rows(data: TaskData, max_train: int = 0, max_dev: int = 0, max_test: int = 0, seed: int = 0) -> TaskData:
    """A fixed-seed random subset (kept in file order) of at most ``max_train`` / ``max_dev`` /
    ``max_test`` rows of each split; 0 keeps a split whole."""

    def cut(examples: Examples, n: int, tag: int) -> Examples:
        if not n or len(examples) <= n:
            return examples
        keep = np.sort(np.random.default_rng([seed, tag]).choice(len(examples), size=n, replace=False))
        return examples.subset(keep)

    return dataclasses.replace(data, train=cut(data.train, max_train, 0), dev=cut(data.dev, max_dev, 1),
                               test=cut(data.test, max_test, 2))


# ------------------------------------------------------------------------------- the transfer guard

# The most frequent function words of each language (closed-class, short lists): enough to tell en/de/es
# apart on most sentences of five words or more. A word in two lists ("in", "es", "an") counts for none.
STOPWORDS = {
    "en": set("the of and to in is was that for it with as on are by this be from at or have an which "
              "not but were they has had their its been also more than can who would a he she his her "
              "you we there what will".split()),
    "de": set("der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als auch es "
              "an werden aus er hat dass sie nach wird bei einer um am sind noch wie einem über einen so "
              "zum war haben nur oder aber vor zur bis mehr durch man".split()),
    "es": set("de la que el en y a los se del las un por con no una su para es al lo como más pero sus le "
              "ya o fue este ha sí porque esta son entre cuando muy sin sobre también me hasta hay donde "
              "desde todo nos durante".split()),
}
_EXCLUSIVE = {lang: words - set().union(*(other for o, other in STOPWORDS.items() if o != lang))
              for lang, words in STOPWORDS.items()}
# A transfer run fails when more than this share of its train or dev examples read as the target language.
# Measured on the full files: SIB-200 en train 0 of 701 rows read as de or es; STSb en train (both
# sentences) 4 of 11,498 as de and 7 as es; PAWS-X de dev 1 of 1,932 as es, 1 as en.
MAX_TARGET_SHARE = 0.02


def guess_language(text: str, languages: Sequence[str] = tuple(STOPWORDS)) -> Optional[str]:
    """The language whose stop words cover the most words of ``text``, or None when fewer than two words
    are stop words or the top two languages tie."""
    words = re.findall(r"\w+", text.casefold())
    counts = sorted(((sum(w in _EXCLUSIVE[lang] for w in words), lang) for lang in languages), reverse=True)
    if counts[0][0] < 2 or (len(counts) > 1 and counts[0][0] == counts[1][0]):
        return None
    return counts[0][1]


def _language_tag(path: str) -> Optional[set[str]]:
    """Languages named by a file name such as ``de-train.tsv`` or ``de-en-test.tsv``; None if none."""
    stem = pathlib.Path(path).name.split(".")[0]
    parts = stem.split("-")
    langs = {p for p in parts[:-1] if re.fullmatch(r"[a-z]{2,3}", p)} if len(parts) > 1 else set()
    return langs or None


def _normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def check_transfer(spec: TaskSpec, train: Examples, dev: Examples, test: Examples) -> None:
    """Raise :class:`bilingual.rows.DataError` unless no train/dev example of a transfer task is in the target
    language: the file names' language tags, the per-example stop-word guess (at most ``MAX_TARGET_SHARE``
    of the examples, and the file's majority language must be the source language) and exact text overlap
    (case- and whitespace-insensitive) with the target test set."""
    target, source = spec.language, spec.source_language
    test_texts = {_normalise(t) for t in test.texts + (test.pairs or [])}
    for role, part in (("train", train), ("dev", dev)):
        tag = _language_tag(part.path)
        if tag is not None and target in tag:
            raise DataError(part.path, f"the {role} file of zero-shot task {spec.name!r} is tagged {sorted(tag)}, "
                                       f"which includes the target language {target!r}")
        if tag is not None and source not in tag:
            raise DataError(part.path, f"the {role} file of task {spec.name!r} is tagged {sorted(tag)}, "
                                       f"not the source language {source!r}")
        texts = part.texts + (part.pairs or [])
        shared = [(line, t) for line, t in zip(part.lines * (2 if part.pairs else 1), texts)
                  if _normalise(t) in test_texts]
        if shared:
            line, text = shared[0]
            raise DataError(part.path, f"{len(shared)} {role} text(s) of zero-shot task {spec.name!r} also occur "
                                       f"in the target test set {test.path}, e.g. {text!r}", line)
        if target in STOPWORDS:
            guesses = [guess_language(t) for t in texts]
            hits = [line for line, g in zip(part.lines * (2 if part.pairs else 1), guesses) if g == target]
            if len(hits) > MAX_TARGET_SHARE * len(texts):
                raise DataError(
                    part.path, f"{len(hits)} of {len(texts)} {role} texts of zero-shot task {spec.name!r} "
                               f"read as the target language {target!r} (lines {hits[:5]}...); limit "
                               f"{MAX_TARGET_SHARE:.0%}")
            known = [g for g in guesses if g is not None]
            if source in STOPWORDS and known:
                majority = max(set(known), key=known.count)
                if majority != source:
                    raise DataError(part.path, f"the {role} examples of task {spec.name!r} read as {majority!r}, "
                                               f"not the source language {source!r}")
