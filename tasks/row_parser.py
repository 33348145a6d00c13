"""Which cells of a TSV/JSONL/text line feed which feature, for the four source kinds (no TensorFlow here).

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
tab inside a text) is malformed, not cut short.

A ``RowParser`` reads a whole file (``rows``) or, through the picklable ``LineReader`` of one file, a single
line that a reader found by its byte offset (``tasks.records``): both apply the same checks
(``bilingual.rows``), so a row is valid the same way whether it is streamed or read by index. A key -> value
record (a JSONL line's object, or a row of a parquet / Arrow file, whose columns are named like JSON keys)
goes through one method, ``RowParser.record``. This module
imports no TensorFlow, so the input-pipeline worker processes that read rows start fast.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Optional, Sequence

from bilingual.rows import (DataError, TsvFile, _parse_lines, index_rows, json_record, line_offsets, numbered_lines,
                            open_binary, tsv_cells, valid_number, valid_text)

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


def infer_format(path: str) -> str:
    name = path.lower()
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith(".tsv"):
        return "tsv"
    return "text"


@dataclasses.dataclass(frozen=True)
class LineReader:
    """Parses one line of one file into a feature dict (or raises ``DataError`` naming file and line).

    ``first_line``: the first line holding a row (2 after a TSV header). ``columns``: feature -> TSV column
    index or JSON key. Picklable, so the input pipeline's worker processes receive it.
    """

    parser: "RowParser"
    path: str
    file_format: str
    first_line: int
    columns: Mapping[str, Any]
    width: int = 0
    open_ended: bool = False

    def __call__(self, line: int, text: str) -> dict[str, Any]:
        p, path = self.parser, self.path
        if self.file_format == "text":
            return {"text": valid_text(text, path, line, "text")}
        if self.file_format == "tsv":
            cells = tsv_cells(path, line, text, self.width, self.open_ended)
            return {feature: p.negatives(cells[i:], path, line) if feature == "negatives"
                    else p.value(feature, cells[i], path, line) for feature, i in self.columns.items()}
        return p.record(json_record(path, line, text, required=list(self.columns.values())), self.columns, path,
                        line)


class RowParser:
    """Turns the lines of a file into feature dicts, or raises ``DataError`` naming file and line.

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
        if path.lower().endswith((".gz", ".bz2", ".xz", ".zst")):
            raise DataError(path, "compressed files are not read (rows are read by byte offset); decompress it")
        fmt = self.file_format or infer_format(path)
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

    def value(self, feature: str, value: Any, path: str, line: int) -> Any:
        if feature == "score":
            return valid_number(value, path, line, "score", self.score_range)
        return valid_text(value, path, line, feature)

    def record(self, record: Mapping[str, Any], columns: Mapping[str, str], path: str,
               line: Optional[int]) -> dict[str, Any]:
        """The features of one key -> value record (a JSONL line's object, a row of a parquet or Arrow file,
        ``tasks.records.ColumnarRows``) whose keys hold ``columns``' values (the caller checked): each value
        checked like a TSV cell. ``path`` and ``line`` say where in the error."""
        out = {}
        for feature, key in columns.items():
            value = record[key]
            if feature == "negatives":
                if not isinstance(value, list):
                    raise DataError(path, f"{key!r} must be a list of strings", line)
                out[feature] = self.negatives(value, path, line)
            else:
                out[feature] = self.value(feature, value, path, line)
        return out

    def record_keys(self) -> dict[str, str]:
        """Feature -> JSON key / column name (``columns``, else ``DEFAULT_JSON_KEYS``) for key -> value
        records: JSONL lines and columnar files."""
        keys = dict(self.columns or DEFAULT_JSON_KEYS[self.kind])
        missing = set(DEFAULT_JSON_KEYS[self.kind]) - set(keys)
        if missing:
            raise ValueError(f"columns lacks {sorted(missing)} for a {self.kind} source")
        return keys

    def negatives(self, values: Sequence[Any], path: str, line: int) -> list[str]:
        negatives = [valid_text(v, path, line, "negatives") for v in values]
        if len(negatives) < self.num_negatives:
            raise DataError(path, f"{len(negatives)} negatives, the task needs {self.num_negatives}", line)
        return negatives[: self.num_negatives]

    def line_reader(self, path: str) -> Optional[LineReader]:
        """The reader of ``path``'s lines (a TSV header is read and resolved now); None for a headed TSV
        file that is empty (no header, no rows)."""
        fmt = self.format_of(path)
        if fmt == "tsv":
            with TsvFile(path, header=self.header) as tsv:
                if self.header and tsv.header is None:
                    return None
                cols = self.resolve_tsv_columns(tsv)
                width = len(tsv.header) if self.header else max(cols.values()) + 1
            return LineReader(self, path, fmt, 2 if self.header else 1, cols, width,
                              open_ended=not self.header and "negatives" in cols)
        if fmt == "jsonl":
            return LineReader(self, path, fmt, 1, self.record_keys())
        return LineReader(self, path, fmt, 1, {"text": "text"})

    def rows(self, path: str, on_error: str = "raise") -> Iterator[dict[str, Any]]:
        """Yields the parsed rows of ``path`` (``on_error``: see ``bilingual.rows``)."""
        reader = self.line_reader(path)
        if reader is None:
            return
        with open_binary(path) as f:
            lines = ((line, raw) for line, raw in numbered_lines(f) if line >= reader.first_line)
            yield from _parse_lines(path, lines, reader, on_error)

    def index(self, path: str, on_error: str = "raise") -> tuple[Optional[LineReader], list[int], list[int]]:
        """``(reader, line numbers, byte offsets)`` of the valid rows of ``path``: one validating pass, after
        which any row can be read alone (``tasks.records.LineRecords``)."""
        reader = self.line_reader(path)
        if reader is None:
            return None, [], []
        with open_binary(path) as f:
            lines = ((line, offset, raw) for line, offset, raw in line_offsets(f) if line >= reader.first_line)
            found, offsets = index_rows(path, lines, reader, on_error)
        return reader, found, offsets
