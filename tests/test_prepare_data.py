"""``python -m launch.prepare_data``: validated rows into round-robin ArrayRecord shards."""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys

from launch import prepare_data
from tasks import batching, registry
from tasks.records import ArrayRecordRows
from tasks.row_parser import RowParser
from data_helpers import DEMO_TRAIN, ROOT, tok_dir, write  # noqa: F401 (fixtures)

DEMO_PAIRS = DEMO_TRAIN / "pairs" / "de-en.tsv"


def tsv_rows(path):
    """The rows of a headed two-column TSV, read with the csv module (independent of the project's reader)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [{"query": q, "passage": p} for q, p in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]]


def shards_in(out):
    return sorted(glob.glob(os.path.join(out, "*.array_record")))


def test_demo_pairs_into_round_robin_shards(tmp_path, capsys, tok_dir):
    out = str(tmp_path / "pairs-ar")
    written = prepare_data.main(["--kind", "pairs", "--out", out, "--shards", "3", str(DEMO_PAIRS)])
    names = [os.path.basename(p) for p in shards_in(out)]
    assert names == [f"pairs-{k:05d}-of-00003.array_record" for k in range(3)]
    assert written == shards_in(out)
    parsed = list(RowParser("pairs").rows(str(DEMO_PAIRS)))
    assert parsed == tsv_rows(DEMO_PAIRS) and len(parsed) == 5000
    for k, path in enumerate(shards_in(out)):  # row i of the file is row i // 3 of shard i % 3
        shard = ArrayRecordRows([path])
        assert [shard[j] for j in range(len(shard))] == parsed[k::3], f"shard {k} is not rows {k}::3"
    together = ArrayRecordRows(shards_in(out))
    assert sorted(map(str, (together[i] for i in range(len(together))))) == sorted(map(str, parsed))
    printed = capsys.readouterr().out
    assert f"{DEMO_PAIRS}: 5000 rows" in printed and "5000 pairs rows in 3 ArrayRecord file(s)" in printed
    shard_lines = [line for line in printed.splitlines() if ".array_record: " in line]
    assert shard_lines == [f"{path}: {n} rows" for path, n in zip(shards_in(out), (1667, 1667, 1666))]
    # the docstring's registration reads them (no pass over text files)
    task = registry.register_pairs_task("prepared_pairs", [os.path.join(out, "*.array_record")], tok_dir)
    records = batching.records_of(task, "train")
    assert isinstance(records, ArrayRecordRows) and len(records) == 5000
    assert records[1667] == parsed[1], "the task reads the shards in file order"


BAD = "de\ten\nEins\tOne\nZwei ohne Tab\nDrei\tThree\nVier\tFour\textra\nFünf\tFive\n"


def test_malformed_row_errors_naming_file_and_line(tmp_path, capsys):
    path = write(tmp_path / "bad.tsv", BAD)
    out = str(tmp_path / "out")
    assert prepare_data.main(["--kind", "pairs", "--out", out, path]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}:3: 1 tab-separated columns, expected 2\n"
    assert shards_in(out) == [], "nothing may be written when a row is malformed"


def test_skip_drops_and_counts_malformed_rows(tmp_path, capsys):
    path = write(tmp_path / "bad.tsv", BAD)
    out = str(tmp_path / "out")
    prepare_data.main(["--kind", "pairs", "--out", out, "--shards", "2", "--on_error", "skip", path])
    assert f"{path}: 3 rows, 2 malformed row(s) skipped" in capsys.readouterr().out
    rows = ArrayRecordRows(shards_in(out))
    assert [rows[i]["query"] for i in range(len(rows))] == ["Eins", "Fünf", "Drei"]  # shard 0: 0, 2; shard 1: 1


def test_existing_shards_need_overwrite(tmp_path, capsys):
    path = write(tmp_path / "ok.tsv", "de\ten\n" + "".join(f"Satz {i}\tSentence {i}\n" for i in range(5)))
    out = str(tmp_path / "out")
    prepare_data.main(["--kind", "pairs", "--out", out, "--shards", "3", path])
    assert prepare_data.main(["--kind", "pairs", "--out", out, "--shards", "2", path]) == 2
    assert "already holds 3 shard(s)" in capsys.readouterr().err
    prepare_data.main(["--kind", "pairs", "--out", out, "--shards", "2", "--overwrite", path])
    assert [os.path.basename(p) for p in shards_in(out)] == ["pairs-00000-of-00002.array_record",
                                                            "pairs-00001-of-00002.array_record"]
    rows = ArrayRecordRows(shards_in(out))
    assert len(rows) == 5 and rows[0]["query"] == "Satz 0" and rows[3]["query"] == "Satz 1"


def test_sts_columns_and_score_range(tmp_path, capsys):
    path = write(tmp_path / "sts.tsv", "s1\ts2\tlabel\nA\tB\t4.5\nC\tD\t7\n")
    out = str(tmp_path / "out")
    args = ["--kind", "sts", "--out", out, path, "--columns", "a=s1", "b=s2", "score=label"]
    assert prepare_data.main(args) == 2
    assert capsys.readouterr().err == f"error: {path}:3: score 7.0 outside the range [0.0, 5.0]\n"
    prepare_data.main([*args, "--score_range", "0", "10", "--name", "sts_de"])
    rows = ArrayRecordRows(shards_in(out))
    assert [rows[i] for i in range(2)] == [{"a": "A", "b": "B", "score": 4.5}, {"a": "C", "b": "D", "score": 7.0}]
    assert os.path.basename(shards_in(out)[0]) == "sts_de-00000-of-00001.array_record"


def test_module_entry_point_reports_one_error_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"query": "a", "passage": "b"}\n{"query": "c"}\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("BILINGUAL_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "launch.prepare_data", "--kind", "pairs", "--out",
                           str(tmp_path / "out"), path], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: {path}:2: record lacks key(s) ['passage'] (has ['query'])\n", done.stderr
