"""Record-addressable rows: ``len(records)`` and ``records[i]`` -> one example's feature dict.

No TensorFlow is imported here, except ``tf.io.gfile`` for remote (``gs://``) paths.

This is the storage half of constant-time resume (``tasks.batch_jobs`` is the index half): the batcher reads
the record at any index without reading the ones before it. Five kinds, all picklable (the input workers
receive them) and all ``grain`` random-access data sources:

* ``LineRecords``: TSV / JSONL / plain-text files (local or ``gs://``). Opening them makes one validating
  pass (``RowParser.index``: the ``on_error`` policy of ``bilingual.rows`` applies there, once) that keeps
  the file, line number and byte offset of every valid row, 20 bytes a row; reading a row seeks to it and
  parses that line again with the same checks. The pass costs what reading the files once costs, at every
  start, wherever the run resumes; for very large corpora convert them once to ArrayRecord.
* ``ArrayRecordRows``: ArrayRecord files whose records are the JSON feature dicts (``write_array_records``
  writes them from any rows, e.g. a task's validated rows: ``python -m launch.prepare_data``). Opening reads
  only the file footers.
* ``ColumnarRows``: parquet files and Arrow IPC stream files (``.arrow``, what ``datasets.Dataset.save_to_disk``
  writes; such a directory, holding ``state.json``, stands for its files), local or ``gs://``. Opening reads
  the parquet footers (row groups and their row counts; no data) and memory-maps local Arrow files
  (zero-copy); a remote Arrow stream has no index, so opening reads it once to note where each record batch
  starts. Columns are named like JSONL keys (the parser's ``columns``, default ``DEFAULT_JSON_KEYS``); a
  missing or mistyped column is a ``DataError`` naming the file and its columns, at opening. Rows are
  checked by the task's ``RowParser`` (``RowParser.record``, the check of a JSONL object) when read, so a
  bad cell raises ``DataError("<file> (row <r>): ...")`` at that read; with ``on_error="skip"`` (or
  ``validate=True``) opening makes one validating pass instead, and skipping keeps the index of the valid
  rows (8 bytes a row). What a random read costs: parquet stores rows in compressed row groups, so reading
  row ``i`` decodes its whole row group (the needed columns only). Each thread keeps its last
  ``CACHED_BLOCKS`` decoded groups, so reads in file order decode each group once, but reads in shuffled
  order (the batcher's) decode one group per row: measured on a 10,000-row file, about 1.5 ms a read with
  row groups of 1,000 rows of 300 characters (20 ms with rows of 3,000 characters; 0.5 / 2 ms with groups of
  100), against 0.1 ms for an ArrayRecord record. So keep row groups small, and for MLM-scale corpora read in
  shuffled order convert the files once with ``python -m launch.prepare_data`` (ArrayRecord: one record
  read per row, constant time). A local Arrow file reads any row without decoding (about 35 us); a remote
  one reads the record batch holding the row (cached like a row group).
* ``TfdsRecords``: a TFDS split prepared as ArrayRecord (``tfds.data_source``: a record read and decoded
  with numpy per row), renamed to the task's features (``tasks.sources.TfdsSource``).
* ``ListRecords``: rows held in memory (BEIR sets, whose queries and corpus are joined in memory anyway, and
  sources without random access that the batcher reads once, see ``tasks.batching.records_of``).

``open_records(files, parser)`` picks the kind from the files: all ``.array_record`` -> ``ArrayRecordRows``,
all ``.parquet`` / ``.arrow`` (or ``save_to_disk`` directories) -> ``ColumnarRows``, else ``LineRecords``;
mixing kinds is a ``DataError`` naming the files.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import threading
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from bilingual.rows import SKIPPED_ROWS, DataError, check_on_error, decode_line, open_binary
from tasks.row_parser import DEFAULT_JSON_KEYS, LineReader, RowParser

log = logging.getLogger(__name__)


class ListRecords:
    """Rows in memory."""

    def __init__(self, rows: Sequence[Mapping[str, Any]]):
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Mapping[str, Any]:
        return self.rows[index]

    def __repr__(self) -> str:
        return f"ListRecords({len(self.rows)} rows)"


class LineRecords:
    """The valid rows of text files, each read by seeking to its line (module docstring)."""

    def __init__(self, readers: Sequence[LineReader], files: np.ndarray, lines: np.ndarray, offsets: np.ndarray):
        self.readers, self.files, self.lines, self.offsets = list(readers), files, lines, offsets
        self._local = threading.local()  # open files per thread: a seek and a read must not interleave

    @classmethod
    def scan(cls, paths: Sequence[str], parser: RowParser, on_error: str = "raise") -> "LineRecords":
        """Indexes the valid rows of ``paths`` in order (one validating pass over each file)."""
        readers, files, lines, offsets = [], [], [], []
        for path in paths:
            reader, found, where = parser.index(path, on_error)
            if reader is None:
                continue
            files.append(np.full(len(found), len(readers), np.int32))
            lines.append(np.asarray(found, np.int64))
            offsets.append(np.asarray(where, np.int64))
            readers.append(reader)
        cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
        return cls(readers, cat(files, np.int32), cat(lines, np.int64), cat(offsets, np.int64))

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> dict[str, Any]:
        f = int(self.files[index])
        reader = self.readers[f]
        handles = self._local.__dict__.setdefault("handles", {})
        handle = handles.get(f)
        if handle is None:
            handle = handles[f] = open_binary(reader.path)
        handle.seek(int(self.offsets[index]))
        line = int(self.lines[index])
        return reader(line, decode_line(handle.readline(), reader.path, line))

    def file_counts(self) -> dict[str, int]:
        """File -> its number of (valid) rows."""
        counts = np.bincount(self.files, minlength=len(self.readers))
        return {reader.path: int(c) for reader, c in zip(self.readers, counts)}

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_local"}  # handles stay in their process

    def __setstate__(self, state):
        self.__dict__.update(state, _local=threading.local())

    def __repr__(self) -> str:
        return f"LineRecords({len(self)} rows in {len(self.readers)} files)"


class ArrayRecordRows:
    """Rows stored as JSON records in ArrayRecord files (``write_array_records``), in file order. With a
    ``parser``, each row read is checked like a text row of that task (negatives count, score range, empty
    texts): the files may have been written for another task."""

    def __init__(self, paths: Sequence[str], parser: RowParser | None = None):
        from array_record.python import array_record_data_source

        self.paths, self.parser = [str(p) for p in paths], parser
        self._source = array_record_data_source.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = json.loads(self._source[index])
        if self.parser is None:
            return row
        where = f"{self.paths[0]}{' ...' if len(self.paths) > 1 else ''} (record {index})"
        return {feature: self.parser.negatives(value, where, None) if feature == "negatives"
                else self.parser.value(feature, value, where, None) for feature, value in row.items()}

    def file_counts(self) -> dict[str, int]:
        """File -> its number of records."""
        return {str(r.filename): int(r.num_records) for r in self._source._read_instructions}

    def __getstate__(self):
        return {"paths": self.paths, "parser": self.parser}

    def __setstate__(self, state):
        self.__init__(state["paths"], state["parser"])

    def __repr__(self) -> str:
        return f"ArrayRecordRows({len(self)} rows in {len(self.paths)} files)"


def write_array_records(rows: Iterable[Mapping[str, Any]], path: str, *, options: str = "group_size:1") -> int:
    """Writes ``rows`` (feature dicts of strings, lists of strings and numbers) as JSON records to one
    ArrayRecord file; returns the count. ``group_size:1`` keeps a random read to one record's chunk."""
    from array_record.python import array_record_module

    writer = array_record_module.ArrayRecordWriter(str(path), options)
    count = 0
    try:
        for row in rows:
            writer.write(json.dumps(row, ensure_ascii=False).encode("utf-8"))
            count += 1
    finally:
        writer.close()
    return count


# ------------------------------------------------------------------------------------------- columnar files

PARQUET_SUFFIX, ARROW_SUFFIX, ARRAY_RECORD_SUFFIX = ".parquet", ".arrow", ".array_record"
HF_STATE, HF_DATASET_DICT = "state.json", "dataset_dict.json"  # what datasets' save_to_disk writes
CACHED_BLOCKS = 2  # decoded row groups (record batches) kept per thread


def _remote(path: str) -> bool:
    return "://" in path


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}" if _remote(directory) else os.path.join(directory, name)


def _exists(path: str) -> bool:
    if _remote(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def _isdir(path: str) -> bool:
    if _remote(path):
        import tensorflow as tf

        return tf.io.gfile.isdir(path)
    return os.path.isdir(path)


def _read_json(path: str) -> Any:
    with open_binary(path) as f:
        try:
            return json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(path, f"invalid JSON ({e})") from None


def saved_dataset_files(directory: str) -> list[str]:
    """The Arrow files of a ``datasets.Dataset.save_to_disk`` directory (``state.json``'s ``_data_files``, in
    order). A ``DatasetDict`` directory (``dataset_dict.json``) or any other directory is a ``DataError``
    saying what to give instead."""
    directory = str(directory).rstrip("/")
    state = _join(directory, HF_STATE)
    if _exists(state):
        entries = _read_json(state).get("_data_files")
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "filename" in e for e in entries):
            raise DataError(state, "no '_data_files' list of {'filename': ...} (not a datasets save_to_disk "
                                   "directory?)")
        return [_join(directory, e["filename"]) for e in entries]
    dataset_dict = _join(directory, HF_DATASET_DICT)
    if _exists(dataset_dict):
        splits = _read_json(dataset_dict).get("splits") or ["train"]
        raise DataError(directory, f"a datasets.DatasetDict directory ({HF_DATASET_DICT}, splits {splits}); name "
                                   f"one split's directory, e.g. '{_join(directory, splits[0])}'")
    raise DataError(directory, f"a directory without {HF_STATE} (not a datasets save_to_disk directory); name its "
                               f"files, e.g. '{_join(directory, '*.parquet')}'")


def resolve_files(paths: Sequence[str]) -> list[str]:
    """``paths`` with each ``save_to_disk`` directory replaced by its Arrow files."""
    out = []
    for path in map(str, paths):
        out.extend(saved_dataset_files(path) if _isdir(path) else [path])
    return out


def storage_kind(path: str) -> str:
    """``"array_record"``, ``"columnar"`` (parquet, Arrow) or ``"text"`` (TSV, JSONL, plain text)."""
    name = str(path).lower()
    if name.endswith(ARRAY_RECORD_SUFFIX):
        return "array_record"
    if name.endswith((PARQUET_SUFFIX, ARROW_SUFFIX)):
        return "columnar"
    return "text"


def check_one_kind(files: Sequence[str]) -> str:
    """The storage kind shared by ``files``; a ``DataError`` naming the files of each kind if they mix."""
    kinds: dict[str, list[str]] = {}
    for f in files:
        kinds.setdefault(storage_kind(f), []).append(f)
    if len(kinds) > 1:
        listed = "; ".join(f"{kind}: {names}" for kind, names in kinds.items())
        raise DataError(None, f"files of one split must be of one kind (ArrayRecord, parquet/Arrow, or text), "
                              f"got {listed}")
    return next(iter(kinds), "text")


def check_record_features(rows, kind: str, files: Sequence[str]) -> None:
    """The first record of ArrayRecord ``files`` holds the features of a ``kind`` source."""
    expected = set(DEFAULT_JSON_KEYS[kind])
    if len(rows) and set(rows[0]) != expected:
        raise DataError(files[0], f"records hold {sorted(rows[0])}, a {kind} source needs {sorted(expected)}")


def open_records(paths: Sequence[str], parser: RowParser, on_error: str = "raise", *, validate: bool = False):
    """The rows of ``paths`` (files, or ``save_to_disk`` directories), by the kind of the files (module
    docstring). ``validate``: check every row now (text files always are; ``launch.prepare_data`` sets it so
    that nothing is written before every row is known good)."""
    files = resolve_files(paths)
    kind = check_one_kind(files)
    if kind == "array_record":
        rows = ArrayRecordRows(files, parser)
        check_record_features(rows, parser.kind, files)
        if validate:
            for i in range(len(rows)):
                rows[i]
        return rows
    if kind == "columnar":
        return ColumnarRows.open(files, parser, on_error, validate=validate)
    return LineRecords.scan(files, parser, on_error)


def _is_string(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _is_string(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _check_columns(path: str, schema, columns: Mapping[str, Any]) -> None:
    """Every column of ``columns`` (feature -> name) is in ``schema``, holding values its feature can take."""
    import pyarrow as pa

    names = list(schema.names)
    missing = {feature: col for feature, col in columns.items() if col not in names}
    if missing:
        wanted = ", ".join(f"{col!r} (for {feature!r})" for feature, col in missing.items())
        raise DataError(path, f"no column {wanted}; it has columns {names} (set columns = {{feature: column}})")
    for feature, col in columns.items():
        t = schema.field(col).type
        if feature == "negatives":
            ok = (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
                and _is_string(t.value_type)
            what = "a list of strings"
        elif feature == "score":
            ok = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or _is_string(t)
            what = "numbers"
        else:
            ok, what = _is_string(t), "strings"
        if not ok:
            raise DataError(path, f"column {col!r} (for {feature!r}) holds {t}, expected {what}")


class _File:
    """What ``ColumnarRows`` knows of one file after opening it (picklable): its format, rows per block (row
    group or record batch) and, for a remote Arrow stream, each record batch's byte range and the schema."""

    def __init__(self, path: str, fmt: str, block_rows: Sequence[int], offsets=None, schema=None):
        self.path, self.format, self.block_rows = path, fmt, [int(n) for n in block_rows]
        self.offsets, self.schema = offsets, schema


class _RemoteFile(io.RawIOBase):
    """A ``tf.io.gfile.GFile`` (``bilingual.rows.open_binary`` of a URL) as the file object pyarrow reads
    (``pa.PythonFile`` asks for ``closed``, ``readable``, ``seekable``, which GFile lacks)."""

    def __init__(self, path: str):
        super().__init__()
        self._file = open_binary(path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size if size is not None and size >= 0 else -1)

    def seek(self, offset: int, whence: int = 0) -> int:
        self._file.seek(offset, whence)
        return self._file.tell()

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def _arrow_input(path: str):
    """``path`` as a pyarrow input file: a memory map when local, else read through ``tf.io.gfile``."""
    import pyarrow as pa

    return pa.PythonFile(_RemoteFile(path), mode="r") if _remote(path) else pa.memory_map(path)


def _map_arrow(path: str):
    """A local Arrow IPC file, memory-mapped: the table (zero-copy)."""
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(pa.memory_map(path)).read_all()
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except pa.ArrowInvalid as stream_error:
        try:  # the IPC file format (Feather v2) also maps
            return pa.ipc.open_file(pa.memory_map(path)).read_all()
        except pa.ArrowInvalid:
            raise DataError(path, f"not an Arrow IPC stream or file ({stream_error})") from None


def _scan_remote_arrow(path: str) -> _File:
    """The record batches of a remote Arrow IPC stream: one pass noting where each starts (a stream has no
    index)."""
    import pyarrow as pa

    schema, offsets, rows = None, [], []
    with _RemoteFile(path) as raw:
        reader = pa.ipc.MessageReader.open_stream(pa.PythonFile(raw, mode="r"))
        while True:
            start = raw.tell()
            try:
                message = reader.read_next_message()
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise DataError(path, f"not an Arrow IPC stream ({e})") from None
            if message.type == "schema":
                schema = pa.ipc.read_schema(message)
            elif message.type == "record batch" and schema is not None:
                offsets.append((start, raw.tell()))
                rows.append(pa.ipc.read_record_batch(message, schema).num_rows)
            else:
                raise DataError(path, f"holds a {message.type!r} message (dictionary-encoded columns?), which is "
                                      "not read remotely; copy the file to a local disk or convert it "
                                      "(python -m launch.prepare_data)")
    if schema is None:
        raise DataError(path, "an empty Arrow stream (no schema)")
    return _File(path, "arrow", rows, offsets, schema)


def _parquet_file(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(_arrow_input(path))
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except pa.ArrowInvalid as e:
        raise DataError(path, f"not a parquet file ({e})") from None


class ColumnarRows:
    """Rows of parquet and Arrow files, each checked by the task's ``RowParser`` when read (module docstring).

    ``columns`` (the parser's ``columns``, default ``DEFAULT_JSON_KEYS``) name the column of each feature;
    only those are decoded. Opening checks that every file has them, holding strings (a list of strings for
    ``negatives``, numbers for ``score``): a ``DataError`` naming the file and the columns it has. Row numbers
    in errors are 0-based within the file.
    """

    def __init__(self, files: Sequence[_File], parser: RowParser, valid: Optional[np.ndarray] = None):
        self.files, self.parser, self.valid = list(files), parser, valid
        self.columns = parser.record_keys()
        sizes = [n for f in self.files for n in f.block_rows]
        self.block_start = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.block_file = np.asarray([k for k, f in enumerate(self.files) for _ in f.block_rows], np.int32)
        self.block_index = np.asarray([b for f in self.files for b in range(len(f.block_rows))], np.int32)
        self.file_start = np.concatenate([[0], np.cumsum([sum(f.block_rows) for f in self.files])]).astype(np.int64)
        self._local = threading.local()  # per thread: open parquet files, decoded blocks
        self._mapped: dict[int, Any] = {}  # per process: memory-mapped local Arrow tables
        self._lock = threading.Lock()

    @classmethod
    def open(cls, paths: Sequence[str], parser: RowParser, on_error: str = "raise", *,
             validate: bool = False) -> "ColumnarRows":
        """Reads the files' row counts and schemas; with ``on_error="skip"`` or ``validate``, also checks every
        row once (skip: keeps the valid ones, logging the count per file)."""
        check_on_error(on_error)
        columns = parser.record_keys()
        bad = {feature: col for feature, col in columns.items() if not isinstance(col, str)}
        if bad:
            raise DataError(str(paths[0]) if paths else None,
                            f"parquet and Arrow columns are named, got {bad} (columns = {{feature: name}})")
        files = []
        for path in map(str, paths):
            if path.lower().endswith(PARQUET_SUFFIX):
                meta = _parquet_file(path)
                info = _File(path, "parquet", [meta.metadata.row_group(g).num_rows
                                               for g in range(meta.metadata.num_row_groups)])
                schema = meta.schema_arrow
            elif _remote(path):
                info = _scan_remote_arrow(path)
                schema = info.schema
            else:
                table = _map_arrow(path)
                info = _File(path, "arrow", [b.num_rows for b in table.to_batches()])
                schema = table.schema
            _check_columns(path, schema, columns)
            files.append(info)
        rows = cls(files, parser)
        if on_error == "skip" or validate:
            rows.valid = rows._validate(on_error)
        return rows

    def _validate(self, on_error: str) -> Optional[np.ndarray]:
        """One pass checking every row; the valid rows' indices when some were skipped, else None."""
        bad: list[int] = []  # global rows dropped (``on_error="skip"``)
        for f, info in enumerate(self.files):
            skipped, first = 0, None
            start = int(self.file_start[f])
            for b in np.flatnonzero(self.block_file == f):
                block = {col: arr.to_pylist() for col, arr in self._load(int(b)).items()}
                base = int(self.block_start[b])
                for j in range(int(self.block_start[b + 1] - base)):
                    try:
                        self.parser.record({col: block[col][j] for col in block}, self.columns,
                                           f"{info.path} (row {base + j - start})", None)
                    except DataError as e:
                        if on_error == "raise":
                            raise
                        skipped, first = skipped + 1, first or str(e)
                        bad.append(base + j)
            if skipped:
                log.warning("%s: skipped %d malformed row(s); first: %s", info.path, skipped, first)
                SKIPPED_ROWS[info.path] = SKIPPED_ROWS.get(info.path, 0) + skipped
        if not bad:
            return None
        keep = np.ones(int(self.file_start[-1]), bool)
        keep[bad] = False
        return np.flatnonzero(keep).astype(np.int64)

    def __len__(self) -> int:
        return len(self.valid) if self.valid is not None else int(self.file_start[-1])

    def _load(self, b: int) -> dict[str, Any]:
        """Column -> pyarrow array of block ``b`` (the needed columns only)."""
        info = self.files[int(self.block_file[b])]
        k, f = int(self.block_index[b]), int(self.block_file[b])
        names = list(dict.fromkeys(self.columns.values()))
        if info.format == "parquet":
            handles = self._local.__dict__.setdefault("handles", {})
            if f not in handles:
                handles[f] = _parquet_file(info.path)
            table = handles[f].read_row_group(k, columns=names)
            return {col: table.column(col).combine_chunks() for col in names}
        if info.offsets is not None:  # a remote Arrow stream: read the batch's message
            import pyarrow as pa

            handles = self._local.__dict__.setdefault("handles", {})
            if f not in handles:
                handles[f] = open_binary(info.path)
            handle, (start, end) = handles[f], info.offsets[k]
            handle.seek(start)
            batch = pa.ipc.read_record_batch(pa.ipc.read_message(pa.py_buffer(handle.read(end - start))),
                                             info.schema)
            return {col: batch.column(col) for col in names}
        if f not in self._mapped:
            with self._lock:
                if f not in self._mapped:
                    self._mapped[f] = _map_arrow(info.path).to_batches()
        batch = self._mapped[f][k]
        return {col: batch.column(col) for col in names}

    def _block(self, b: int) -> dict[str, Any]:
        cache = self._local.__dict__.setdefault("blocks", collections.OrderedDict())
        if b in cache:
            cache.move_to_end(b)
            return cache[b]
        block = cache[b] = self._load(b)
        if len(cache) > CACHED_BLOCKS:
            cache.popitem(last=False)
        return block

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        row = int(self.valid[index]) if self.valid is not None else index
        b = int(np.searchsorted(self.block_start, row, side="right")) - 1
        block, j = self._block(b), row - int(self.block_start[b])
        f = int(self.block_file[b])
        where = f"{self.files[f].path} (row {row - int(self.file_start[f])})"
        return self.parser.record({col: arr[j].as_py() for col, arr in block.items()}, self.columns, where, None)

    def file_counts(self) -> dict[str, int]:
        """File -> its number of (valid) rows."""
        if self.valid is None:
            counts = np.diff(self.file_start)
        else:
            counts = np.bincount(np.searchsorted(self.file_start, self.valid, side="right") - 1,
                                 minlength=len(self.files))
        return {info.path: int(c) for info, c in zip(self.files, counts)}

    def __getstate__(self):
        return {"files": self.files, "parser": self.parser, "valid": self.valid}  # handles stay in their process

    def __setstate__(self, state):
        self.__init__(state["files"], state["parser"], state["valid"])

    def __repr__(self) -> str:
        return f"ColumnarRows({len(self)} rows in {len(self.files)} files)"


# ------------------------------------------------------------------------------------------------ TFDS


def _tfds_value(value: Any, score: bool, where: str) -> Any:
    """A TFDS feature value decoded with numpy, as the tf.data path gives it (``tasks.batching._python_row``
    after ``tasks.preprocessors.cast_score``): text as str, arrays of text as lists, numpy scalars as Python
    numbers, an STS score through float32."""
    if score:
        return float(np.float32(value))
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(where, f"invalid UTF-8 ({e.reason} at byte {e.start})") from None
    if isinstance(value, (list, tuple)) or isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return [_tfds_value(v, False, where) for v in value]  # a sequence of text
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


class TfdsRecords:
    """The rows of a TFDS split prepared as ArrayRecord, read by index (``tfds.data_source``: numpy decoding,
    no TensorFlow): ``feature_map`` (TFDS feature -> ours) renames them and drops the other features, and
    ``score`` is cast through float32, so a row equals what the task's tf.data preprocessors give up to
    tokenisation. Picklable (each process opens the data source again)."""

    def __init__(self, tfds_name: str, data_dir: Optional[str], split: str, feature_map: Mapping[str, str],
                 kind: str):
        self.tfds_name, self.data_dir, self.split = tfds_name, data_dir, split
        self.feature_map, self.kind = dict(feature_map), kind
        import tensorflow_datasets as tfds

        self._source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self._source[int(index)]
        where = f"{self.tfds_name} {self.split} (record {index})"
        return {new: _tfds_value(example[old], new == "score" and self.kind == "sts", where)
                for old, new in self.feature_map.items()}

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_source"}

    def __setstate__(self, state):
        self.__init__(state["tfds_name"], state["data_dir"], state["split"], state["feature_map"], state["kind"])

    def __repr__(self) -> str:
        return f"TfdsRecords({self.tfds_name!r} {self.split!r}: {len(self)} rows)"
