"""seqio data sources for local or remote files (TSV, JSONL, plain text) with row validation.

The formats of ``shared/data/README.md`` are the contract:

* plain text: one document per line (``kind="text"`` -> feature ``text``);
* pairs: TSV ``text1\\ttext2`` with a header, or JSONL (``kind="pairs"`` -> ``query``, ``passage``);
* retrieval tuples: TSV ``query\\tpositive\\tnegative_1 ... negative_m`` or JSONL with a list of negatives
  (``kind="retrieval"`` -> ``query``, ``passage``, ``negatives`` [m]);
* STS: TSV ``sentence1\\tsentence2\\tscore`` (``kind="sts"`` -> ``a``, ``b``, ``score`` float32).

Which column/key feeds which feature is configurable (``columns``); TSV columns are named by header or by
0-based index. Files are found with ``tf.io.gfile.glob``, so local paths, globs and ``gs://`` all work.

Validation: a row with a missing column, an empty text, a score that is not a finite number, too few negatives,
bad JSON or invalid UTF-8 raises ``DataError("<file>:<line>: <what>")`` (the error reaches the caller wrapped in
a ``tf.errors`` exception whose message holds that text). With ``on_error="skip"`` such rows are dropped and a
warning with the count (and the first reason) is logged once per file. Nothing is dropped silently.

Sharding: ``list_shards`` returns the files. When a split has at least as many files as hosts, seqio passes the
shard to ``get_dataset`` and each host reads only its files; otherwise seqio reads the (identically ordered)
rows and keeps every ``num_shards``-th one (``Task.get_dataset`` decides, see seqio).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks import tf_setup  # noqa: F401  (TensorFlow on the CPU only)

log = logging.getLogger(__name__)

KINDS = ("text", "pairs", "retrieval", "sts")

#: default column/key per output feature. TSV columns may also be 0-based integers.
DEFAULT_COLUMNS = {
    "text": {"text": 0},
    "pairs": {"query": 0, "passage": 1},
    "retrieval": {"query": 0, "passage": 1, "negatives": 2},  # TSV: every column from 2 on; JSONL: a list
    "sts": {"a": 0, "b": 1, "score": 2},
}
DEFAULT_JSON_KEYS = {
    "text": {"text": "text"},
    "pairs": {"query": "query", "passage": "passage"},
    "retrieval": {"query": "query", "passage": "positive", "negatives": "negatives"},
    "sts": {"a": "sentence1", "b": "sentence2", "score": "score"},
}


class DataError(ValueError):
    """A malformed input row; the message starts with ``<file>:<line>:``."""


def output_signature(kind: str) -> dict[str, tf.TensorSpec]:
    """Feature name -> spec of the raw (untokenised) examples a source of this kind yields."""
    text = tf.TensorSpec([], tf.string)
    if kind == "text":
        return {"text": text}
    if kind == "pairs":
        return {"query": text, "passage": text}
    if kind == "retrieval":
        return {"query": text, "passage": text, "negatives": tf.TensorSpec([None], tf.string)}
    if kind == "sts":
        return {"a": text, "b": text, "score": tf.TensorSpec([], tf.float32)}
    raise ValueError(f"unknown source kind {kind!r}; expected one of {KINDS}")


def _infer_format(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith(".tsv"):
        return "tsv"
    return "text"


class RowParser:
    """Turns one line of one file into a feature dict, or raises ``DataError`` naming file and line.

    Args:
      kind: one of ``KINDS``.
      file_format: ``"tsv"``, ``"jsonl"``, ``"text"`` or ``None`` (from the file extension: ``.tsv``,
        ``.jsonl``/``.json``, anything else plain text).
      columns: feature -> TSV column (header name or 0-based index) or JSON key; defaults above. For
        retrieval TSV, ``negatives`` names the first negative column; every column after it is one too.
      header: whether TSV files start with a header line (the shared data and the demo data do).
      num_negatives: retrieval only: rows must carry at least this many non-empty negatives; the first
        ``num_negatives`` are kept (fixed shapes for the trainer).
      score_range: STS only: optional (low, high) inclusive bounds of the score.
    """

    def __init__(self, kind: str, *, file_format: str | None = None, columns: Mapping[str, Any] | None = None,
                 header: bool = True, num_negatives: int | None = None,
                 score_range: tuple[float, float] | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown source kind {kind!r}; expected one of {KINDS}")
        if kind == "retrieval" and (num_negatives is None or num_negatives < 1):
            raise ValueError(f"a retrieval source needs num_negatives >= 1, got {num_negatives!r}")
        self.kind, self.file_format, self.header = kind, file_format, header
        self.columns = dict(columns) if columns else None
        self.num_negatives, self.score_range = num_negatives, score_range

    def format_of(self, path: str) -> str:
        fmt = self.file_format or _infer_format(path)
        if fmt not in ("tsv", "jsonl", "text"):
            raise ValueError(f"unknown file_format {fmt!r}")
        if fmt == "text" and self.kind != "text":
            raise DataError(f"{path}: a {self.kind} source needs .tsv or .jsonl files (or set file_format)")
        return fmt

    def resolve_tsv_columns(self, path: str, header_cells: list[str] | None) -> dict[str, int]:
        cols = self.columns or DEFAULT_COLUMNS[self.kind]
        out = {}
        for feature, col in cols.items():
            if isinstance(col, int):
                out[feature] = col
            elif header_cells is None:
                raise DataError(f"{path}: column {col!r} given by name but header=False")
            elif col not in header_cells:
                raise DataError(f"{path}:1: header {header_cells} has no column {col!r} (for {feature!r})")
            else:
                out[feature] = header_cells.index(col)
        missing = set(DEFAULT_COLUMNS[self.kind]) - set(out)
        if missing:
            raise ValueError(f"columns lacks {sorted(missing)} for a {self.kind} source")
        return out

    def _text(self, value: Any, where: str, feature: str) -> str:
        if not isinstance(value, str):
            raise DataError(f"{where}: {feature!r} is {type(value).__name__}, expected a string")
        if not value.strip():
            raise DataError(f"{where}: empty text in {feature!r}")
        return value

    def _score(self, value: Any, where: str) -> float:
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: score {value!r} is not a number") from None
        if not math.isfinite(score):
            raise DataError(f"{where}: score {value!r} is not finite")
        if self.score_range and not self.score_range[0] <= score <= self.score_range[1]:
            raise DataError(f"{where}: score {score} outside {self.score_range}")
        return score

    def _negatives(self, values: Sequence[Any], where: str) -> list[str]:
        negatives = [self._text(v, where, "negatives") for v in values]
        if len(negatives) < self.num_negatives:
            raise DataError(f"{where}: {len(negatives)} negatives, the task needs {self.num_negatives}")
        return negatives[: self.num_negatives]

    def parse_tsv(self, cells: list[str], cols: dict[str, int], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for feature, i in cols.items():
            if feature == "negatives":
                out[feature] = self._negatives(cells[i:], where)
                continue
            if i >= len(cells):
                raise DataError(f"{where}: {len(cells)} tab-separated columns, column {i} ({feature!r}) missing")
            out[feature] = self._score(cells[i], where) if feature == "score" else self._text(cells[i], where,
                                                                                              feature)
        return out

    def parse_json(self, line: str, where: str) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        keys = self.columns or DEFAULT_JSON_KEYS[self.kind]
        out: dict[str, Any] = {}
        for feature, key in keys.items():
            if key not in record:
                raise DataError(f"{where}: key {key!r} (for {feature!r}) missing")
            value = record[key]
            if feature == "negatives":
                if not isinstance(value, list):
                    raise DataError(f"{where}: {key!r} must be a list of strings")
                out[feature] = self._negatives(value, where)
            elif feature == "score":
                out[feature] = self._score(value, where)
            else:
                out[feature] = self._text(value, where, feature)
        return out

    def rows(self, path: str, on_error: str = "raise") -> Iterator[dict[str, Any]]:
        """Yields the parsed rows of ``path``; see the module docstring for ``on_error``."""
        fmt = self.format_of(path)
        skipped, first_reason = 0, None
        cols = None
        with tf.io.gfile.GFile(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                where = f"{path}:{number}"
                try:
                    try:
                        line = raw.decode("utf-8").rstrip("\r\n")
                    except UnicodeDecodeError as e:
                        raise DataError(f"{where}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
                    if fmt == "tsv":
                        cells = line.split("\t")
                        if cols is None:
                            if self.header:
                                cols = self.resolve_tsv_columns(path, cells)
                                continue
                            cols = self.resolve_tsv_columns(path, None)
                        row = self.parse_tsv(cells, cols, where)
                    elif fmt == "jsonl":
                        if not line.strip():
                            raise DataError(f"{where}: empty line")
                        row = self.parse_json(line, where)
                    else:
                        row = {"text": self._text(line, where, "text")}
                except DataError as e:
                    if on_error != "skip" or (fmt == "tsv" and cols is None):
                        raise
                    skipped += 1
                    first_reason = first_reason or str(e)
                    continue
                yield row
        if skipped:
            log.warning("%s: skipped %d malformed row(s); first: %s", path, skipped, first_reason)
            SKIPPED_ROWS[path] = SKIPPED_ROWS.get(path, 0) + skipped


#: file -> malformed rows skipped so far in this process (with ``on_error="skip"``), also logged.
SKIPPED_ROWS: dict[str, int] = {}


class FileSource(seqio.DataSource):
    """Rows of TSV/JSONL/text files, validated by a ``RowParser``.

    Args:
      split_to_filepattern: split -> file path, glob or list of them (``tf.io.gfile`` syntax).
      parser: a ``RowParser`` (its ``kind`` sets the output features).
      on_error: ``"raise"`` (default) or ``"skip"`` (drop malformed rows, log the count per file).
    """

    def __init__(self, split_to_filepattern: Mapping[str, str | Sequence[str]], parser: RowParser,
                 on_error: str = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        super().__init__(splits=tuple(split_to_filepattern), caching_permitted=False)
        self._patterns = {k: [v] if isinstance(v, str) else list(v) for k, v in split_to_filepattern.items()}
        self.parser, self.on_error = parser, on_error

    @property
    def kind(self) -> str:
        return self.parser.kind

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def list_shards(self, split: str) -> list[str]:
        if split not in self._patterns:
            raise ValueError(f"split {split!r} not in {sorted(self._patterns)}")
        files = []
        for pattern in self._patterns[split]:
            matched = sorted(tf.io.gfile.glob(pattern))
            if not matched:
                raise FileNotFoundError(f"no file matches {pattern!r} (split {split!r})")
            files.extend(matched)
        return files

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        """Rows of the split's files; files in a seeded random order when ``shuffle``; ``shard_info`` keeps
        every ``num_shards``-th file starting at ``index``."""
        files = self.list_shards(split)
        if shuffle:
            files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
        if shard_info is not None:
            files = files[shard_info.index::shard_info.num_shards]
        parser, on_error, signature = self.parser, self.on_error, output_signature(self.kind)
        chunk = 512  # rows per Python -> TF hand-over; from_generator costs ~0.2 ms per element, so batch it

        def columns(rows):
            out = {}
            for key, spec in signature.items():
                values = [r[key] for r in rows]
                out[key] = np.array(values, np.float32 if spec.dtype == tf.float32 else object)
            return out

        def generate():
            rows = []
            for path in files:
                for row in parser.rows(path, on_error):
                    rows.append(row)
                    if len(rows) == chunk:
                        yield columns(rows)
                        rows = []
            if rows:
                yield columns(rows)

        batched = {k: tf.TensorSpec([None, *v.shape], v.dtype) for k, v in signature.items()}
        return tf.data.Dataset.from_generator(generate, output_signature=batched).unbatch()

    def __repr__(self) -> str:
        return f"FileSource({self.kind}, {self._patterns}, on_error={self.on_error!r})"


def file_source(kind: str, files: str | Sequence[str] | Mapping[str, str | Sequence[str]], *,
                on_error: str = "raise", **parser_kwargs) -> FileSource:
    """Shorthand: ``files`` is a pattern/list (used as the ``train`` split) or a split -> patterns mapping."""
    splits = files if isinstance(files, Mapping) else {"train": files}
    return FileSource(splits, RowParser(kind, **parser_kwargs), on_error=on_error)


class BeirSource(seqio.DataSource):
    """A BEIR-layout retrieval set as (query, passage) pairs, or as retrieval tuples with hard negatives.

    Files (``tf.io.gfile`` paths): ``corpus`` JSONL ``{"_id", "title", "text"}``, ``queries`` JSONL
    ``{"_id", "text"}``, ``qrels`` TSV ``query-id\\tcorpus-id\\tscore`` with a header (rows with score <= 0
    are not positives), and optionally ``hard_negatives`` JSONL ``{"query-id": ..., "negatives": [corpus ids]}``
    (then the kind is ``retrieval`` and ``num_negatives`` of them are kept). The passage text is
    ``title + " " + text`` when ``include_title`` (the BEIR convention). Corpus and queries are held in memory.
    One example per positive qrels row; qrels naming an unknown query or document are errors with file:line.
    """

    def __init__(self, splits: Mapping[str, Mapping[str, str]], *, include_title: bool = True,
                 num_negatives: int | None = None, on_error: str = "raise"):
        super().__init__(splits=tuple(splits), caching_permitted=False)
        self._files = {k: dict(v) for k, v in splits.items()}
        for split, files in self._files.items():
            missing = {"corpus", "queries", "qrels"} - set(files)
            if missing:
                raise ValueError(f"BEIR split {split!r} lacks {sorted(missing)}")
        with_negatives = {bool(f.get("hard_negatives")) for f in self._files.values()}
        if len(with_negatives) != 1:
            raise ValueError("give hard_negatives for every split or for none")
        self.kind = "retrieval" if with_negatives.pop() else "pairs"
        if self.kind == "retrieval" and not num_negatives:
            raise ValueError("hard_negatives needs num_negatives >= 1")
        self.include_title, self.num_negatives, self.on_error = include_title, num_negatives, on_error

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def list_shards(self, split: str) -> list[str]:
        return [self._files[split]["qrels"]]

    def _jsonl(self, path: str, key: str, fields: Sequence[str]) -> dict[str, Any]:
        out = {}
        with tf.io.gfile.GFile(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                where = f"{path}:{number}"
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise DataError(f"{where}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: invalid JSON ({e.msg})") from None
                for name in (key, *fields):
                    if name not in record:
                        raise DataError(f"{where}: key {name!r} missing")
                out[str(record[key])] = record
        return out

    def rows(self, split: str) -> Iterator[dict[str, Any]]:
        files = self._files[split]
        corpus = self._jsonl(files["corpus"], "_id", ["text"])
        queries = self._jsonl(files["queries"], "_id", ["text"])
        negatives = ({str(r["query-id"]): r["negatives"] for r in
                      self._jsonl(files["hard_negatives"], "query-id", ["negatives"]).values()}
                     if self.kind == "retrieval" else {})

        def passage(doc_id: str, where: str) -> str:
            if doc_id not in corpus:
                raise DataError(f"{where}: corpus id {doc_id!r} not in {files['corpus']}")
            doc = corpus[doc_id]
            text = f"{doc.get('title', '')} {doc['text']}".strip() if self.include_title else doc["text"]
            if not str(text).strip():
                raise DataError(f"{where}: document {doc_id!r} has empty text")
            return text

        skipped, first = 0, None
        with tf.io.gfile.GFile(files["qrels"], "r") as f:
            for number, line in enumerate(f, start=1):
                if number == 1:
                    continue  # header
                where = f"{files['qrels']}:{number}"
                try:
                    cells = line.rstrip("\r\n").split("\t")
                    if len(cells) < 3:
                        raise DataError(f"{where}: expected query-id, corpus-id, score; got {len(cells)} columns")
                    qid, did, score = cells[:3]
                    try:
                        if float(score) <= 0:
                            continue
                    except ValueError:
                        raise DataError(f"{where}: score {score!r} is not a number") from None
                    if qid not in queries:
                        raise DataError(f"{where}: query id {qid!r} not in {files['queries']}")
                    row = {"query": queries[qid]["text"], "passage": passage(did, where)}
                    if self.kind == "retrieval":
                        ids = [str(n) for n in negatives.get(qid, []) if str(n) != did]
                        if len(ids) < self.num_negatives:
                            raise DataError(f"{where}: query {qid!r} has {len(ids)} hard negatives in "
                                            f"{files['hard_negatives']}, the task needs {self.num_negatives}")
                        row["negatives"] = [passage(n, where) for n in ids[: self.num_negatives]]
                except DataError as e:
                    if self.on_error != "skip":
                        raise
                    skipped, first = skipped + 1, first or str(e)
                    continue
                yield row
        if skipped:
            log.warning("%s: skipped %d malformed row(s); first: %s", files["qrels"], skipped, first)
            SKIPPED_ROWS[files["qrels"]] = SKIPPED_ROWS.get(files["qrels"], 0) + skipped

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        signature = output_signature(self.kind)
        rows = list(self.rows(split))  # qrels are small next to the corpus; seqio shuffles/shards the rows
        columns = {k: np.array([r[k] for r in rows], object) for k in signature}
        if self.kind == "retrieval" and not rows:
            columns["negatives"] = np.zeros((0, self.num_negatives), object)
        return tf.data.Dataset.from_tensor_slices({k: tf.constant(v, tf.string) for k, v in columns.items()})

    def num_input_examples(self, split: str) -> int:
        return sum(1 for _ in self.rows(split))
