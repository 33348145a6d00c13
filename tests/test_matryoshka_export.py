"""Matryoshka embeddings, the export and evaluation half (issue 19, point 3).

The export records ``meta["matryoshka_dims"]`` (or ``--matryoshka_dims``) in config.json
(``matryoshka_dimensions``) and the model card, and ``SentenceTransformer(dir, truncate_dim=d)`` gives the cut
embeddings; ``launch.evaluate --dims`` scores the suite at each size from one encoding of each text. An
embedding of d dimensions is the first d components of the un-normalised embedding, L2-normalised.
"""

import csv
import json

import hf_testing  # noqa: F401 (sets HF_HUB_OFFLINE before transformers is imported)
import numpy as np
import pytest
from scipy import stats

from tokenizer_fixture import tokenizer_dir, write_tiny_checkpoint

from bilingual.artifacts import save_model
from bilingual.encoder_api import Encoder
from bilingual.evaluation import suites
from bilingual.evaluation.matryoshka import NestedEmbeddings, truncate
from bilingual.export.hf_export import ExportError, export_hf
from launch import evaluate as launch_evaluate
from launch import export as export_cli

DIMS = [128, 64, 32]  # the tiny preset's hidden size is 128
TEXTS = ["Ein Mädchen bürstet sich die Haare.", "A girl is brushing her hair.", "El perro corre por el prado.",
         "Berlin", "Der Hund läuft über die Wiese, und die Sonne scheint auf die Berge am Horizont. " * 6]


def _normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same tiny encoder as a plain checkpoint, one trained "with Matryoshka" (meta dims) and one whose
    meta names a size above the hidden size."""
    base = tmp_path_factory.mktemp("matryoshka")
    config, params = write_tiny_checkpoint(base / "plain")
    save_model(base / "dims", 10, config, params, extra_meta={"matryoshka_dims": DIMS}, tokenizer=tokenizer_dir())
    save_model(base / "bad", 10, config, params, extra_meta={"matryoshka_dims": [256, 64]},
               tokenizer=tokenizer_dir())
    return base, config, params


def _export(checkpoint, out, *options):
    return export_cli.main(["--checkpoint", str(checkpoint), "--tokenizer", str(tokenizer_dir()), "--out", str(out),
                            "--name", "tiny", *options])


@pytest.fixture(scope="module")
def exports(checkpoints):
    base = checkpoints[0]
    assert _export(base / "plain", base / "out_plain") == 0
    assert _export(base / "dims", base / "out_dims") == 0
    return base / "out_plain", base / "out_dims"


def test_export_records_the_dims_in_config_json_and_the_model_card(exports, checkpoints, capsys):
    plain, dims = exports
    values = json.loads((dims / "config.json").read_text())
    assert values["matryoshka_dimensions"] == DIMS
    plain_values = json.loads((plain / "config.json").read_text())
    assert "matryoshka_dimensions" not in plain_values
    assert {k: v for k, v in values.items() if k != "matryoshka_dimensions"} == plain_values
    card = (dims / "README.md").read_text()
    assert "128, 64 and 32 dimensions" in card
    assert 'SentenceTransformer("path/to/this/directory", trust_remote_code=True, truncate_dim=32)' in card
    assert "normalize_embeddings=True" in card
    assert "atryoshka" not in (plain / "README.md").read_text()
    # Every other file is byte for byte what an export without dims writes.
    files = sorted(p.relative_to(dims) for p in dims.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(plain) for p in plain.rglob("*") if p.is_file())
    for name in files:
        if str(name) not in ("config.json", "README.md"):
            assert (dims / name).read_bytes() == (plain / name).read_bytes(), name
    # sentence-transformers gets no default truncation (its truncate_dim field would cut every load).
    assert "truncate_dim" not in json.loads((dims / "config_sentence_transformers.json").read_text())
    # --matryoshka_dims sets the sizes over the checkpoint's (recorded descending), or on a plain checkpoint.
    base = checkpoints[0]
    capsys.readouterr()
    assert _export(base / "dims", base / "out_override", "--matryoshka_dims", "16,64") == 0
    assert "matryoshka_dimensions 64,16" in capsys.readouterr().out
    assert json.loads((base / "out_override" / "config.json").read_text())["matryoshka_dimensions"] == [64, 16]
    assert _export(base / "plain", base / "out_set", "--matryoshka_dims", "32") == 0
    assert json.loads((base / "out_set" / "config.json").read_text())["matryoshka_dimensions"] == [32]


def test_sentence_transformers_truncate_dim_matches_the_encoder(exports, checkpoints):
    from sentence_transformers import SentenceTransformer

    base = checkpoints[0]
    _, out = exports
    raw = Encoder.from_checkpoint(base / "dims").encode(TEXTS, normalize=False, packing=False)
    st = SentenceTransformer(str(out), trust_remote_code=True, truncate_dim=32, device="cpu")
    assert st.truncate_dim == 32 and SentenceTransformer(str(out), trust_remote_code=True,
                                                         device="cpu").truncate_dim is None
    # Error model: test_hf_export bounds the PyTorch-vs-JAX difference of the unit-length full embedding by
    # 1e-5 per component (float32 sums over 128 hidden units and up to ~100 tokens, two engines). Cutting is
    # an exact copy. Our pipeline ends in a Normalize module, which sentence-transformers runs *before*
    # truncate_dim cuts, so `encode` gives the first d components of the unit-length full vector (norm < 1);
    # normalize_embeddings=True re-normalises after the cut, dividing by the prefix norm r = ||u[:d]|| of
    # the unit vector u: the error becomes <= 1e-5 / r (plus a few float32 ulps from the norm itself).
    unit = _normalise(raw.astype(np.float64))
    for d in (32, 64):
        kwargs = {} if d == 32 else {"truncate_dim": d}  # 32: the constructor's; 64: per call
        cut = st.encode(TEXTS, convert_to_numpy=True, **kwargs)
        assert cut.shape == (len(TEXTS), d)
        np.testing.assert_allclose(cut, unit[:, :d], atol=1e-5, rtol=0)
        assert np.all(np.linalg.norm(cut, axis=1) < 1)
        renormed = st.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True, **kwargs)
        prefix_norm = np.linalg.norm(unit[:, :d], axis=1).min()
        np.testing.assert_allclose(renormed, _normalise(raw[:, :d].astype(np.float64)),
                                   atol=1e-5 / prefix_norm + 1e-6, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(renormed, axis=1), 1.0, atol=1e-6)
    # Our own import ignores the key: the export encodes as the checkpoint does.
    np.testing.assert_allclose(Encoder.from_checkpoint(out).encode(TEXTS, packing=False), unit, atol=1e-6)


def _evaluate(capsys, *args):
    assert launch_evaluate.main(list(args)) == 0
    return capsys.readouterr().out


def test_evaluate_dims_matches_numpy_and_the_plain_run(checkpoints, exports, tmp_path, capsys):
    base = checkpoints[0]
    common = ["--suite", "STSb-de", "--limit", "40", "--max-length", "128"]
    _evaluate(capsys, "--model", str(base / "dims"), *common, "--out", str(tmp_path / "plain.json"))
    table = _evaluate(capsys, "--model", str(base / "dims"), *common, "--dims", "32,128,64",
                      "--out", str(tmp_path / "dims.json"))
    plain = json.loads((tmp_path / "plain.json").read_text())
    result = json.loads((tmp_path / "dims.json").read_text())
    assert "dims" not in plain and "by_dim" not in plain
    assert result["dims"] == [32, 128, 64] and set(result["by_dim"]) == {"32", "128", "64"}
    # The full size is the plain run, exactly; so are the top-level tasks / average.
    assert result["by_dim"]["128"]["tasks"]["STSb-de"]["metrics"] == plain["tasks"]["STSb-de"]["metrics"]
    assert result["tasks"]["STSb-de"]["metrics"] == plain["tasks"]["STSb-de"]["metrics"]
    assert result["average"] == plain["average"] and result["truncation"] == plain["truncation"]
    # One column per size, in the order given.
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("task "))
    assert header.split() == ["task", "type", "metric", "32", "128", "64"]
    row = next(line for line in lines if line.startswith("STSb-de ")).split()
    assert row[3:] == [f"{result['by_dim'][d]['tasks']['STSb-de']['main_score']:.2f}" for d in ("32", "128", "64")]

    # Independent recomputation: the TSV read with csv, the texts embedded by bilingual.Encoder (un-normalised,
    # in the single call the STS evaluator makes: the unique texts of both columns, 32 rows, 128 tokens, so the
    # same float32 vectors), cut, normalised and scored with scipy in float64.
    with open(suites.DEMO_DATA_ROOT / "stsb_multi_mt" / "de-test.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:40]
    s1, s2 = [r["sentence1"] for r in rows], [r["sentence2"] for r in rows]
    gold = [float(r["score"]) for r in rows]
    unique = list(dict.fromkeys(s1 + s2))
    raw = Encoder.from_checkpoint(base / "dims").encode(unique, batch_size=32, max_length=128, normalize=False)
    index = {t: i for i, t in enumerate(unique)}
    for d in (32, 64, 128):
        emb = _normalise(raw[:, :d].astype(np.float64))
        cosine = np.sum(emb[[index[t] for t in s1]] * emb[[index[t] for t in s2]], axis=1)
        metrics = result["by_dim"][str(d)]["tasks"]["STSb-de"]["metrics"]
        # float32 vs float64 cosines differ by ~1e-7, far below the gaps between the 40 cosines' ranks
        assert metrics["spearman"] == pytest.approx(100 * stats.spearmanr(cosine, gold).statistic, abs=1e-6)
        assert metrics["pearson"] == pytest.approx(100 * stats.pearsonr(cosine, gold).statistic, abs=1e-4)
    assert result["by_dim"]["32"]["average"] != result["by_dim"]["128"]["average"]

    # An export whose config.json lists matryoshka_dimensions evaluates as before without --dims.
    _, exported = exports
    _evaluate(capsys, "--model", str(exported), *common, "--out", str(tmp_path / "export.json"))
    from_export = json.loads((tmp_path / "export.json").read_text())
    assert "by_dim" not in from_export
    assert from_export["tasks"]["STSb-de"]["main_score"] == pytest.approx(plain["tasks"]["STSb-de"]["main_score"],
                                                                          abs=1e-3)


def test_evaluate_dims_over_every_task_type_encodes_each_text_once(checkpoints, tmp_path, capsys, monkeypatch):
    """Every evaluator type and a long-document task at two sizes; no text goes through the model twice."""
    definitions = json.loads(suites.SUITES_FILE.read_text())
    names = ["STSb-de", "Tatoeba-de-en", "XQuAD-de-de", "PAWSX-de", "SIB200-de-clustering",
             "SIB200-de-classification", "Passkey-de"]
    assert {definitions["tasks"][n]["type"] for n in names} == set(suites.MAIN_METRIC) - {"needle", "literature"}
    suites_file = tmp_path / "suites.json"
    suites_file.write_text(json.dumps({"tasks": {n: definitions["tasks"][n] for n in names},
                                       "suites": {"mix": names}}))
    encoded = []
    real_encode = Encoder.encode

    def counting_encode(self, texts, *args, **kwargs):
        encoded.extend((kwargs.get("max_length"), t) for t in texts)
        return real_encode(self, texts, *args, **kwargs)

    monkeypatch.setattr(Encoder, "encode", counting_encode)
    _evaluate(capsys, "--model", str(checkpoints[0] / "dims"), "--suite", "mix", "--suites-file", str(suites_file),
              "--limit", "40", "--max-length", "120", "--lengths", "128", "--documents", "4", "--dims", "64,16",
              "--out", str(tmp_path / "mix.json"))
    result = json.loads((tmp_path / "mix.json").read_text())
    assert encoded and len(encoded) == len(set(encoded))
    for d in ("64", "16"):
        run = result["by_dim"][d]
        assert list(run["tasks"]) == names
        assert all(np.isfinite(t["main_score"]) for t in run["tasks"].values())
        assert run["average"] == pytest.approx(np.mean([t["main_score"] for t in run["tasks"].values()]))
    assert "lengths" in result["by_dim"]["16"]["tasks"]["Passkey-de"]
    assert result["timings"]["dims_seconds"] >= 0


def test_nested_embeddings_cut_the_unnormalised_vectors():
    class Fake:
        calls = []

        def encode(self, texts, normalize=True):
            self.calls.append(list(texts))
            assert normalize is False
            return np.asarray([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]][:len(texts)], np.float32)

    nested = NestedEmbeddings(Fake())
    np.testing.assert_allclose(nested.view(2).encode(["a", "b"]), [[0.6, 0.8], [1.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(nested.view(None).encode(["a"]), [[3 / 13, 4 / 13, 12 / 13]], rtol=1e-6)
    assert Fake.calls == [["a", "b"]] and not hasattr(nested.view(1), "encode_at")
    np.testing.assert_array_equal(truncate(np.zeros((1, 3), np.float32), 2), np.zeros((1, 2)))


@pytest.mark.parametrize("value,message", [
    ("abc", "--dims: 'abc' is not an integer"), ("64,", "--dims: '' is not an integer"),
    ("0", "--dims: 0 is not a positive embedding size"), ("64,-8", "--dims: -8 is not a positive"),
    ("256", "--dims: 256 is above the model's hidden size 128"), ("64,32,64", "--dims: 64 given more than once"),
])
def test_evaluate_rejects_bad_dims(value, message, checkpoints, capsys):
    assert launch_evaluate.main(["--model", str(checkpoints[0] / "dims"), "--suite", "STSb-de", "--limit", "4",
                                 "--dims", value]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_dims_conflicts(tmp_path, capsys):
    assert launch_evaluate.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--dims", "64"]) == 2
    assert "--dims applies to a suite evaluation" in capsys.readouterr().err


@pytest.mark.parametrize("value,message", [
    ("x", "--matryoshka_dims: 'x' is not an integer"), ("0", "--matryoshka_dims: 0 is not a positive"),
    ("256", "--matryoshka_dims: 256 is above the model's hidden size 128"),
    ("64,64", "--matryoshka_dims: 64 given more than once"),
])
def test_export_rejects_bad_dims(value, message, checkpoints, tmp_path, capsys):
    assert _export(checkpoints[0] / "plain", tmp_path / "out", "--matryoshka_dims", value) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_rejects_bad_meta_dims(checkpoints, tmp_path, capsys):
    base, config, params = checkpoints
    assert _export(base / "bad", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "meta['matryoshka_dims'] of checkpoint" in err and "256 is above the model's hidden size 128" in err
    assert "pass --matryoshka_dims" in err and not (tmp_path / "out").exists()
    assert _export(base / "bad", tmp_path / "out", "--matryoshka_dims", "64") == 0  # the option overrides
    with pytest.raises(ExportError, match=r"matryoshka_dims: True is not an integer"):
        export_hf(config, params, tmp_path / "lib", tokenizer_dir=tokenizer_dir(), matryoshka_dims=[True])


def test_import_carries_the_dims_back_so_a_reexport_records_them(exports, tmp_path):
    from bilingual.artifacts import load_meta
    from launch import import_hf

    plain, dims = exports
    assert import_hf.main(["--hf", str(dims), "--out", str(tmp_path / "imported")]) == 0
    step = next(p for p in (tmp_path / "imported").iterdir() if p.name.isdigit())
    assert load_meta(step)["matryoshka_dims"] == DIMS
    assert _export(tmp_path / "imported", tmp_path / "again") == 0
    assert json.loads((tmp_path / "again" / "config.json").read_text())["matryoshka_dimensions"] == DIMS
    assert import_hf.main(["--hf", str(plain), "--out", str(tmp_path / "imported_plain")]) == 0
    step = next(p for p in (tmp_path / "imported_plain").iterdir() if p.name.isdigit())
    assert "matryoshka_dims" not in load_meta(step)
