"""The finetune stage: host metrics against independent references, encoder initialisation, dev loss
falling on a tiny model, best-epoch selection and its checkpoint, the gin stage and the bench command
end to end (bundled data, 8 fake CPU devices)."""

import dataclasses
import json
import pathlib

import gin
import jax
import numpy as np
import pytest

from bilingual import artifacts
from bilingual.config import get_config
from bilingual.heads import HeadConfig, model_for_head
from bilingual.optim import OptimizerConfig
from bilingual.training import finetune as ft
from bilingual.config import ConfigError
from bilingual.training import objectives
from tasks import finetune_data as fd
from tokenizer_fixture import build_tokenizer, tokenizer_dir

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = get_config("tiny", vocab_size=1000, num_layers=1, hidden_size=64, num_heads=2, intermediate_size=128)


def config(task: fd.TaskSpec, **overrides) -> ft.FinetuneConfig:
    num_labels = 1 if task.head == "regression" else task.num_labels
    base = dict(model=MODEL, head=HeadConfig(task=task.head, num_labels=num_labels, pooling="mean", dropout=0.0),
                optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=0, total_steps=1, b2=0.999),
                batch_size=16, num_epochs=2, max_length=64, length_buckets=(64,))
    return ft.FinetuneConfig(**{**base, **overrides})


def small(name: str, train: int = 160, evaluation: int = 48) -> fd.TaskData:
    return fd.limit_rows(fd.load_task(fd.BENCHMARK_TASKS[name], fd.BUNDLED_DATA_ROOT), train, evaluation, evaluation)


# ------------------------------------------------------------------------------------------ metrics


def _ranks(x):
    order = np.argsort(x)
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    return ranks


def test_classification_metrics_match_hand_computation():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    labels = np.array([0, 2, 2, 1])
    m = ft.score_predictions("classification", logits, labels)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert m["accuracy"] == 0.5
    assert m["loss"] == pytest.approx(-np.mean(log_softmax[np.arange(4), labels]))
    # per class F1: class 0 (tp 1, fp 1, fn 0) 2/3; class 1 (tp 0) 0; class 2 (tp 1, fn 1) 2/3
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)


def test_regression_metrics_match_rank_correlation():
    rng = np.random.default_rng(0)
    gold = rng.random(50)
    pred = gold + 0.3 * rng.standard_normal(50)
    m = ft.score_predictions("regression", pred[:, None], gold)
    assert m["spearman"] == pytest.approx(np.corrcoef(_ranks(pred), _ranks(gold))[0, 1])
    assert m["pearson"] == pytest.approx(np.corrcoef(pred, gold)[0, 1])
    assert m["loss"] == pytest.approx(np.mean((pred - gold) ** 2))
    assert np.isnan(ft.score_predictions("regression", np.ones((5, 1)), gold[:5])["spearman"])


# ------------------------------------------------------------------------------------ initialisation


def test_merge_encoder_keeps_a_fresh_pooler_and_checks_shapes():
    head = HeadConfig(task="classification", num_labels=3, pooling="cls")
    model = model_for_head(MODEL, head)
    fresh = jax.tree.map(np.asarray, model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    fresh = __import__("flax").linen.meta.unbox(fresh)
    encoder = jax.tree.map(lambda x: np.full(x.shape, 0.5, x.dtype),
                           {k: v for k, v in fresh["bert"].items() if k != "pooler"})
    merged = objectives.merge_head_encoder(fresh, encoder)
    np.testing.assert_array_equal(merged["bert"]["embeddings"]["word_embeddings"]["embedding"], 0.5)
    np.testing.assert_array_equal(merged["bert"]["pooler"]["dense"]["kernel"], fresh["bert"]["pooler"]["dense"]["kernel"])
    np.testing.assert_array_equal(merged["classifier"]["kernel"], fresh["classifier"]["kernel"])
    wrong = jax.tree.map(lambda x: np.zeros(x.shape + (1,), x.dtype), encoder)
    with pytest.raises(ConfigError, match="do not fit the head model"):
        objectives.merge_head_encoder(fresh, wrong)


@pytest.mark.parametrize("kind", ["orbax", "hf_export"])
def test_init_from_a_checkpoint_uses_its_encoder(tmp_path, kind):
    """Learning rate ~0: the fine-tuned encoder is the one of the orbax checkpoint / HF export given."""
    from bilingual.modeling import JinaBert

    encoder = __import__("flax").linen.meta.unbox(
        JinaBert(MODEL).init(jax.random.key(7), np.zeros((1, 8), np.int32))["params"])
    if kind == "orbax":
        artifacts.save_model(tmp_path / "backbone", 1, MODEL, encoder)
    else:
        from bilingual.export.hf_export import export_hf

        export_hf(MODEL, jax.tree.map(np.asarray, encoder), tmp_path / "backbone", tokenizer_dir=tokenizer_dir())
    data = small("sib200-en", train=32, evaluation=16)
    tiny_lr = OptimizerConfig(learning_rate=1e-12, warmup_steps=0, total_steps=1)
    result = ft.finetune(config(data.spec, init_from=str(tmp_path / "backbone"), num_epochs=1, optimizer=tiny_lr),
                         tmp_path / "run", data, build_tokenizer().backend_tokenizer, report=lambda s: None)
    for path in (("embeddings", "word_embeddings", "embedding"), ("encoder", "layer_0", "mlp", "wo", "kernel")):
        got, want = result.params["bert"], encoder
        for key in path:
            got, want = got[key], want[key]
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


# ------------------------------------------------------------------------------------------ training


def test_a_few_epochs_reduce_dev_loss(tmp_path):
    data = small("sib200-en", train=160, evaluation=48)
    result = ft.finetune(config(data.spec, num_epochs=3, eval_at_start=True), tmp_path, data,
                         build_tokenizer().backend_tokenizer, report=lambda s: None)
    losses = [h["dev"]["loss"] for h in result.history]
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert min(losses[1:]) < losses[0] - 0.05, losses
    assert result.history[-1]["train_loss"] < result.history[1]["train_loss"]


def test_regression_dev_loss_falls_and_spearman_is_scored(tmp_path):
    data = small("stsb-en", train=160, evaluation=48)
    result = ft.finetune(config(data.spec, num_epochs=2, eval_at_start=True), tmp_path, data,
                         build_tokenizer().backend_tokenizer, report=lambda s: None)
    assert result.history[-1]["dev"]["loss"] < result.history[0]["dev"]["loss"]
    assert set(result.test) == {"loss", "spearman", "pearson"} and -1 <= result.test["spearman"] <= 1


def test_best_epoch_is_selected_and_its_checkpoint_kept(tmp_path, monkeypatch):
    """Dev metrics scripted to peak at epoch 2 of 3: epoch 2's parameters are kept, restored and tested."""
    scripted = iter([0.3, 0.7, 0.5])
    real = ft.score_predictions
    calls = {"dev": 0}

    def fake_score(head, logits, labels):
        metrics = real(head, logits, labels)
        if len(labels) == 48 and calls["dev"] < 3:  # the three dev evaluations come first
            calls["dev"] += 1
            metrics["accuracy"] = next(scripted)
        return metrics

    saved = {}
    original_save = artifacts.TrainCheckpointer.save

    def recording_save(self, state, meta, data_state, force=False):
        saved[meta["epoch"]] = jax.tree.map(np.asarray, state.params)
        return original_save(self, state, meta, data_state, force=force)

    monkeypatch.setattr(ft, "score_predictions", fake_score)
    monkeypatch.setattr(artifacts.TrainCheckpointer, "save", recording_save)
    data = small("sib200-en", train=64, evaluation=48)
    result = ft.finetune(config(data.spec, num_epochs=3), tmp_path, data, build_tokenizer().backend_tokenizer,
                         report=lambda s: None)
    assert result.best_epoch == 2 and sorted(saved) == [1, 2]
    assert result.dev["accuracy"] == 0.7
    steps_per_epoch = 64 // 16  # the kept step is the end of epoch 2
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2 * steps_per_epoch]
    for got, want in zip(jax.tree.leaves(result.params), jax.tree.leaves(saved[2])):
        np.testing.assert_array_equal(np.asarray(got), want)
    model_config, head, meta, params = artifacts.load_classifier(tmp_path / "checkpoints")
    assert meta["epoch"] == 2 and meta["labels"] == list(fd.SIB200_LABELS) and head.num_labels == 7
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(saved[2])):
        np.testing.assert_array_equal(got, want)
    stored = json.loads((tmp_path / "result.json").read_text())
    assert stored["best_epoch"] == 2 and len(stored["history"]) == 3
    # the probe's encoder loads like any stage's, without the head or the CLS pooler
    _, encoder = artifacts.load_encoder(tmp_path / "checkpoints")
    expected = {k: v for k, v in params["bert"].items() if k != "pooler"}
    assert sorted(encoder) == sorted(expected)
    jax.tree.map(np.testing.assert_array_equal, encoder, expected)


def test_configuration_errors_are_early(tmp_path):
    data = small("sib200-en", train=32, evaluation=16)
    tok = build_tokenizer().backend_tokenizer
    with pytest.raises(ConfigError, match="batch_size=12 is not divisible"):
        ft.finetune(config(data.spec, batch_size=12), tmp_path / "a", data, tok)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        ft.finetune(config(data.spec, batch_size=64), tmp_path / "b", data, tok)
    regression = dataclasses.replace(config(data.spec), head=HeadConfig(task="regression", num_labels=1))
    with pytest.raises(ConfigError, match="is 'classification'"):
        ft.finetune(regression, tmp_path / "c", data, tok)


# ------------------------------------------------------------------------------- gin and commands


@pytest.mark.parametrize("run", sorted((ROOT / "gin" / "runs").glob("finetune_*.gin")), ids=lambda p: p.stem)
def test_finetune_run_files_build_a_finetune_config(run, clean_gin):
    from launch import configurables

    gin.add_config_file_search_path(str(ROOT / "gin"))
    configurables.parse([str(run)], [])
    assert configurables.stage() == "finetune"
    task = configurables.finetune_task_settings() if "bench" not in run.stem else None
    spec = task["spec"] if task else fd.BENCHMARK_TASKS["stsb-de"]
    built = configurables.build_finetune(spec)
    assert isinstance(built, ft.FinetuneConfig) and built.head.task == spec.head
    assert built.num_epochs >= 1 and built.optimizer.weight_decay == 0.01


def test_launch_train_runs_the_finetune_stage(tmp_path, clean_gin, capsys):
    from launch import train

    train.main(["--gin_file", str(ROOT / "gin" / "runs" / "finetune_demo_sib200_de.gin"),
                "--workdir", str(tmp_path / "run"),
                "--gin_bindings", "FinetuneConfig.init_from = None",
                "--gin_bindings", f"finetune_task.tokenizer_dir = '{tokenizer_dir()}'",
                "--gin_bindings", f"finetune_task.data_root = '{fd.BUNDLED_DATA_ROOT}'",
                "--gin_bindings", "encoder.vocab_size = 1000",
                "--gin_bindings", "encoder.num_layers = 1",
                "--gin_bindings", "FinetuneConfig.num_epochs = 1",
                "--gin_bindings", "FinetuneConfig.max_length = 64",
                "--gin_bindings", "FinetuneConfig.batch_size = 64"])
    assert "done: best dev epoch 1; test accuracy" in capsys.readouterr().out
    assert (tmp_path / "run" / "operative_config.gin").exists()
    assert json.loads((tmp_path / "run" / "result.json").read_text())["task"] == "sib200-de"

    # the probe checkpoint exports through the same CLI as encoders, as a sequence classifier
    from bilingual.export.hf_classifier import import_classifier
    from launch import export

    assert export.main(["--checkpoint", str(tmp_path / "run" / "checkpoints"), "--tokenizer", str(tokenizer_dir()),
                        "--out", str(tmp_path / "export")]) == 0
    _, head, params, labels = import_classifier(tmp_path / "export")
    _, kept_head, meta, kept = artifacts.load_classifier(tmp_path / "run" / "checkpoints")
    assert head == kept_head and labels == meta["labels"] and len(labels) == 7
    jax.tree.map(np.testing.assert_array_equal, params, jax.tree.map(np.asarray, kept))
    # the probe's encoder loads like any stage's: no classifier, and no pooler (the CLS head added it)
    assert head.pooling == "cls" and "pooler" in kept["bert"]
    _, encoder = artifacts.load_encoder(tmp_path / "run" / "checkpoints")
    assert sorted(encoder) == sorted(k for k in kept["bert"] if k != "pooler")


def test_bench_command_compares_two_backbones(tmp_path, clean_gin, capsys):
    from bilingual.modeling import JinaBert
    from launch import finetune_bench

    model = get_config("tiny", vocab_size=1000, num_layers=1)
    encoder = __import__("flax").linen.meta.unbox(
        JinaBert(model).init(jax.random.key(3), np.zeros((1, 8), np.int32))["params"])
    artifacts.save_model(tmp_path / "backbone", 5, model, encoder)
    report = finetune_bench.main([
        "--backbone", str(tmp_path / "backbone"), "--compare", "untrained:tiny", "--tokenizer", str(tokenizer_dir()),
        "--tasks", "sib200-en2de", "stsb-es", "--epochs", "1", "--data_root", str(fd.BUNDLED_DATA_ROOT),
        "--max_train_rows", "64", "--max_dev_rows", "32", "--max_test_rows", "32", "--workdir", str(tmp_path / "bench"),
        "--gin_bindings", "FinetuneConfig.batch_size = 16", "--gin_bindings", "FinetuneConfig.max_length = 64",
        "--export"])
    out = capsys.readouterr().out
    labels = list(report["results"])
    assert labels == ["backbone", "untrained:tiny"]
    assert "sib200-en2de   en->de  accuracy" in out and "stsb-es        es      spearman" in out and "delta" in out
    for label in labels:
        for task in ("sib200-en2de", "stsb-es"):
            row = report["results"][label][task]
            assert -100 <= row["score"] <= 100 and row["rows"] == {"train": 64, "dev": 32, "test": 32}
            assert pathlib.Path(row["checkpoint"]).is_dir()
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    delta = saved["results"]["backbone"]["stsb-es"]["score"] - saved["results"]["untrained:tiny"]["stsb-es"]["score"]
    assert f"{delta:+7.1f}" in out.splitlines()[[i for i, l in enumerate(out.splitlines()) if l.startswith("stsb-es")][0]]

    # --export wrote each probe in the reference layout; it reads back to the kept checkpoint's parameters
    from bilingual.export.hf_classifier import import_classifier

    export = tmp_path / "bench" / "backbone" / "sib200-en2de" / "export"
    _, head, params, labels = import_classifier(export)
    assert labels == list(fd.SIB200_LABELS) and head.pooling == "mean" and head.num_labels == 7
    _, _, _, kept = artifacts.load_classifier(report["results"]["backbone"]["sib200-en2de"]["checkpoint"])
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(kept)):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_bench_learning_rate_sweep_keeps_the_best_dev_run(tmp_path, clean_gin, capsys):
    from launch import finetune_bench

    report = finetune_bench.main([
        "--backbone", "untrained:tiny", "--tokenizer", str(tokenizer_dir()), "--tasks", "stsb-es", "--epochs", "1",
        "--learning_rates", "1e-5,1e-3", "--data_root", str(fd.BUNDLED_DATA_ROOT), "--max_train_rows", "64",
        "--max_dev_rows", "32", "--max_test_rows", "32", "--workdir", str(tmp_path / "bench"),
        "--gin_bindings", "FinetuneConfig.batch_size = 16", "--gin_bindings", "FinetuneConfig.max_length = 64",
        "--gin_bindings", "encoder.num_layers = 1"])
    row = report["results"]["untrained:tiny"]["stsb-es"]
    sweep = row["sweep"]
    assert sorted(sweep) == ["0.001", "1e-05"]
    best = max(sweep, key=lambda r: sweep[r]["dev"])
    assert row["learning_rate"] == float(best) and row["score"] == sweep[best]["test"]
    assert row["checkpoint"].endswith(f"lr_{best}/checkpoints") and pathlib.Path(row["checkpoint"]).is_dir()
    assert "best dev epoch and learning rate (1e-05, 0.001)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        finetune_bench.parse_args(["--backbone", "untrained:tiny", "--learning_rates", "fast"])
