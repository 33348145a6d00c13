"""Record-addressable rows (``tasks.records``) and the host/epoch order of ``tasks.batch_jobs.ExampleOrder``."""

from __future__ import annotations

import json
import pickle
import random
import sys
import threading

import numpy as np
import pytest

from bilingual.rows import DataError
from tasks import batching, registry
from tasks.batch_jobs import ExampleOrder
from tasks.records import ArrayRecordRows, LineRecords, ListRecords, write_array_records
from tasks.row_parser import RowParser
from data_helpers import tok_dir, write  # noqa: F401 (fixtures)

BOM = "\ufeff"
# multi-byte UTF-8 in every row: 2-byte umlauts, 3-byte symbols, 4-byte emoji; byte offsets differ from
# character offsets from the first row on
TEXTS = [("Grüße aus Köln 😀", "Greetings from Cologne 🎉"), ("Übermäßig € teuer", "Too ☕ expensive"),
         ("Straße", "street"), ("Ein 🐍 im Gras", "A snake 🐍 in the grass"), ("Ähre", "ear (of grain)")]
PAIRS = [{"query": q, "passage": p} for q, p in TEXTS]


def case_files(d):
    """(file, parser, expected rows): every format, with a BOM, CRLF and multi-byte text."""
    tsv_header = BOM + "de\ten\r\n" + "".join(f"{q}\t{p}\r\n" for q, p in TEXTS)
    tsv_plain = BOM + "".join(f"{q}\t{p}\n" for q, p in TEXTS).rstrip("\n")  # no final newline
    jsonl = BOM + "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in PAIRS)
    text = BOM + "".join(f"{q} / {p}\r\n" for q, p in TEXTS)
    return [
        (write(d / "header.tsv", tsv_header), RowParser("pairs"), PAIRS),
        (write(d / "plain.tsv", tsv_plain), RowParser("pairs", header=False), PAIRS),
        (write(d / "pairs.jsonl", jsonl), RowParser("pairs"), PAIRS),
        (write(d / "docs.txt", text), RowParser("text"), [{"text": f"{q} / {p}"} for q, p in TEXTS]),
    ]


@pytest.mark.parametrize("case", range(4), ids=["tsv-header", "tsv-headerless", "jsonl", "text"])
def test_line_records_equal_streamed_rows(tmp_path, case):
    path, parser, expected = case_files(tmp_path)[case]
    streamed = list(parser.rows(path))
    assert streamed == expected, "the hand-written rows (BOM and CR dropped) differ from RowParser.rows"
    records = LineRecords.scan([path], parser)
    assert len(records) == len(expected)
    assert [records[i] for i in range(len(records))] == streamed, "LineRecords in order != RowParser.rows"
    order = list(range(len(records))) * 3
    random.Random(case).shuffle(order)
    for i in order:  # seeks back and forth across multi-byte rows
        assert records[i] == streamed[i], f"row {i} read out of order"


def test_line_records_over_several_files_in_order(tmp_path):
    files = case_files(tmp_path)
    pair_files = [f for f, p, _ in files if p.kind == "pairs" and p.header]  # header.tsv, pairs.jsonl
    records = LineRecords.scan(pair_files, RowParser("pairs"))
    assert len(records) == 2 * len(PAIRS)
    assert [records[i] for i in range(len(records))] == PAIRS + PAIRS
    assert records.files.tolist() == [0] * 5 + [1] * 5
    assert records.lines.tolist() == [2, 3, 4, 5, 6] + [1, 2, 3, 4, 5], "line numbers count the TSV header"


def test_byte_offsets_point_at_each_row(tmp_path):
    path, parser, _ = case_files(tmp_path)[1]  # headerless: row 1 starts after the 3-byte BOM
    raw = open(path, "rb").read()
    starts = [0] + [i + 1 for i, b in enumerate(raw) if b == ord("\n")]
    records = LineRecords.scan([path], parser)
    assert records.offsets.tolist() == [3] + starts[1:], "offsets are byte (not character) offsets"


BAD_PAIRS = ("q\tp\n"
             "eins\tone\n"            # line 2 ok
             "nur eine Spalte\n"      # line 3: one column
             "zwei\ttwo\n"            # line 4 ok
             "drei\tthree\textra\n"   # line 5: three columns
             "  \tleer\n"             # line 6: empty query
             "vier\tfour\n")          # line 7 ok


def test_skip_indexes_only_valid_rows(tmp_path):
    path = write(tmp_path / "bad.tsv", BAD_PAIRS)
    records = LineRecords.scan([path], RowParser("pairs"), on_error="skip")
    assert len(records) == 3, f"expected the 3 valid rows, got {records}"
    assert records.lines.tolist() == [2, 4, 7]
    assert [records[i]["query"] for i in range(3)] == ["eins", "zwei", "vier"]
    assert [records[i] for i in (2, 0, 1)] == [{"query": q, "passage": p} for q, p in
                                               (("vier", "four"), ("eins", "one"), ("zwei", "two"))]


def test_raise_names_file_and_line_at_scan_time(tmp_path):
    path = write(tmp_path / "bad.tsv", BAD_PAIRS)
    with pytest.raises(DataError, match=r"bad\.tsv:3: 1 tab-separated columns") as err:
        LineRecords.scan([path], RowParser("pairs"))
    assert (err.value.path, err.value.line) == (path, 3)
    bad_json = write(tmp_path / "bad.jsonl", '{"query": "a", "passage": "b"}\n{"query": "c"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: record lacks key"):
        LineRecords.scan([bad_json], RowParser("pairs"))
    bad_utf8 = write(tmp_path / "bad.txt", b"gut\nGr\xfc\xdfe\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: invalid UTF-8"):
        LineRecords.scan([bad_utf8], RowParser("text"))


def test_empty_headed_tsv_has_no_records(tmp_path):
    empty = write(tmp_path / "empty.tsv", "")
    path, parser, _ = case_files(tmp_path)[0]
    records = LineRecords.scan([empty, path], parser)
    assert len(records) == len(PAIRS) and records[0] == PAIRS[0]


def test_line_records_pickle_and_still_read(tmp_path):
    path, parser, expected = case_files(tmp_path)[2]
    records = LineRecords.scan([path], parser)
    assert records[3] == expected[3]  # an open handle exists now; it must not travel
    copy = pickle.loads(pickle.dumps(records))
    assert len(copy) == len(expected)
    assert [copy[i] for i in reversed(range(len(copy)))] == expected[::-1]
    assert records[1] == expected[1], "the original still reads after pickling"


def test_line_records_read_from_two_threads(tmp_path):
    rows = [{"query": f"Frage {i} ü {'x' * (i % 37)}", "passage": f"Antwort {i} 😀"} for i in range(1500)]
    path = write(tmp_path / "many.tsv", "q\tp\n" + "".join(f"{r['query']}\t{r['passage']}\n" for r in rows))
    records = LineRecords.scan([path], RowParser("pairs"))
    errors, switch = [], sys.getswitchinterval()

    def read(seed):
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        try:
            for i in order:
                got = records[i]
                if got != rows[i]:
                    errors.append((seed, i, got))
                    return
        except Exception as e:  # a torn read may not even parse
            errors.append((seed, repr(e)))

    sys.setswitchinterval(1e-6)  # switch threads as often as possible, between a seek and its read
    try:
        threads = [threading.Thread(target=read, args=(s,)) for s in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert not errors, f"concurrent reads returned wrong rows: {errors[:3]}"


# ---------------------------------------------------------------------------------------------- ArrayRecord


def test_array_record_round_trip(tmp_path):
    rows = PAIRS + [{"a": "x", "b": "y", "score": 2.5}, {"query": "q", "passage": "p", "negatives": ["n1", "ñ2"]}]
    first, second = str(tmp_path / "a.array_record"), str(tmp_path / "b.array_record")
    assert write_array_records(rows[:4], first) == 4
    assert write_array_records(iter(rows[4:]), second) == len(rows) - 4
    records = ArrayRecordRows([first, second])
    assert len(records) == len(rows)
    assert [records[i] for i in range(len(rows))] == rows, "ArrayRecordRows != the rows written, in file order"
    assert [records[i] for i in (6, 0, 3)] == [rows[6], rows[0], rows[3]]
    copy = pickle.loads(pickle.dumps(records))
    assert [copy[i] for i in range(len(rows))] == rows


def test_list_records():
    records = ListRecords(iter(PAIRS))
    assert len(records) == 5 and records[4] == PAIRS[4] and pickle.loads(pickle.dumps(records))[2] == PAIRS[2]


def test_array_record_task_equals_tsv_task(tmp_path, tok_dir):
    rows = [{"query": f"Frage Nummer {i} über Köln", "passage": f"Antwort {i} 😀 " + "lang " * (i % 9)}
            for i in range(23)]
    tsv = write(tmp_path / "pairs.tsv", "de\ten\n" + "".join(f"{r['query']}\t{r['passage']}\n" for r in rows))
    ar = str(tmp_path / "pairs.array_record")
    assert write_array_records(RowParser("pairs").rows(tsv), ar) == 23
    lengths = {"query": 12, "passage": 16}

    def batches(files):
        task = registry.register_pairs_task("ar_vs_tsv", files, tok_dir)  # same name: same shuffle seed
        records = batching.records_of(task, "train")
        it = batching.make_batch_iterator("ar_vs_tsv", batch_size=5, seed=3, sequence_lengths=lengths,
                                          shuffle=True, prefetch=0)
        try:
            return type(records).__name__, [next(it) for _ in range(10)]  # 50 examples: 3 epochs of 23
        finally:
            it.close()

    kind_tsv, from_tsv = batches(tsv)
    kind_ar, from_ar = batches([ar])
    assert (kind_tsv, kind_ar) == ("LineRecords", "ArrayRecordRows")
    for step, (a, b) in enumerate(zip(from_tsv, from_ar)):
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(a[key], b[key]), f"step {step}: {key} differs between TSV and ArrayRecord"
    assert not np.array_equal(from_tsv[0]["query_ids"], from_tsv[5]["query_ids"])


# ---------------------------------------------------------------------------------------------- ExampleOrder


def test_shuffled_epochs_are_distinct_permutations():
    n = 10
    order = ExampleOrder(n, seed=5, task="t")
    epochs = [[order.record(p) for p in range(e * n, (e + 1) * n)] for e in range(6)]
    for e, records in enumerate(epochs):
        assert sorted(records) == list(range(n)), f"epoch {e} is not a permutation: {records}"
        assert {order.epoch(p) for p in range(e * n, (e + 1) * n)} == {e}
    assert len({tuple(r) for r in epochs}) == 6, f"some epochs repeat an order: {epochs}"
    assert any(r != list(range(n)) for r in epochs), "shuffle=True read in file order"
    other = ExampleOrder(n, seed=6, task="t")
    assert [other.record(p) for p in range(n)] != epochs[0], "the seed does not change the order"
    plain = ExampleOrder(n, seed=5, task="t", shuffle=False)
    assert [plain.record(p) for p in range(3 * n)] == list(range(n)) * 3


def test_hosts_read_disjoint_positions_covering_each_epoch():
    n_records, hosts, epochs = 10, 3, 4
    orders = [ExampleOrder(n_records, seed=11, task="t", shard_index=h, num_shards=hosts) for h in range(hosts)]
    single = ExampleOrder(n_records, seed=11, task="t")
    seen_globals = {}
    for h, order in enumerate(orders):
        for p in range(epochs * n_records // hosts + 2):
            g = order.global_index(p)
            assert g not in seen_globals, f"hosts {seen_globals.get(g)} and {h} both read global position {g}"
            seen_globals[g] = h
    for e in range(epochs):
        read = []
        for g in range(e * n_records, (e + 1) * n_records):  # the reference: enumerate the global positions
            h, p = g % hosts, g // hosts
            order = orders[h]
            assert order.global_index(p) == g and order.epoch(p) == e
            read.append(order.record(p))
            assert read[-1] == single.record(g), "a host's record differs from the one-host order at g"
        assert sorted(read) == list(range(n_records)), f"epoch {e}: hosts read {read}, not each record once"


@pytest.mark.parametrize("num_epochs", [1, 2])
def test_limit_counts_positions_in_the_epochs(num_epochs):
    n_records, hosts = 10, 3
    total = 0
    for h in range(hosts):
        order = ExampleOrder(n_records, seed=0, task="t", shard_index=h, num_shards=hosts, num_epochs=num_epochs)
        expected = sum(1 for p in range(100) if h + hosts * p < num_epochs * n_records)
        assert order.limit == expected, f"host {h}: limit {order.limit}, expected {expected}"
        total += order.limit
    assert total == num_epochs * n_records
    if num_epochs == 1:
        assert [ExampleOrder(10, 0, "t", h, 3, num_epochs=1).limit for h in range(3)] == [4, 3, 3]
    assert ExampleOrder(10, 0, "t").limit is None
    assert ExampleOrder(2, 0, "t", shard_index=4, num_shards=5, num_epochs=1).limit == 0


# ------------------------------------------------------------------------------- errors found by these tests


def test_a_task_without_rows_says_so(tmp_path, tok_dir):
    registry.register_pairs_task("no_rows", write(tmp_path / "e.tsv", "q\tp\n"), tok_dir)
    with pytest.raises(ValueError, match="'no_rows' split 'train' yields no examples"):
        next(batching.make_batch_iterator("no_rows", batch_size=2, prefetch=0))


def test_array_record_rows_are_checked_like_text_rows_of_the_task(tmp_path, tok_dir):
    rows = [{"query": f"q {i}", "passage": f"p {i}", "negatives": [f"n {i} {k}" for k in range(5)]} for i in range(4)]
    write_array_records(rows, tmp_path / "r.array_record")
    registry.register_retrieval_task("ar_three", str(tmp_path / "r.array_record"), tok_dir, num_negatives=3)
    batch = next(batching.make_batch_iterator("ar_three", batch_size=2, prefetch=0,
                                              sequence_lengths={"query": 8, "passage": 8, "negatives": 8}))
    assert batch["negative_ids"].shape == (2, 3, 8), "the task keeps its first 3 of the 5 stored negatives"
    write_array_records([{"a": "x", "b": "y", "score": 9.0}], tmp_path / "s.array_record")
    registry.register_sts_task("ar_sts", str(tmp_path / "s.array_record"), tok_dir)
    with pytest.raises(DataError, match=r"s\.array_record \(record 0\): score 9\.0 outside the range \[0\.0, 5\.0\]"):
        next(batching.make_batch_iterator("ar_sts", batch_size=1, prefetch=0))


def test_compressed_files_are_refused_by_name(tmp_path):
    path = tmp_path / "p.tsv.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00")
    with pytest.raises(DataError, match=r"p\.tsv\.gz: compressed files are not read"):
        LineRecords.scan([str(path)], RowParser("pairs"))
