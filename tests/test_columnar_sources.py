"""Parquet, Arrow and ``datasets.save_to_disk`` sources (``tasks.records.ColumnarRows``) and the path checks at
registration (``tasks.registry``): rows read back equal the rows written by pyarrow / ``datasets``, in any
order; bad cells and missing columns name the file; a pattern matching nothing names the gin key."""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bilingual.config import ConfigError
from bilingual.rows import SKIPPED_ROWS, DataError
from launch import prepare_data
from tasks import batching, registry, run_data
from tasks.records import ArrayRecordRows, ColumnarRows, open_records
from tasks.row_parser import RowParser
from tasks.sources import FileSource
from data_helpers import tok_dir, write  # noqa: F401 (fixtures)

# multi-byte UTF-8 in every row (umlauts, symbols, emoji), and varying lengths
PAIRS = [{"query": f"Frage {i} über Köln € {'ä' * (i % 7)}", "passage": f"Antwort {i} 😀 " + "lang " * (i % 11)}
         for i in range(1000)]


def datasets_lib():
    return pytest.importorskip("datasets")  # test-only dependency


def parquet(path, rows, row_group_size=None):
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return str(path)


def read_all(records, order=None):
    return [records[i] for i in (range(len(records)) if order is None else order)]


# ------------------------------------------------------------------------------------- rows read back


def test_parquet_with_several_row_groups_in_random_order(tmp_path):
    path = parquet(tmp_path / "pairs.parquet", PAIRS, row_group_size=128)
    records = open_records([path], RowParser("pairs"))
    assert isinstance(records, ColumnarRows) and len(records) == len(PAIRS)
    assert records.files[0].block_rows == [128] * 7 + [104], "the footer's row groups"
    order = list(range(len(PAIRS))) * 2
    random.Random(0).shuffle(order)
    for i in order:  # jumps between row groups, past the per-thread cache of decoded groups
        assert records[i] == PAIRS[i], f"row {i}"
    assert read_all(records) == PAIRS


def test_hf_save_to_disk_directory_and_to_parquet_equal_the_rows(tmp_path):
    datasets = datasets_lib()
    rows = [{"sentence1": f"Satz {i} ü", "sentence2": f"Zweiter Satz {i} 🎉", "score": (i % 51) / 10,
             "id": i} for i in range(700)]
    expected = [{"a": r["sentence1"], "b": r["sentence2"], "score": r["score"]} for r in rows]
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "hf"), num_shards=3)
    ds.to_parquet(str(tmp_path / "hf.parquet"), batch_size=100)
    parser = RowParser("sts", columns={"a": "sentence1", "b": "sentence2", "score": "score"}, score_range=(0, 5))
    from_disk = open_records([str(tmp_path / "hf")], parser)  # the directory stands for its Arrow files
    assert [os.path.basename(f.path) for f in from_disk.files] == [f"data-0000{k}-of-00003.arrow" for k in range(3)]
    from_parquet = open_records([str(tmp_path / "hf.parquet")], parser)
    assert len(from_parquet.files[0].block_rows) == 7, "to_parquet(batch_size=100) writes row groups of 100"
    order = random.Random(1).sample(range(len(rows)), len(rows))
    assert read_all(from_disk, order) == [expected[i] for i in order]
    assert read_all(from_parquet, order) == [expected[i] for i in order]
    assert from_disk.file_counts() == {f.path: n for f, n in zip(from_disk.files, (234, 233, 233))}


def test_retrieval_negatives_from_a_list_column(tmp_path):
    rows = [{"query": f"q {i}", "positive": f"p {i}", "negatives": [f"n {i} {k} ñ" for k in range(4)]}
            for i in range(50)]
    path = parquet(tmp_path / "r.parquet", rows, row_group_size=16)
    records = open_records([path], RowParser("retrieval", num_negatives=3))
    assert records[17] == {"query": "q 17", "passage": "p 17", "negatives": ["n 17 0 ñ", "n 17 1 ñ", "n 17 2 ñ"]}


def test_remote_paths_are_read_through_gfile(tmp_path):
    datasets = datasets_lib()
    datasets.Dataset.from_list(PAIRS[:300]).save_to_disk(str(tmp_path / "hf"), num_shards=2)
    path = parquet(tmp_path / "p.parquet", PAIRS[:300], row_group_size=64)
    url = lambda p: "file://" + str(p)  # noqa: E731  (a URL: bilingual.rows.open_binary goes through tf.io.gfile)
    order = random.Random(2).sample(range(300), 300)
    for records in (open_records([url(tmp_path / "hf")], RowParser("pairs")),
                    open_records([url(path)], RowParser("pairs"))):
        assert len(records) == 300 and read_all(records, order) == [PAIRS[i] for i in order]
    remote_arrow = open_records([url(tmp_path / "hf")], RowParser("pairs"))
    assert all(f.offsets for f in remote_arrow.files), "a remote Arrow stream is read by record batch offsets"
    copy = pickle.loads(pickle.dumps(remote_arrow))
    assert read_all(copy, order[:50]) == [PAIRS[i] for i in order[:50]]


def test_pickle_round_trip_and_two_threads(tmp_path):
    path = parquet(tmp_path / "pairs.parquet", PAIRS, row_group_size=100)
    records = open_records([path], RowParser("pairs"))
    assert records[5] == PAIRS[5]  # opened handles and decoded groups exist now; they must not travel
    copy = pickle.loads(pickle.dumps(records))
    assert read_all(copy, reversed(range(len(PAIRS)))) == PAIRS[::-1]
    assert records[999] == PAIRS[999], "the original still reads after pickling"
    errors = []

    def read(seed):
        for i in random.Random(seed).sample(range(len(PAIRS)), 400):
            if records[i] != PAIRS[i]:
                errors.append((seed, i))

    threads = [threading.Thread(target=read, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"concurrent reads returned wrong rows: {errors[:3]}"


def test_text_task_column_and_local_arrow_file(tmp_path):
    table = pa.Table.from_pylist([{"content": f"Dokument {i} über Köln.", "n": i} for i in range(40)])
    with pa.ipc.new_stream(str(tmp_path / "docs.arrow"), table.schema) as writer:
        for start in range(0, 40, 15):
            writer.write_batch(table.slice(start, 15).to_batches()[0])
    records = open_records([str(tmp_path / "docs.arrow")], RowParser("text", columns={"text": "content"}))
    assert records.files[0].block_rows == [15, 15, 10]
    assert read_all(records, [39, 0, 16]) == [{"text": f"Dokument {i} über Köln."} for i in (39, 0, 16)]


# ------------------------------------------------------------------------------------------- errors


def test_a_bad_cell_is_a_data_error_naming_file_and_row(tmp_path):
    rows = [{"sentence1": f"A {i}", "sentence2": f"B {i}", "score": 1.0} for i in range(30)]
    rows[7]["sentence2"] = "   "
    rows[12]["score"] = float("nan")
    rows[20]["sentence1"] = None
    path = parquet(tmp_path / "sts.parquet", rows, row_group_size=8)
    parser = RowParser("sts", columns={"a": "sentence1", "b": "sentence2", "score": "score"}, score_range=(0, 5))
    records = open_records([path], parser)  # without a pass: each row is checked when read
    assert records[6] == {"a": "A 6", "b": "B 6", "score": 1.0}
    with pytest.raises(DataError, match=r"sts\.parquet \(row 7\): empty text in 'b'$"):
        records[7]
    with pytest.raises(DataError, match=r"sts\.parquet \(row 12\): score nan is not finite$"):
        records[12]
    with pytest.raises(DataError, match=r"sts\.parquet \(row 20\): 'a' is NoneType, expected a string$"):
        records[20]
    with pytest.raises(DataError, match=r"sts\.parquet \(row 7\): empty text"):  # validate: at open
        open_records([path], parser, validate=True)


def test_skip_drops_bad_rows_at_open_and_counts_them(tmp_path, caplog):
    rows = [{"query": f"q {i}", "passage": f"p {i}"} for i in range(20)]
    rows[3]["passage"], rows[15]["query"] = "", "\t"
    path = parquet(tmp_path / "pairs.parquet", rows, row_group_size=6)
    with caplog.at_level(logging.WARNING, logger="tasks.records"):
        records = open_records([path], RowParser("pairs"), on_error="skip")
    assert len(records) == 18 and read_all(records) == [r for i, r in enumerate(rows) if i not in (3, 15)]
    assert "pairs.parquet: skipped 2 malformed row(s); first: " in caplog.text and "(row 3)" in caplog.text
    assert SKIPPED_ROWS[path] == 2 and records.file_counts() == {path: 18}
    assert pickle.loads(pickle.dumps(records))[3] == rows[4]


def test_missing_or_mistyped_column_is_found_at_open(tmp_path):
    path = parquet(tmp_path / "docs.parquet", [{"body": "Text", "id": 1}])
    with pytest.raises(DataError, match=r"docs\.parquet: no column 'text' \(for 'text'\); it has columns "
                                        r"\['body', 'id'\]"):
        open_records([path], RowParser("text"))
    with pytest.raises(DataError, match=r"docs\.parquet: column 'id' \(for 'text'\) holds int64, expected strings"):
        open_records([path], RowParser("text", columns={"text": "id"}))
    datasets = datasets_lib()
    datasets.Dataset.from_list([{"q": "a", "p": "b"}]).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(DataError, match=r"data-00000-of-00001\.arrow: no column 'query' \(for 'query'\), 'passage' "
                                        r"\(for 'passage'\); it has columns \['q', 'p'\]"):
        open_records([str(tmp_path / "hf")], RowParser("pairs"))


def test_dataset_dict_directory_and_mixed_kinds_are_refused(tmp_path):
    datasets = datasets_lib()
    ds = datasets.Dataset.from_list(PAIRS[:4])
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd: a datasets\.DatasetDict directory .*; name one split's directory, "
                                        rf"e\.g\. '{re.escape(str(tmp_path / 'dd' / 'train'))}'"):
        open_records([str(tmp_path / "dd")], RowParser("pairs"))
    assert read_all(open_records([str(tmp_path / "dd" / "train")], RowParser("pairs"))) == PAIRS[:4]
    tsv = write(tmp_path / "p.tsv", "q\tp\nFrage\tAntwort\n")
    pqt = parquet(tmp_path / "p.parquet", PAIRS[:4])
    source = FileSource({"train": [tsv, pqt]}, RowParser("pairs"))
    with pytest.raises(DataError, match=r"of one kind .*columnar: \[.*p\.parquet'\]; text: \[.*p\.tsv'\]|"
                                        r"of one kind .*text: \[.*p\.tsv'\]; columnar: \[.*p\.parquet'\]"):
        source.records("train")
    os.makedirs(tmp_path / "plain")
    with pytest.raises(DataError, match=r"plain: a directory without state\.json"):
        open_records([str(tmp_path / "plain")], RowParser("pairs"))


# ------------------------------------------------------------------------------ checks at registration


def test_missing_files_name_the_gin_key(tmp_path, tok_dir):  # noqa: F811
    import gin

    missing = str(tmp_path / "culturax" / "de" / "*.parquet")
    with pytest.raises(ConfigError, match=rf"^register_text_task\(name='mlm_x'\)\.files: no file matches "
                                          rf"'{re.escape(missing)}' \(task 'mlm_x', split 'train'\)"):
        registry.register_text_task("mlm_x", [missing], tok_dir)
    config = f"""
register_data.tasks = [@mlm_de_culturax/register_text_task()]
mlm_de_culturax/register_text_task.name = "mlm_de_culturax"
mlm_de_culturax/register_text_task.files = {{"train": ["{missing}"]}}
mlm_de_culturax/register_text_task.tokenizer = "{tok_dir}"
"""
    gin.clear_config()
    try:
        gin.parse_config(config)
        with pytest.raises(ConfigError, match=rf"^mlm_de_culturax/register_text_task\.files: no file matches "
                                              rf"'{re.escape(missing)}' \(task 'mlm_de_culturax', split 'train'\)"):
            run_data.register_data()
        datasets = datasets_lib()
        datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "x"}])}).save_to_disk(
            str(tmp_path / "dd"))
        gin.bind_parameter("mlm_de_culturax/register_text_task.files", [str(tmp_path / "dd")])
        with pytest.raises(ConfigError, match=r"^mlm_de_culturax/register_text_task\.files: .*dd: a datasets\."
                                              r"DatasetDict directory .* e\.g\. '.*dd/train' \(task"):
            run_data.register_data()
        gin.bind_parameter("mlm_de_culturax/register_text_task.files", [str(tmp_path / "dd" / "train")])
        assert run_data.register_data() == ["mlm_de_culturax"]
    finally:
        gin.clear_config()


def test_beir_paths_name_the_gin_key(tmp_path, tok_dir):  # noqa: F811
    import gin

    corpus = write(tmp_path / "corpus.jsonl", '{"_id": "d1", "text": "Doc."}\n')
    queries = write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "Query?"}\n')
    qrels = str(tmp_path / "qrels" / "train.tsv")
    with gin.config_scope("beir_de"):
        with pytest.raises(ConfigError, match=rf"^beir_de/register_beir_task\.qrels: no file '{re.escape(qrels)}' "
                                              r"\(task 'beir_x', split 'train'\)"):
            registry.register_beir_task("beir_x", corpus, queries, qrels, tok_dir)


# ------------------------------------------------------------------------------------ end to end


def test_batcher_reads_a_parquet_task_like_its_tsv(tmp_path, tok_dir):  # noqa: F811
    rows = PAIRS[:37]
    tsv = write(tmp_path / "pairs.tsv", "de\ten\n" + "".join(f"{r['query']}\t{r['passage']}\n" for r in rows))
    datasets = datasets_lib()
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "pairs.parquet"), batch_size=10)
    lengths = {"query": 12, "passage": 16}

    def batches(files, num_workers):
        task = registry.register_pairs_task("parquet_vs_tsv", files, tok_dir)  # same name: same shuffle seed
        kind = type(batching.records_of(task, "train")).__name__
        with batching.make_batch_iterator("parquet_vs_tsv", batch_size=5, seed=3, sequence_lengths=lengths,
                                          prefetch=0, num_workers=num_workers) as it:
            return kind, [next(it) for _ in range(9)]  # 45 examples: more than one epoch of 37

    kind_tsv, from_tsv = batches(tsv, 0)
    kind_parquet, from_parquet = batches([str(tmp_path / "*.parquet")], 1)  # rows read in a worker process
    assert (kind_tsv, kind_parquet) == ("LineRecords", "ColumnarRows")
    for step, (a, b) in enumerate(zip(from_tsv, from_parquet)):
        for key in a:
            assert np.array_equal(a[key], b[key]), f"step {step}: {key} differs between TSV and parquet"


def test_prepare_data_converts_parquet_and_save_to_disk(tmp_path, capsys):
    datasets = datasets_lib()
    rows = [{"content": f"Dokument {i} über Köln.", "id": i} for i in range(25)]
    datasets.Dataset.from_list(rows[:10]).save_to_disk(str(tmp_path / "hf"))
    path = parquet(tmp_path / "docs.parquet", rows[10:], row_group_size=4)
    out = str(tmp_path / "out")
    written = prepare_data.main(["--kind", "text", "--out", out, "--shards", "2", str(tmp_path / "hf"), path,
                                 "--columns", "text=content"])
    printed = capsys.readouterr().out
    assert f"{tmp_path / 'hf' / 'data-00000-of-00001.arrow'}: 10 rows" in printed and f"{path}: 15 rows" in printed
    together = ArrayRecordRows(written)
    assert read_all(together) == [{"text": r["content"]} for r in rows[0::2] + rows[1::2]], "shard k: rows k::2"
    bad = parquet(tmp_path / "bad.parquet", [{"text": "ok"}, {"text": " "}])
    assert prepare_data.main(["--kind", "text", "--out", str(tmp_path / "out2"), bad]) == 2
    assert capsys.readouterr().err == f"error: {bad} (row 1): empty text in 'text'\n"
    assert not os.path.exists(tmp_path / "out2") or not os.listdir(tmp_path / "out2"), "nothing written"

