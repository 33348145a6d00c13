"""Suites as data over the bundled demo data; the launch.evaluate command end to end on a tiny model;
the trainer hook."""

import hashlib
import json

import jax
import numpy as np
import pytest
from sklearn.feature_extraction.text import HashingVectorizer

from tokenizer_fixture import tokenizer_dir, write_tiny_checkpoint
from bilingual.encoder_api import bucket_length
from bilingual.evaluation import suites
from bilingual.evaluation.hook import make_eval_hook
from bilingual.training.hooks import StepEvent
from bilingual.rows import DataError
from launch import evaluate as launch_evaluate

SUITE_NAMES = ("de", "es", "en", "de-en", "es-en")


class CharNgramEncoder:
    """A lexical baseline: hashed character 3-4-grams. Counts every text it is asked to encode."""

    def __init__(self):
        self.vectorizer = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 4), n_features=2 ** 9,
                                            alternate_sign=False)
        self.encoded = []

    def encode(self, texts):
        self.encoded.extend(texts)
        return self.vectorizer.transform(texts).toarray()


def test_every_suite_runs_on_the_bundled_data():
    tasks, defined = suites.load_definitions()
    assert set(SUITE_NAMES) <= set(defined)
    de = [t.name for t in suites.get_suite("de")]
    for required in ("STSb-de", "STSb-de-en", "Tatoeba-de-en", "FLORES-de-en", "XQuAD-de-de", "XQuAD-de-en",
                     "PAWSX-de", "SIB200-de-clustering"):
        assert required in de
    encoder = CharNgramEncoder()
    all_tasks = {t.name: t for name in SUITE_NAMES for t in suites.get_suite(name)}
    result = suites.run_suite(encoder, list(all_tasks.values()))
    assert set(result["tasks"]) == set(all_tasks)
    for name, task in result["tasks"].items():
        assert task["main_metric"] == suites.MAIN_METRIC[task["type"]]
        assert all(-100.0 <= v <= 100.0 for v in task["metrics"].values()), name
        for f in task["files"].values():
            digest = hashlib.sha256((suites.DEMO_DATA_ROOT / f["path"]).read_bytes()).hexdigest()
            assert f["sha256"] == digest
    # Lexical overlap makes monolingual retrieval and STS clearly better than chance with this baseline.
    assert result["tasks"]["XQuAD-de-de"]["main_score"] > 40.0  # chance is about 100 * 0.1 on 50 passages
    assert result["tasks"]["STSb-en"]["main_score"] > 30.0
    # Each distinct text was encoded once across all tasks (XQuAD corpora and SIB texts are shared).
    assert len(encoder.encoded) == len(set(encoder.encoded)) == result["timings"]["texts_encoded"]


def test_limit_cuts_rows_and_queries():
    result = suites.run_suite(CharNgramEncoder(), suites.get_suite("XQuAD-de-en") + suites.get_suite("STSb-de"),
                              limit=10)
    assert result["limit"] == 10
    data = suites.load_task_data(suites.get_suite("XQuAD-de-en")[0], suites.DEMO_DATA_ROOT, limit=10)
    assert len(data.queries) == 10 and len(data.corpus) == 50


def test_missing_files_are_reported_before_encoding(tmp_path):
    encoder = CharNgramEncoder()
    with pytest.raises(DataError, match=r"missing evaluation file\(s\) under data root .*stsb_multi_mt/de-test.tsv"):
        suites.run_suite(encoder, suites.get_suite("de"), tmp_path)
    assert encoder.encoded == []


def test_suite_definition_errors(tmp_path):
    bad = tmp_path / "suites.json"
    bad.write_text(json.dumps({"tasks": {"X": {"type": "regression", "files": {"data": "x.tsv"}}}}))
    with pytest.raises(suites.SuiteError, match=r"tasks.X.type is 'regression'"):
        suites.load_definitions(bad)
    bad.write_text(json.dumps({"tasks": {"X": {"type": "retrieval", "files": {"data": "x.tsv"}}}}))
    with pytest.raises(suites.SuiteError, match=r"tasks.X.files has roles \['data'\]; a retrieval task needs"):
        suites.load_definitions(bad)
    bad.write_text(json.dumps({"tasks": {}, "suites": {"s": ["Nope"]}}))
    with pytest.raises(suites.SuiteError, match=r"suites.s names unknown task\(s\) \['Nope'\]"):
        suites.load_definitions(bad)
    with pytest.raises(suites.SuiteError, match=r"unknown suite 'fr'"):
        suites.get_suite("fr")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    config, params = write_tiny_checkpoint(path)
    return path, config, params


def test_launch_evaluate_end_to_end_and_compare(tiny_checkpoint, tmp_path, capsys):
    path = tiny_checkpoint[0]
    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    assert launch_evaluate.main(["--model", str(path), "--suite", "de", "--limit", "40", "--max-length", "128",
                                 "--out", str(out_a)]) == 0
    table = capsys.readouterr().out
    result = json.loads(out_a.read_text())
    assert result["model"] == str(path) and result["suite"] == "de"
    assert set(result["tasks"]) == {t.name for t in suites.get_suite("de")}
    for name in result["tasks"]:
        assert name in table
    assert result["average"] == pytest.approx(np.mean([t["main_score"] for t in result["tasks"].values()]))
    assert result["data_files"]["xquad/qrels-test.tsv"] == hashlib.sha256(
        (suites.DEMO_DATA_ROOT / "xquad/qrels-test.tsv").read_bytes()).hexdigest()
    assert result["timings"]["total_seconds"] > 0
    buckets = {bucket_length(n, 128) for n in range(1, 129)}
    for rows, length in result["timings"]["batch_shapes"]:  # bucketed: few shapes
        assert rows in (1, 2, 4, 8, 16, 32) and length in buckets
    # a second run (the de-en suite, data given explicitly) and the side-by-side comparison
    assert launch_evaluate.main(["--model", str(path), "--suite", "STSb-de-en", "--data", str(suites.DEMO_DATA_ROOT),
                                 "--limit", "40", "--out", str(out_b)]) == 0
    capsys.readouterr()
    assert launch_evaluate.main(["--compare", str(out_a), str(out_b)]) == 0
    comparison = capsys.readouterr().out
    b = json.loads(out_b.read_text())
    line = next(l for l in comparison.splitlines() if l.startswith("STSb-de-en "))
    a_score, b_score = result["tasks"]["STSb-de-en"]["main_score"], b["tasks"]["STSb-de-en"]["main_score"]
    assert f"{a_score:.2f}" in line and f"{b_score - a_score:+.2f}" in line
    assert next(l for l in comparison.splitlines() if l.startswith("PAWSX-de ")).split()[-1] == "-"


def test_eval_hook(tiny_checkpoint):
    _, config, params = tiny_checkpoint
    hook = make_eval_hook("STSb-de", tokenizer=tokenizer_dir(), every_n_steps=5, limit=30)
    event = lambda step, p, last=False: StepEvent(step=step, num_steps=12, state=None, mesh=None, model_config=config,
                                                  encoder_params=lambda: p, last=last)
    assert hook(event(3, params)) is None
    first = hook(event(5, params))
    assert set(first) == {"eval/STSb-de/spearman", "eval/STSb-de/pearson", "eval/average", "eval/seconds"}
    # new parameters are swapped in without recompiling, and change the score
    shifted = jax.tree.map(lambda x: x * 1.5, params)
    second = hook(event(10, shifted))
    assert second["eval/average"] != first["eval/average"]
    final = hook(event(12, shifted, last=True))  # the last step always evaluates, whatever the cadence
    assert {k: v for k, v in final.items() if k != "eval/seconds"} == {k: v for k, v in second.items()
                                                                       if k != "eval/seconds"}
    with pytest.raises(DataError, match="missing evaluation file"):
        make_eval_hook("de", data_root="/nonexistent", tokenizer=tokenizer_dir())


def test_launch_evaluate_bad_input(tiny_checkpoint, tmp_path, capsys):
    assert launch_evaluate.main(["--model", str(tmp_path / "nope"), "--suite", "de"]) == 2
    assert f"checkpoint path {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert launch_evaluate.main(["--model", str(tiny_checkpoint[0]), "--suite", "de", "--data", str(tmp_path)]) == 2
    assert "missing evaluation file(s) under data root" in capsys.readouterr().err
    assert launch_evaluate.main(["--model", str(tiny_checkpoint[0]), "--suite", "fr"]) == 2
    assert "unknown suite 'fr'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        launch_evaluate.main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert "cannot read result file" in capsys.readouterr().err
