"""Rows of TSV, JSONL and plain-text files, validated while read; one error type naming file and line.

Files are opened by :func:`open_binary`: local paths with ``open``, URLs (``gs://`` and anything else with
``://``) with ``tf.io.gfile`` (TensorFlow is imported only for those). A line ends at ``\\n``; trailing
``\\r``/``\\n`` are dropped; every line must be UTF-8. A UTF-8 byte order mark at the very start of a file
(any format) is dropped; one anywhere else is text. Line numbers are 1-based and count a header line.

Formats:

* plain text: one item per line (:func:`read_lines`);
* TSV: cells split on tabs; quotes are literal characters (``csv.QUOTE_NONE``: no quoting, no escapes).
  With a header, line 1 names the columns and a column is addressed by name or 0-based index
  (:class:`TsvFile`); :func:`read_headed_tsv` reads a whole headed file (``shared/data``). Every row has
  exactly the header's number of cells, or in a headerless file the number its reader names; more cells
  than that (a tab inside a text) is a malformed row like any other, never cut off silently. The one
  open-ended reader is retrieval's list of negatives (``tasks.sources``);
* JSONL: one JSON object per line, optionally with required keys (:func:`read_jsonl`).

Errors: :class:`DataError`, ``"<file>:<line>: <reason>"`` (``"<file>: <reason>"`` when no line applies).

``on_error``: ``"raise"`` (the first malformed row raises) or ``"skip"``: malformed rows (a ``DataError``
while decoding or parsing the row) are dropped, and after the file a warning gives the count and the first
reason; :data:`SKIPPED_ROWS` adds the count up per file. A bad header always raises.
"""

from __future__ import annotations

import json
import logging
import math
from typing import IO, Any, Callable, Iterable, Iterator, Optional, Sequence, TypeVar

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "skip")
#: file -> malformed rows skipped so far in this process (with ``on_error="skip"``), also logged.
SKIPPED_ROWS: dict[str, int] = {}

T = TypeVar("T")


class DataError(ValueError):
    """A malformed or missing input: ``path`` (str) and 1-based ``line`` name where.

    ``path`` is None only for an error about several files or a configuration (a task spec) rather than
    one file; the reason then names what it is about. ``line`` is None where no line applies.
    """

    def __init__(self, path, reason: str, line: Optional[int] = None):
        super().__init__(path, reason, line)  # all three, so that the error pickles
        self.path = None if path is None else str(path)
        self.reason, self.line = reason, line

    def __str__(self) -> str:
        if self.path is None:
            return self.reason
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.reason}"


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error


def open_binary(path) -> IO[bytes]:
    """``path`` opened for reading bytes: ``tf.io.gfile.GFile`` for URLs such as ``gs://``, else ``open``
    (a missing local file is a ``DataError``)."""
    path = str(path)
    if "://" in path:
        import tensorflow as tf  # only for remote file systems; the import is slow

        return tf.io.gfile.GFile(path, "rb")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(path, "no such file") from None


UTF8_BOM = b"\xef\xbb\xbf"


def numbered_lines(file: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(line, raw)`` for each line of an open file, 1-based; a UTF-8 BOM opening line 1 is dropped."""
    for line, raw in enumerate(file, start=1):
        yield line, raw.removeprefix(UTF8_BOM) if line == 1 else raw


def decode_line(raw: bytes, path, line: int) -> str:
    """One line's text without its line break; invalid UTF-8 is a ``DataError`` at ``path:line``."""
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DataError(path, f"invalid UTF-8 ({e.reason} at byte {e.start})", line) from None


def _parse_lines(path: str, lines: Iterable[tuple[int, bytes]], parse: Callable[[int, str], Optional[T]],
                 on_error: str) -> Iterator[T]:
    """``parse(line, text)`` for each numbered raw line; None drops a row (not an error). The one place of
    the ``on_error`` policy."""
    check_on_error(on_error)
    skipped, first_reason = 0, None
    for line, raw in lines:
        try:
            row = parse(line, decode_line(raw, path, line))
        except DataError as e:
            if on_error == "raise":
                raise
            skipped += 1
            first_reason = first_reason or str(e)
            continue
        if row is not None:
            yield row
    if skipped:
        log.warning("%s: skipped %d malformed row(s); first: %s", path, skipped, first_reason)
        SKIPPED_ROWS[path] = SKIPPED_ROWS.get(path, 0) + skipped


def index_rows(path, lines: Iterable[tuple[int, int, bytes]], parse: Callable[[int, str], Optional[Any]],
               on_error: str) -> tuple[list[int], list[int]]:
    """``(line numbers, byte offsets)`` of the rows among ``lines`` (``(line, offset, raw)``, as
    :func:`line_offsets` yields) that ``parse`` accepts (not None), under the ``on_error`` policy of
    :func:`_parse_lines`: the index a random-access reader seeks with."""
    current = {}

    def numbered():
        for line, offset, raw in lines:
            current["offset"] = offset
            yield line, raw

    found_lines, offsets = [], []
    for line in _parse_lines(str(path), numbered(), lambda line, text: line if parse(line, text) is not None
                             else None, on_error):
        found_lines.append(line)
        offsets.append(current["offset"])
    return found_lines, offsets


def read_lines(path, parse: Optional[Callable[[int, str], Optional[T]]] = None, *,
               on_error: str = "raise") -> Iterator[T]:
    """``parse(line, text)`` for every line of a text file (default: ``(line, text)``); None drops a row."""
    path = str(path)
    with open_binary(path) as f:
        yield from _parse_lines(path, numbered_lines(f), parse or _numbered, on_error)


def _numbered(line: int, value):
    return line, value


class TsvFile:
    """One pass over a TSV file: ``header`` (line 1's cells, read on opening; None without a header or in
    an empty file), then :meth:`rows`. A context manager (closes the file)::

        with TsvFile(path) as tsv:
            i = tsv.column("score")
            scores = list(tsv.rows(lambda line, cells: valid_number(cells[i], tsv.path, line)))
    """

    def __init__(self, path, *, header: bool = True):
        self.path = str(path)
        self._file = open_binary(self.path)
        self._lines = numbered_lines(self._file)
        self.header: Optional[list[str]] = None
        self._headed = header
        first = next(self._lines, None) if header else None
        if first is not None:
            try:
                self.header = decode_line(first[1], self.path, 1).split("\t")
            except DataError:
                self._file.close()
                raise

    def __enter__(self) -> "TsvFile":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def column(self, col: str | int, purpose: str = "") -> int:
        """The 0-based index of ``col``: an index, or a header name. ``purpose`` is told in the error."""
        for_what = f" (for {purpose!r})" if purpose else ""
        if isinstance(col, int):
            if col < 0:
                raise ValueError(f"{self.path}: column index {col}{for_what} is negative")
            if self.header is not None and col >= len(self.header):
                raise DataError(self.path, f"header {self.header} has no column {col}{for_what}", 1)
            return col
        if self.header is None:
            raise DataError(self.path, f"column {col!r}{for_what} given by name, but the file has no header")
        if col not in self.header:
            raise DataError(self.path, f"header {self.header} has no column {col!r}{for_what}", 1)
        return self.header.index(col)

    def require(self, names: Sequence[str] = (), min_columns: int = 0) -> None:
        """The header holds every column of ``names`` and at least ``min_columns`` columns."""
        if self.header is None:
            raise DataError(self.path, "empty file, expected a header line")
        missing = [name for name in names if name not in self.header]
        if missing:
            raise DataError(self.path, f"header {self.header} lacks column(s) {missing}", 1)
        if len(self.header) < min_columns:
            raise DataError(self.path, f"header {self.header} has fewer than {min_columns} columns", 1)

    def rows(self, parse: Optional[Callable[[int, list[str]], Optional[T]]] = None, *, on_error: str = "raise",
             skip_empty: bool = False, width: Optional[int] = None, open_ended: bool = False) -> Iterator[T]:
        """``parse(line, cells)`` for each row after the header (default: ``(line, cells)``); None drops a
        row. ``skip_empty``: empty lines are no rows (a line of spaces is a cell).

        Every row must have exactly ``width`` cells (default: the header's; a headerless file must name it),
        or with ``open_ended`` at least ``width`` (for a reader whose trailing cells are a list); any other
        count is a malformed row (``on_error``)."""
        parse = parse or _numbered
        if width is None:
            if self.header is None and self._headed:
                width = 0  # an empty file: there are no rows
            elif self.header is None:
                raise ValueError(f"{self.path}: a TSV file without a header needs the row width")
            else:
                width = len(self.header)

        def parse_line(line: int, content: str):
            cells = tsv_cells(self.path, line, content, width, open_ended, skip_empty)
            return None if cells is None else parse(line, cells)

        try:
            yield from _parse_lines(self.path, self._lines, parse_line, on_error)
        finally:
            self._file.close()


def read_headed_tsv(path, required: Sequence[str] = (), min_columns: int = 0
                    ) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """``(header, [(line, cells), ...])`` of a whole headed TSV (the ``shared/data`` format): the header
    holds ``required`` and ``min_columns``, every row has the header's width, empty lines are skipped and at
    least one row follows the header. Raises on the first malformed line."""
    with TsvFile(path) as tsv:
        tsv.require(required, min_columns)
        body = list(tsv.rows(skip_empty=True))
    if not body:
        raise DataError(tsv.path, "no data rows after the header")
    return tsv.header, body


def read_jsonl(path, parse: Optional[Callable[[int, dict], Optional[T]]] = None, *, required: Sequence[str] = (),
               on_error: str = "raise", skip_blank: bool = False) -> Iterator[T]:
    """``parse(line, record)`` for each line's JSON object (default: ``(line, record)``) holding the keys
    ``required``; None drops a row. ``skip_blank``: lines of only whitespace are no rows (else errors)."""
    parse = parse or _numbered
    path = str(path)

    def parse_line(line: int, content: str):
        record = json_record(path, line, content, required, skip_blank)
        return None if record is None else parse(line, record)

    return read_lines(path, parse_line, on_error=on_error)


def tsv_cells(path, line: int, content: str, width: int, open_ended: bool = False,
              skip_empty: bool = False) -> Optional[list[str]]:
    """One TSV line's cells: exactly ``width`` of them (at least, with ``open_ended``), else a ``DataError``;
    None for an empty line when ``skip_empty``. The width rule of :meth:`TsvFile.rows`."""
    if skip_empty and not content:
        return None
    cells = content.split("\t")
    if len(cells) > width and not open_ended:
        raise DataError(path, f"{len(cells)} tab-separated columns, expected {width} (a tab inside a text?)", line)
    if len(cells) < width:
        expected = f"at least {width}" if open_ended else width
        raise DataError(path, f"{len(cells)} tab-separated columns, expected {expected}", line)
    return cells


def json_record(path, line: int, content: str, required: Sequence[str] = (),
                skip_blank: bool = False) -> Optional[dict]:
    """One JSONL line's object holding the keys ``required``, else a ``DataError``; None for a blank line
    when ``skip_blank``. The rule of :func:`read_jsonl`."""
    if not content.strip():
        if skip_blank:
            return None
        raise DataError(path, "empty line", line)
    try:
        record = json.loads(content)
    except json.JSONDecodeError as e:
        raise DataError(path, f"invalid JSON ({e.msg})", line) from None
    if not isinstance(record, dict):
        raise DataError(path, f"expected a JSON object, got {type(record).__name__}", line)
    missing = [k for k in required if k not in record]
    if missing:
        raise DataError(path, f"record lacks key(s) {missing} (has {sorted(record)})", line)
    return record


def line_offsets(file: IO[bytes]) -> Iterator[tuple[int, int, bytes]]:
    """``(line, byte offset, raw)`` for each line of an open file (as :func:`numbered_lines`, plus where each
    line starts, so a reader can seek back to it)."""
    offset = 0
    for line, raw in enumerate(file, start=1):
        start = offset
        offset += len(raw)
        if line == 1 and raw.startswith(UTF8_BOM):
            raw, start = raw[len(UTF8_BOM):], start + len(UTF8_BOM)
        yield line, start, raw


# ------------------------------------------------------------------------------------------- cells


def valid_text(value: Any, path, line: Optional[int], name: str) -> str:
    """``value`` if it is a string with a non-space character; ``name`` says which cell in the error."""
    if not isinstance(value, str):
        raise DataError(path, f"{name!r} is {type(value).__name__}, expected a string", line)
    if not value.strip():
        raise DataError(path, f"empty text in {name!r}", line)
    return value


def valid_number(value: Any, path, line: Optional[int], name: str = "score",
           bounds: Optional[tuple[float, float]] = None) -> float:
    """``value`` (a number or its text) as a finite float, within the inclusive ``bounds`` when given."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise DataError(path, f"{name} {value!r} is not a number", line) from None
    if not math.isfinite(result):
        raise DataError(path, f"{name} {value!r} is not finite", line)
    if bounds and not bounds[0] <= result <= bounds[1]:
        raise DataError(path, f"{name} {result} outside the range [{bounds[0]}, {bounds[1]}]", line)
    return result
