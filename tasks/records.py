"""Record-addressable rows: ``len(records)`` and ``records[i]`` -> one example's feature dict (no TensorFlow).

This is the storage half of constant-time resume (``tasks.batch_jobs`` is the index half): the batcher reads
the record at any index without reading the ones before it. Three kinds, all picklable (the input workers
receive them) and all ``grain`` random-access data sources:

* ``LineRecords``: TSV / JSONL / plain-text files (local or ``gs://``). Opening them makes one validating
  pass (``RowParser.index``: the ``on_error`` policy of ``bilingual.rows`` applies there, once) that keeps
  the file, line number and byte offset of every valid row, 20 bytes a row; reading a row seeks to it and
  parses that line again with the same checks. The pass costs what reading the files once costs, at every
  start, wherever the run resumes; for very large corpora convert them once to ArrayRecord.
* ``ArrayRecordRows``: ArrayRecord files whose records are the JSON feature dicts (``write_array_records``
  writes them from any rows, e.g. a task's validated rows: ``python -m launch.prepare_data``). Opening reads
  only the file footers.
* ``ListRecords``: rows held in memory (BEIR sets, whose queries and corpus are joined in memory anyway, and
  sources without random access that the batcher reads once, see ``tasks.batching.records_of``).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from bilingual.rows import decode_line, open_binary
from tasks.row_parser import LineReader, RowParser

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
