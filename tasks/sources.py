"""seqio data sources for local or remote files (TSV, JSONL, plain text, parquet, Arrow / ``datasets``
``save_to_disk`` directories, ArrayRecord) and prepared TFDS datasets, with row validation.

Which cells or columns feed which feature, and the formats, are ``tasks.row_parser``; files are found with
``tf.io.gfile.glob``, so local paths, globs and ``gs://`` all work; ``tasks.records.open_records`` picks the
reader from the files (``FileSource``). ``TfdsSource`` reads a TFDS dataset prepared in a data_dir, by index
when it was prepared as ArrayRecord.

Every source here is record-addressable: ``records(split)`` (``tasks.records``) gives ``len`` and the row at
any index, which the trainer's batcher (``tasks.batching``) reads in its worker processes (the one exception,
a TFDS dataset prepared as tfrecord, gives None and is read into memory once); ``get_dataset`` serves the
same rows as a tf.data pipeline for seqio's own interface (``Task.get_dataset``).

Reading and validation are ``bilingual.rows`` (lines, UTF-8, a leading BOM, the ``on_error`` policy): a row
with too few or too many columns, an empty text, a score that is not a finite number, too few negatives, bad
JSON or invalid UTF-8 raises ``bilingual.rows.DataError("<file>:<line>: <what>")`` when the files are
indexed (a parquet / Arrow row, checked when read: ``"<file> (row <r>): <what>"``; inside tf.data the error
reaches the caller wrapped in a ``tf.errors`` exception whose message holds that text;
``unwrap_data_error`` recovers it). With ``on_error="skip"`` such rows are dropped and a warning with the
count (and the first reason) is logged once per file, and counted in ``bilingual.rows.SKIPPED_ROWS``.
Nothing is dropped silently.

Sharding (``get_dataset``): host ``index`` of ``num_shards`` keeps every ``num_shards``-th row.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from bilingual.rows import DataError, TsvFile, check_on_error, read_jsonl, valid_number
from tasks import tf_setup  # noqa: F401  (TensorFlow on the CPU only)
from tasks import records
from tasks.records import ARRAY_RECORD_SUFFIX, check_record_features  # noqa: F401  (re-exported)
from tasks.row_parser import DEFAULT_COLUMNS, DEFAULT_JSON_KEYS, KINDS, RowParser  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def unwrap_data_error(err: tf.errors.OpError) -> DataError | None:
    """The ``DataError`` a source raised inside tf.data, from the ``tf.errors`` exception that carried its
    text to the reader; None when ``err`` holds none."""
    found = re.search(r"DataError: ([^\n]+)", err.message)
    if found is None:
        return None
    where = re.fullmatch(r"(.+?):(\d+): (.+)", found[1])
    return DataError(where[1], where[3], int(where[2])) if where else DataError(None, found[1])

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



def records_dataset(rows, kind: str, shuffle: bool, seed: int | None,
                    shard_info: seqio.ShardInfo | None) -> tf.data.Dataset:
    """Record-addressable ``rows`` as a tf.data pipeline of raw examples (seqio's ``get_dataset``)."""
    order = np.arange(len(rows))
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(rows))
    if shard_info is not None:
        order = order[shard_info.index::shard_info.num_shards]
    signature = output_signature(kind)
    chunk = 512  # rows per Python -> TF hand-over; from_generator costs ~0.2 ms per element, so batch it

    def columns(batch):
        return {key: np.array([r[key] for r in batch], np.float32 if spec.dtype == tf.float32 else object)
                for key, spec in signature.items()}

    def generate():
        for start in range(0, len(order), chunk):
            yield columns([rows[int(i)] for i in order[start:start + chunk]])

    batched = {k: tf.TensorSpec([None, *v.shape], v.dtype) for k, v in signature.items()}
    return tf.data.Dataset.from_generator(generate, output_signature=batched).unbatch()


class FileSource(seqio.DataSource):
    """Rows of TSV/JSONL/text files, validated by a ``RowParser``; of parquet / Arrow files (or
    ``datasets.Dataset.save_to_disk`` directories), each row checked by the same parser when read; or of
    ``.array_record`` files holding rows validated once when written (``launch.prepare_data``). Which, is
    ``tasks.records.open_records``.

    Args:
      split_to_filepattern: split -> file path, glob or list of them (``tf.io.gfile`` syntax); a
        ``save_to_disk`` directory stands for its Arrow files.
      parser: a ``RowParser`` (its ``kind`` sets the output features).
      on_error: ``"raise"`` (default) or ``"skip"`` (drop malformed rows, log the count per file).
    """

    def __init__(self, split_to_filepattern: Mapping[str, str | Sequence[str]], parser: RowParser,
                 on_error: str = "raise"):
        super().__init__(splits=tuple(split_to_filepattern), caching_permitted=False)
        self._patterns = {k: [v] if isinstance(v, str) else list(v) for k, v in split_to_filepattern.items()}
        self.parser, self.on_error = parser, check_on_error(on_error)
        self._records: dict[str, Any] = {}

    @property
    def kind(self) -> str:
        return self.parser.kind

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True  # rows are sharded by index

    def _matches(self, split: str) -> list[tuple[str, list[str]]]:
        if split not in self._patterns:
            raise ValueError(f"split {split!r} not in {sorted(self._patterns)}")
        out = []
        for pattern in self._patterns[split]:
            try:
                out.append((pattern, sorted(tf.io.gfile.glob(pattern))))
            except tf.errors.OpError as err:  # e.g. a bucket without access
                raise DataError(pattern, f"cannot list files: {err.message.splitlines()[0]}") from None
        return out

    def list_shards(self, split: str) -> list[str]:
        files = []
        for pattern, matched in self._matches(split):
            if not matched:
                raise DataError(None, f"no file matches {pattern!r} (split {split!r})")
            files.extend(matched)
        return files

    def check_files(self, key: str, task: str) -> None:
        """At registration: every split's patterns match files (or ``save_to_disk`` directories) of one kind;
        else a ``ConfigError`` naming the gin ``key`` (e.g. ``mlm_de/register_text_task.files``), the pattern,
        the task and the split. Reads no rows (only a ``save_to_disk`` directory's ``state.json``)."""
        from bilingual.config import ConfigError

        for split in self._patterns:
            where = f"(task {task!r}, split {split!r})"
            try:
                files = []
                for pattern, matched in self._matches(split):
                    if not matched:
                        raise ConfigError(f"{key}: no file matches {pattern!r} {where}")
                    files.extend(matched)
                records.check_one_kind(records.resolve_files(files))
            except (DataError, tf.errors.OpError) as err:
                raise ConfigError(f"{key}: {err} {where}") from None

    def records(self, split: str):
        """The split's rows by index (``tasks.records.open_records``): ``ArrayRecordRows`` when every file
        ends in ``.array_record``, ``ColumnarRows`` for parquet / Arrow files, else ``LineRecords`` (one
        validating pass); opened once per process."""
        if split not in self._records:
            self._records[split] = records.open_records(self.list_shards(split), self.parser, self.on_error)
        return self._records[split]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        """The split's rows as a tf.data pipeline (seqio's interface; the trainer's batcher reads
        ``records`` instead): file order, or a seeded permutation when ``shuffle``; ``shard_info`` keeps every
        ``num_shards``-th row starting at ``index``."""
        return records_dataset(self.records(split), self.kind, shuffle, seed, shard_info)

    def __repr__(self) -> str:
        return f"FileSource({self.kind}, {self._patterns}, on_error={self.on_error!r})"


def task_kind(task_type: str) -> str:
    """The source kind (``tasks.row_parser.KINDS``) whose rows a task of ``task_type`` reads."""
    return "text" if task_type == "mlm" else task_type


class UnknownTfdsName(ValueError):
    """TFDS knows no dataset, config or version of this name (registered or in the data_dir)."""


class TfdsNotPrepared(ValueError):
    """The dataset is not prepared in the data_dir (or the data_dir cannot be read)."""


def prepared_tfds_builder(tfds_name: str, data_dir: str | None):
    """``tfds.builder(tfds_name, data_dir=...)`` if TFDS knows the name (a registered builder and config, or
    a dataset in ``data_dir``) and it is prepared there; else ``UnknownTfdsName`` or ``TfdsNotPrepared``
    saying which (never downloads)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except (ValueError, AssertionError, ImportError) as err:  # unknown dataset, config or version
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnknownTfdsName(f"unknown TFDS dataset {tfds_name!r} ({first[:300]})") from None
    try:
        prepared = builder.is_prepared()
    except (OSError, tf.errors.OpError) as err:  # e.g. a bucket without access
        raise TfdsNotPrepared(f"cannot read TFDS data_dir {data_dir!r} ({str(err).strip().splitlines()[0]})") from None
    if not prepared:
        raise TfdsNotPrepared(f"TFDS dataset {tfds_name!r} is not prepared in data_dir {data_dir!r} (no "
                         f"{builder.data_dir}/dataset_info.json); prepare it there first, e.g. `tfds build "
                         f"{tfds_name} --data_dir=... --file_format=array_record` (nothing is downloaded here)")
    return builder


class TfdsSource(seqio.TfdsDataSource):
    """A TFDS dataset already prepared in ``tfds_data_dir`` (``read_only``: nothing is downloaded or built),
    record-addressable when it was prepared as ArrayRecord.

    ``records(split)`` is ``tasks.records.TfdsRecords`` (``tfds.data_source``: random access, numpy decoding;
    ``feature_map`` renaming and the STS score cast applied in Python, giving the rows the task's tf.data
    preprocessors give up to tokenisation). A dataset prepared as tfrecord has no random access: ``records``
    logs a warning and returns None, and the batcher reads the split into memory through tf.data
    (``tasks.batching.records_of``); re-prepare it with ``--file_format=array_record`` for pod-scale corpora.
    ``get_dataset`` is seqio's (TFDS ``as_dataset``) for tfrecord, and for ArrayRecord (which ``as_dataset``
    does not read) the raw TFDS features from the data source, shuffled and sharded by index.
    """

    def __init__(self, tfds_name: str, tfds_data_dir: str | None = None, splits=None, *,
                 feature_map: Mapping[str, str], kind: str):
        super().__init__(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, splits=splits, read_only=True)
        self.tfds_name, self.tfds_data_dir = tfds_name, tfds_data_dir
        self.feature_map, self.kind = dict(feature_map), kind
        self._split_map = dict(splits) if isinstance(splits, Mapping) else None
        self._records: dict[str, Any] = {}

    def tfds_split(self, split: str) -> str:
        return self._split_map[split] if self._split_map else split

    @property
    def file_format(self) -> str:
        fmt = self.tfds_dataset.builder.info.file_format
        return str(getattr(fmt, "value", fmt))

    def records(self, split: str) -> records.TfdsRecords | None:
        """The split's rows by index when prepared as ArrayRecord; None (after a warning) for tfrecord."""
        if split not in self._records:
            if self.file_format == "array_record":
                self._records[split] = records.TfdsRecords(self.tfds_name, self.tfds_data_dir,
                                                           self.tfds_split(split), self.feature_map, self.kind)
            else:
                log.warning("TFDS dataset %r (data_dir %r) is prepared as %s, which has no random access: split "
                            "%r is read into memory through tf.data; for pod-scale corpora prepare it again with "
                            "--file_format=array_record", self.tfds_name, self.tfds_data_dir, self.file_format,
                            split)
                self._records[split] = None
        return self._records[split]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        if self.file_format != "array_record":
            return super().get_dataset(split, shuffle, seed, shard_info, sequence_length=sequence_length,
                                       use_cached=use_cached, num_epochs=num_epochs)
        builder = self.tfds_dataset.builder
        source = builder.as_data_source(split=self.tfds_split(split))
        order = np.random.default_rng(seed).permutation(len(source)) if shuffle else np.arange(len(source))
        if shard_info is not None:
            order = order[shard_info.index::shard_info.num_shards]
        return tf.data.Dataset.from_generator(lambda: (source[int(i)] for i in order),
                                              output_signature=builder.info.features.get_tensor_spec())

    def __repr__(self) -> str:
        return f"TfdsSource({self.tfds_name!r}, data_dir={self.tfds_data_dir!r}, {self.feature_map})"


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
        self._records: dict[str, records.ListRecords] = {}

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True  # rows are sharded by index

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

    def records(self, split: str) -> records.ListRecords:
        """The split's (query, passage[, negatives]) rows in memory, in qrels order."""
        if split not in self._records:
            self._records[split] = records.ListRecords(list(self.rows(split)))
        return self._records[split]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        return records_dataset(self.records(split), self.kind, shuffle, seed, shard_info)

    def num_input_examples(self, split: str) -> int:
        return len(self.records(split))
