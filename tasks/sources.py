"""seqio data sources for local or remote files (TSV, JSONL, plain text) with row validation.

The formats of ``shared/data/README.md`` are the contract:

* plain text: one document per line (``kind="text"`` -> feature ``text``);
* pairs: TSV ``text1\\ttext2`` with a header, or JSONL (``kind="pairs"`` -> ``query``, ``passage``);
* retrieval tuples: TSV ``query\\tpositive\\tnegative_1 ... negative_m`` or JSONL with a list of negatives
  (``kind="retrieval"`` -> ``query``, ``passage``, ``negatives`` [m]);
* STS: TSV ``sentence1\\tsentence2\\tscore`` (``kind="sts"`` -> ``a``, ``b``, ``score`` float32).

Which column/key feeds which feature is configurable (``columns``); TSV columns are named by header or by
0-based index. A TSV row has exactly the header's number of columns, or in a headerless file exactly the
columns up to the last one configured; the one exception is headerless retrieval, where every column from
the first negative on is a negative (so the negatives column must come last). A row with more columns (a
tab inside a text) is malformed, not cut short. Files are found with ``tf.io.gfile.glob``, so local paths,
globs and ``gs://`` all work.

Reading and validation are ``bilingual.rows`` (lines, UTF-8, a leading BOM, TSV quoting, the ``on_error``
policy): a row with too few or too many columns, an empty text, a score that is not a finite number, too few
negatives, bad JSON or invalid UTF-8 raises ``bilingual.rows.DataError("<file>:<line>: <what>")`` (the error
reaches the caller wrapped in a ``tf.errors`` exception whose message holds that text;
``unwrap_data_error`` recovers it). With
``on_error="skip"`` such rows are dropped and a warning with the count (and the first reason) is logged once
per file, and counted in ``bilingual.rows.SKIPPED_ROWS``. Nothing is dropped silently.

Sharding: ``list_shards`` returns the files. When a split has at least as many files as hosts, seqio passes the
shard to ``get_dataset`` and each host reads only its files; otherwise seqio reads the (identically ordered)
rows and keeps every ``num_shards``-th one (``Task.get_dataset`` decides, see seqio).
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from bilingual.rows import DataError, TsvFile, check_on_error, read_jsonl, read_lines, valid_number, valid_text
from tasks import tf_setup  # noqa: F401  (TensorFlow on the CPU only)

KINDS = ("text", "pairs", "retrieval", "sts")


def unwrap_data_error(err: tf.errors.OpError) -> DataError | None:
    """The ``DataError`` a source raised inside tf.data, from the ``tf.errors`` exception that carried its
    text to the reader; None when ``err`` holds none."""
    found = re.search(r"DataError: ([^\n]+)", err.message)
    if found is None:
        return None
    where = re.fullmatch(r"(.+?):(\d+): (.+)", found[1])
    return DataError(where[1], where[3], int(where[2])) if where else DataError(None, found[1])

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
        retrieval TSV, ``negatives`` names the first negative column, after every other; every column
        after it is one too (with a header: up to the header's last; without one: open-ended).
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
            raise DataError(path, f"a {self.kind} source needs .tsv or .jsonl files (or set file_format)")
        return fmt

    def resolve_tsv_columns(self, tsv: TsvFile) -> dict[str, int]:
        cols = self.columns or DEFAULT_COLUMNS[self.kind]
        out = {feature: tsv.column(col, feature) for feature, col in cols.items()}
        missing = set(DEFAULT_COLUMNS[self.kind]) - set(out)
        if missing:
            raise ValueError(f"columns lacks {sorted(missing)} for a {self.kind} source")
        if "negatives" in out and max(out.values()) > out["negatives"]:
            raise ValueError(f"the negatives column must come after every other column, got {cols}")
        return out

    def _value(self, feature: str, value: Any, path: str, line: int) -> Any:
        if feature == "score":
            return valid_number(value, path, line, "score", self.score_range)
        return valid_text(value, path, line, feature)

    def _negatives(self, values: Sequence[Any], path: str, line: int) -> list[str]:
        negatives = [valid_text(v, path, line, "negatives") for v in values]
        if len(negatives) < self.num_negatives:
            raise DataError(path, f"{len(negatives)} negatives, the task needs {self.num_negatives}", line)
        return negatives[: self.num_negatives]

    def parse_tsv(self, cells: list[str], cols: dict[str, int], path: str, line: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for feature, i in cols.items():
            if feature == "negatives":
                out[feature] = self._negatives(cells[i:], path, line)
            else:
                out[feature] = self._value(feature, cells[i], path, line)
        return out

    def parse_json(self, record: dict[str, Any], keys: Mapping[str, str], path: str, line: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for feature, key in keys.items():
            value = record[key]
            if feature == "negatives":
                if not isinstance(value, list):
                    raise DataError(path, f"{key!r} must be a list of strings", line)
                out[feature] = self._negatives(value, path, line)
            else:
                out[feature] = self._value(feature, value, path, line)
        return out

    def rows(self, path: str, on_error: str = "raise") -> Iterator[dict[str, Any]]:
        """Yields the parsed rows of ``path``; see the module docstring for ``on_error``."""
        fmt = self.format_of(path)
        if fmt == "tsv":
            with TsvFile(path, header=self.header) as tsv:
                if self.header and tsv.header is None:
                    return  # an empty file
                cols = self.resolve_tsv_columns(tsv)
                width = None if self.header else max(cols.values()) + 1  # None: the header's
                yield from tsv.rows(lambda line, cells: self.parse_tsv(cells, cols, path, line), on_error=on_error,
                                    width=width, open_ended=not self.header and "negatives" in cols)
        elif fmt == "jsonl":
            keys = self.columns or DEFAULT_JSON_KEYS[self.kind]
            yield from read_jsonl(path, lambda line, record: self.parse_json(record, keys, path, line),
                                       required=list(keys.values()), on_error=on_error)
        else:
            yield from read_lines(path, lambda line, text: {"text": valid_text(text, path, line, "text")},
                                       on_error=on_error)


class FileSource(seqio.DataSource):
    """Rows of TSV/JSONL/text files, validated by a ``RowParser``.

    Args:
      split_to_filepattern: split -> file path, glob or list of them (``tf.io.gfile`` syntax).
      parser: a ``RowParser`` (its ``kind`` sets the output features).
      on_error: ``"raise"`` (default) or ``"skip"`` (drop malformed rows, log the count per file).
    """

    def __init__(self, split_to_filepattern: Mapping[str, str | Sequence[str]], parser: RowParser,
                 on_error: str = "raise"):
        super().__init__(splits=tuple(split_to_filepattern), caching_permitted=False)
        self._patterns = {k: [v] if isinstance(v, str) else list(v) for k, v in split_to_filepattern.items()}
        self.parser, self.on_error = parser, check_on_error(on_error)

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
        self.include_title, self.num_negatives = include_title, num_negatives
        self.on_error = check_on_error(on_error)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def list_shards(self, split: str) -> list[str]:
        return [self._files[split]["qrels"]]

    def _jsonl(self, path: str, key: str, fields: Sequence[str]) -> dict[str, Any]:
        return {str(record[key]): record for _, record in read_jsonl(path, required=(key, *fields))}

    def rows(self, split: str) -> Iterator[dict[str, Any]]:
        files = self._files[split]
        qrels = files["qrels"]
        corpus = self._jsonl(files["corpus"], "_id", ["text"])
        queries = self._jsonl(files["queries"], "_id", ["text"])
        negatives = ({str(r["query-id"]): r["negatives"] for r in
                      self._jsonl(files["hard_negatives"], "query-id", ["negatives"]).values()}
                     if self.kind == "retrieval" else {})

        def passage(doc_id: str, line: int) -> str:
            if doc_id not in corpus:
                raise DataError(qrels, f"corpus id {doc_id!r} not in {files['corpus']}", line)
            doc = corpus[doc_id]
            text = f"{doc.get('title', '')} {doc['text']}".strip() if self.include_title else doc["text"]
            if not str(text).strip():
                raise DataError(qrels, f"document {doc_id!r} has empty text", line)
            return text

        def parse(line: int, cells: list[str]) -> dict[str, Any] | None:
            if len(cells) < 3:
                raise DataError(qrels, f"expected query-id, corpus-id, score; got {len(cells)} columns", line)
            qid, did, score = cells[:3]
            if valid_number(score, qrels, line) <= 0:
                return None  # not a positive
            if qid not in queries:
                raise DataError(qrels, f"query id {qid!r} not in {files['queries']}", line)
            row = {"query": queries[qid]["text"], "passage": passage(did, line)}
            if self.kind == "retrieval":
                ids = [str(n) for n in negatives.get(qid, []) if str(n) != did]
                if len(ids) < self.num_negatives:
                    raise DataError(qrels, f"query {qid!r} has {len(ids)} hard negatives in "
                                           f"{files['hard_negatives']}, the task needs {self.num_negatives}", line)
                row["negatives"] = [passage(n, line) for n in ids[: self.num_negatives]]
            return row

        with TsvFile(qrels) as tsv:  # the header names no columns we need
            yield from tsv.rows(parse, on_error=self.on_error)

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
