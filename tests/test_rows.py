"""The shared reader layer: every malformed row names file and line, the skip policy counts, TSV headers and
literal quotes, UTF-8 per line, and the opener (plain ``open`` locally, ``tf.io.gfile`` for URLs)."""

import io
import logging
import pathlib
import pickle
import subprocess
import sys

import pytest

from bilingual import rows
from bilingual.rows import DataError, TsvFile


def write(path, content):
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_error_message_and_attributes(tmp_path):
    err = DataError(tmp_path / "a.tsv", "bad cell", 3)
    assert str(err) == f"{tmp_path / 'a.tsv'}:3: bad cell" and (err.path, err.line) == (str(tmp_path / "a.tsv"), 3)
    assert str(DataError("a.tsv", "empty file")) == "a.tsv: empty file"
    assert str(DataError(None, "TaskSpec 't': bad metric")) == "TaskSpec 't': bad metric"
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.line) == (str(err), 3) and isinstance(err, ValueError)


# ------------------------------------------------------------------------- malformed rows, each format


def test_tsv_bad_cell_and_width_name_the_line(tmp_path):
    path = write(tmp_path / "sts.tsv", "a\tb\tscore\nx\ty\t1\nx\ty\tviel\n")
    with TsvFile(path) as tsv:
        i = tsv.column("score")
        with pytest.raises(DataError, match=r"sts\.tsv:3: score 'viel' is not a number"):
            list(tsv.rows(lambda line, cells: rows.valid_number(cells[i], tsv.path, line)))
    narrow = write(tmp_path / "narrow.tsv", "a\tb\nx\ty\n\nonly\n")
    with pytest.raises(DataError, match=r"narrow\.tsv:4: 1 tab-separated columns, expected 2$"):
        rows.read_headed_tsv(narrow)  # the empty line 3 is skipped, not an error


@pytest.mark.parametrize("line,message", [
    ("{not json", r"invalid JSON"),
    ("[1, 2]", r"expected a JSON object, got list"),
    ('{"query": "q"}', r"record lacks key\(s\) \['passage'\] \(has \['query'\]\)"),
    ("   ", r"empty line"),
])
def test_jsonl_bad_record_names_the_line(tmp_path, line, message):
    path = write(tmp_path / "pairs.jsonl", '{"query": "q", "passage": "p"}\n' + line + "\n")
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: " + message):
        list(rows.read_jsonl(path, required=("query", "passage")))


def test_jsonl_blank_lines_can_be_skipped(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"_id": 1}\n\n  \n{"_id": 2}\n')
    assert [(line, r["_id"]) for line, r in rows.read_jsonl(path, skip_blank=True)] == [(1, 1), (4, 2)]


def test_text_line_validation_names_the_line(tmp_path):
    path = write(tmp_path / "mlm.txt", "Ein Satz.\n \n")
    with pytest.raises(DataError, match=r"mlm\.txt:2: empty text in 'text'"):
        list(rows.read_lines(path, lambda line, text: rows.valid_text(text, path, line, "text")))


def test_cell_validators():
    assert rows.valid_number("2.5", "f", 2, bounds=(0, 5)) == 2.5 and rows.valid_number(3, "f", 2) == 3.0
    with pytest.raises(DataError, match=r"f:2: score 'nan' is not finite"):
        rows.valid_number("nan", "f", 2, bounds=(0, 5))
    with pytest.raises(DataError, match=r"f:2: score 5.5 outside the range \[0, 5\]"):
        rows.valid_number("5.5", "f", 2, bounds=(0, 5))
    with pytest.raises(DataError, match=r"f:7: 'passage' is int, expected a string"):
        rows.valid_text(4, "f", 7, "passage")


# ------------------------------------------------------------------------------------- on_error


def test_skip_counts_rows_and_reports_the_first_reason(tmp_path, caplog):
    path = write(tmp_path / "pairs.tsv", b"q\tp\neins\t1\nzwei\tx\n\xff\t3\nvier\t4\n")
    parse = lambda line, cells: (cells[0], rows.valid_number(cells[1], str(path), line))  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="bilingual.rows"):
        with TsvFile(path) as tsv:
            got = list(tsv.rows(parse, on_error="skip"))
    assert got == [("eins", 1.0), ("vier", 4.0)]
    assert rows.SKIPPED_ROWS[str(path)] == 2
    assert f"{path}: skipped 2 malformed row(s); first: {path}:3: score 'x' is not a number" in caplog.text
    with TsvFile(path) as tsv:
        list(tsv.rows(parse, on_error="skip"))
    assert rows.SKIPPED_ROWS[str(path)] == 4  # a process-wide count per file
    with TsvFile(path) as tsv, pytest.raises(DataError, match=r"pairs\.tsv:3: score 'x'"):
        list(tsv.rows(parse))
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        list(rows.read_lines(path, on_error="ignore"))


def test_bad_header_raises_even_when_skipping(tmp_path):
    path = write(tmp_path / "h.tsv", b"q\t\xfe\nfrage\tantwort\n")
    with pytest.raises(DataError, match=r"h\.tsv:1: invalid UTF-8"):
        TsvFile(path)


# ------------------------------------------------------------------------------------ TSV details


def test_header_columns_by_name_and_by_index(tmp_path):
    path = write(tmp_path / "t.tsv", "id\tsentence1\tsentence2\n7\tA\tB\n")
    with TsvFile(path) as tsv:
        assert tsv.header == ["id", "sentence1", "sentence2"]
        assert (tsv.column("sentence2"), tsv.column(1)) == (2, 1)
        with pytest.raises(DataError, match=r"t\.tsv:1: header .* has no column 'score' \(for 'b'\)"):
            tsv.column("score", "b")
        assert list(tsv.rows()) == [(2, ["7", "A", "B"])]
    with TsvFile(path, header=False) as tsv:
        assert tsv.header is None and tsv.column(0) == 0
        with pytest.raises(DataError, match=r"t\.tsv: column 'id' given by name, but the file has no header"):
            tsv.column("id")
        assert [line for line, _ in tsv.rows(width=3)] == [1, 2]  # without a header, line 1 is a row
    with TsvFile(path, header=False) as tsv, pytest.raises(ValueError, match="without a header needs the row width"):
        list(tsv.rows())


def test_quotes_are_literal(tmp_path):
    path = write(tmp_path / "q.tsv", 'a\tb\n"x\ty"\tz\n' '"\t""\n' 'Er sagte "ja".\t\'ok\'\n')
    with TsvFile(path) as tsv:  # a quoted tab still separates cells: line 2 has one cell too many
        assert [cells for _, cells in tsv.rows(on_error="skip")] == [['"', '""'], ['Er sagte "ja".', "'ok'"]]
    with TsvFile(path) as tsv, pytest.raises(DataError, match=r"q\.tsv:2: 3 tab-separated columns, expected 2"):
        list(tsv.rows())


def test_headed_tsv_contract(tmp_path):
    with pytest.raises(DataError, match=r"e\.tsv: empty file, expected a header line"):
        rows.read_headed_tsv(write(tmp_path / "e.tsv", ""))
    with pytest.raises(DataError, match=r"h\.tsv: no data rows after the header"):
        rows.read_headed_tsv(write(tmp_path / "h.tsv", "label\ttext\n\n"))
    with pytest.raises(DataError, match=r"h2\.tsv:1: header \['text'\] lacks column\(s\) \['label'\]"):
        rows.read_headed_tsv(write(tmp_path / "h2.tsv", "text\nx\n"), required=("label", "text"))
    header, body = rows.read_headed_tsv(write(tmp_path / "ok.tsv", "label\ttext\r\nb\tSatz.\r\n"), ("label",))
    assert header == ["label", "text"] and body == [(2, ["b", "Satz."])]  # CRLF line ends are dropped


# ---------------------------------------------------------------------------------- lines and opener


def test_invalid_utf8_names_the_line_and_can_be_skipped(tmp_path):
    path = write(tmp_path / "mlm.txt", "eins\n".encode() + b"zw\xc3ei\n" + "drei ü\n".encode())
    with pytest.raises(DataError, match=r"mlm\.txt:2: invalid UTF-8 \(invalid continuation byte at byte 2\)"):
        list(rows.read_lines(path))
    assert list(rows.read_lines(path, on_error="skip")) == [(1, "eins"), (3, "drei ü")]


def test_missing_local_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: no such file"):
        list(rows.read_lines(tmp_path / "nope.txt"))


def test_urls_go_through_tf_gfile(tmp_path, monkeypatch):
    path = write(tmp_path / "x.txt", "a\nb\n")
    # a file:// URL is readable only by tf.io.gfile (plain open would not find it)
    assert list(rows.read_lines(f"file://{path}")) == [(1, "a"), (2, "b")]
    import tensorflow as tf

    opened = []

    def fake_gfile(name, mode):
        opened.append((name, mode))
        return io.BytesIO(b'{"_id": "d1"}\n')

    monkeypatch.setattr(tf.io.gfile, "GFile", fake_gfile)
    assert [r for _, r in rows.read_jsonl("gs://bucket/corpus.jsonl")] == [{"_id": "d1"}]
    assert opened == [("gs://bucket/corpus.jsonl", "rb")]
    assert list(rows.read_lines(path)) == [(1, "a"), (2, "b")] and len(opened) == 1  # local: plain open


def test_importing_the_layer_does_not_import_tensorflow():
    code = "import sys, bilingual.rows; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=pathlib.Path(__file__).resolve().parents[1])
