"""The trainer: resume equals uninterrupted, stage chaining, checkpoints, SIGTERM, early config errors,
hooks that own their cadence (the last step always evaluates), stable TensorBoard names."""

import os
import pathlib
import signal

import jax
import numpy as np
import pytest

from bilingual import get_config, sharding
from bilingual.artifacts import CheckpointError, load_encoder, load_meta
from bilingual.config import ConfigError
from bilingual.optim import OptimizerConfig
from bilingual.training import steps
from bilingual.training.hooks import EvalHook
from bilingual.training.trainer import TrainConfig, train
from tokenizer_fixture import tokenizer_dir
from train_helpers import SyntheticBatches

MODEL = get_config("tiny", vocab_size=512, num_layers=1)


def config(stage="pairs", **overrides):
    base = dict(stage=stage, model=MODEL, num_steps=6, batch_size=8,
                optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=2, total_steps=6),
                mesh=sharding.MeshConfig(data=4, fsdp=2), log_every=2, checkpoint_every=2,
                peak_flops_per_device=1e11, step=steps.StepConfig(max_predictions=8))
    base.update(overrides)
    return TrainConfig(**base)


def scalars(logdir) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of the TensorBoard event files in ``logdir`` (read with tensorboard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    events.Reload()
    return {tag: {e.step: float(np.asarray(__import__("tensorflow").make_ndarray(e.tensor_proto))) for e in
                  events.Tensors(tag)} for tag in events.Tags()["tensors"]}


def params_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_resume_after_interruption_is_bit_exact(tmp_path):
    full = train(config("mlm"), tmp_path / "full", SyntheticBatches(["mlm"]))
    interrupted = train(config("mlm"), tmp_path / "resumed", SyntheticBatches(["mlm"]), stop_after=3)
    assert int(interrupted.state.step) == 3
    resumed = train(config("mlm"), tmp_path / "resumed", SyntheticBatches(["mlm"]))
    assert int(resumed.state.step) == 6
    params_equal(resumed.state.params, full.state.params)
    # The data position came back from the checkpoint: the resumed run consumed batches 3..5 only.
    assert [h["step"] for h in resumed.history] == [4, 6]


def test_rbg_dropout_key_resumes_bit_exact_and_draws_other_dropout(tmp_path):
    """``TrainConfig.dropout_prng='rbg'`` (the TPU MLM run files): the step keys are RngBitGenerator keys, still
    folded in by step, so resuming is bit-exact on the (data 4, fsdp 2) mesh; the dropout masks differ from
    threefry's (the tiny preset has hidden dropout 0.1), so after 4 steps the parameters differ."""
    run = config("mlm", num_steps=4, dropout_prng="rbg")
    full = train(run, tmp_path / "full", SyntheticBatches(["mlm"]))
    train(run, tmp_path / "resumed", SyntheticBatches(["mlm"]), stop_after=2)
    resumed = train(run, tmp_path / "resumed", SyntheticBatches(["mlm"]))
    params_equal(resumed.state.params, full.state.params)
    threefry = train(config("mlm", num_steps=4), tmp_path / "threefry", SyntheticBatches(["mlm"]))
    differences = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()),
                                               full.state.params, threefry.state.params))
    assert max(differences) > 1e-4  # Adam steps of lr 1e-3 on other dropout masks; equal keys would give 0


def test_multitask_stage_from_previous_stage_with_logs(tmp_path):
    pairs = train(config("pairs", num_steps=2), tmp_path / "pairs", SyntheticBatches(["pairs"]),
                  operative_config="# gin\n")
    batches = SyntheticBatches(["pairs", "retrieval", "sts"])
    run = config("multitask", num_steps=6, init_from=str(tmp_path / "pairs" / "checkpoints"))
    result = train(run, tmp_path / "multi", batches)
    assert int(result.state.step) == 6
    # Each logging window of 2 steps saw two task types; every task type's loss is logged on its own.
    logged = set().union(*result.history)
    assert {"pairs/loss", "retrieval/loss", "sts/loss"} <= logged
    assert all(np.isfinite(v) for h in result.history for k, v in h.items() if k.endswith("loss"))
    assert list(pathlib.Path(tmp_path / "multi" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "pairs" / "operative_config.gin").read_text() == "# gin\n"
    # Starting point was the pairs checkpoint: the multitask run's step-0 parameters equal it.
    start = train(config("multitask", num_steps=1, optimizer=OptimizerConfig(learning_rate=1e-30, warmup_steps=0,
                                                                                total_steps=1),
                         init_from=str(tmp_path / "pairs" / "checkpoints")),
                  tmp_path / "probe", SyntheticBatches(["pairs"]))
    _, pairs_params = load_encoder(tmp_path / "pairs" / "checkpoints")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=1e-12), start.state.params,
                 pairs_params)
    _, exported = load_encoder(tmp_path / "multi" / "checkpoints")
    params_equal(result.state.params, exported)


def test_eval_hook_runs_every_n_steps_and_at_the_last_step(tmp_path):
    calls = []
    hook = EvalHook(lambda step, cfg, params: calls.append((step, cfg.hidden_size, sorted(params))) or {"m": 0.5},
                    every_n_steps=2)
    train(config("mlm", num_steps=5), tmp_path, SyntheticBatches(["mlm"]), hooks=[hook])
    # 5 is not a multiple of 2: the final evaluation still runs; the MLM head is not passed to evaluation
    assert calls == [(2, 128, ["embeddings", "encoder"]), (4, 128, ["embeddings", "encoder"]),
                     (5, 128, ["embeddings", "encoder"])]
    assert scalars(tmp_path / "tensorboard")["eval/m"] == {2: 0.5, 4: 0.5, 5: 0.5}


def test_the_suite_hook_evaluates_the_final_step_under_one_prefix(tmp_path):
    """The real evaluation hook through ``launch``'s factory: final step evaluated, tags ``eval/<task>/...``."""
    from launch import data_factory

    hooks = data_factory.make_eval_hooks({"suite": "STSb-de", "tokenizer_dir": str(tokenizer_dir()),
                                          "limit": 16}, every_n_steps=2)
    model = get_config("tiny", vocab_size=1000, num_layers=1)
    train(config("pairs", model=model, num_steps=3), tmp_path, SyntheticBatches(["pairs"], vocab=1000), hooks=hooks)
    logged = scalars(tmp_path / "tensorboard")
    assert set(logged["eval/STSb-de/spearman"]) == {2, 3} and set(logged["eval/average"]) == {2, 3}
    assert not [tag for tag in logged if tag.startswith("eval/eval/")]


def test_multitask_metric_names_do_not_depend_on_the_log_window(tmp_path):
    """Windows of one task type and of several write the same tags: ``loss`` and ``<task_type>/<name>``."""
    run = config("multitask", num_steps=6, log_every=2)
    train(run, tmp_path, SyntheticBatches(["pairs", "pairs", "retrieval", "sts", "sts", "sts"]))
    logged = scalars(tmp_path / "tensorboard")
    assert set(logged["loss"]) == {2, 4, 6}
    assert set(logged["pairs/loss"]) == {2} and set(logged["retrieval/loss"]) == {4}
    assert set(logged["sts/loss"]) == {4, 6} and set(logged["sts/sts_pearson"]) == {4, 6}
    # the window loss is the mean of its steps' losses, whatever their task types
    assert logged["loss"][4] == pytest.approx((logged["retrieval/loss"][4] + logged["sts/loss"][4]) / 2, rel=1e-6)


def test_schedule_length_defaults_to_num_steps_and_the_tokenizer_is_recorded(tmp_path):
    run = config("pairs", num_steps=4, tokenizer=str(tokenizer_dir()),
                 optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=1), model=get_config("tiny", vocab_size=1000,
                                                                                              num_layers=1))
    result = train(run, tmp_path, SyntheticBatches(["pairs"], vocab=1000))
    # warmup to the peak at step 1, then linear decay reaching 0 at step 4 (logged: the rate of the last update)
    assert [h["learning_rate"] for h in result.history] == pytest.approx([1e-3, 1e-3 / 3], rel=1e-6)
    assert load_meta(tmp_path / "checkpoints")["tokenizer"] == "tokenizer"
    assert (tmp_path / "checkpoints" / "tokenizer" / "tokenizer.json").is_file()
    with pytest.raises(ConfigError, match="has .* tokens, more than encoder.vocab_size=512"):
        train(config("pairs", tokenizer=str(tokenizer_dir())), tmp_path / "small", SyntheticBatches(["pairs"]))


def test_sigterm_saves_and_stops(tmp_path):
    def send(position):
        if position == 3:
            os.kill(os.getpid(), signal.SIGTERM)
    result = train(config("pairs"), tmp_path, SyntheticBatches(["pairs"], on_batch=send))
    assert int(result.state.step) == 3
    assert (tmp_path / "checkpoints" / "3").is_dir()


def test_damaged_checkpoint_is_reported_not_loaded(tmp_path):
    train(config("pairs", num_steps=2), tmp_path, SyntheticBatches(["pairs"]))
    for f in (tmp_path / "checkpoints" / "2" / "model").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"\0" * 7)
    with pytest.raises(CheckpointError, match=str(tmp_path / "checkpoints" / "2")):
        train(config("pairs", num_steps=4), tmp_path, SyntheticBatches(["pairs"]))


@pytest.mark.parametrize("overrides,match", [
    (dict(stage="finetune-all"), "stage"),
    (dict(batch_size=6), "not divisible by the data-parallel size 8"),
    (dict(step=steps.StepConfig(gradcache_chunks=3)), "gradcache_chunks=3"),
    (dict(init_from="/nonexistent/checkpoints"), "init_from"),
    (dict(step=steps.StepConfig(sts_loss="cosent")), "sts_loss"),
    (dict(dropout_prng="philox"), "TrainConfig.dropout_prng='philox'"),
])
def test_configurations_that_cannot_work_fail_before_compiling(tmp_path, overrides, match):
    batches = SyntheticBatches(["pairs"])
    with pytest.raises(ConfigError, match=match):
        train(config(**overrides), tmp_path, batches)
    assert batches.position == 0  # failed before reading data or compiling


def test_batch_of_the_wrong_task_type_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="task type 'sts'"):
        train(config("pairs"), tmp_path, SyntheticBatches(["sts"]))


def test_stage_starts_from_a_hugging_face_export(tmp_path):
    """init_from may point at an exported (or published-layout) Hugging Face directory."""
    from bilingual.export.hf_export import export_hf
    from tokenizer_fixture import build_tokenizer

    build_tokenizer(500).save_pretrained(str(tmp_path / "tokenizer"))  # fits MODEL's 512-row table
    first = train(config("pairs", num_steps=2), tmp_path / "pairs", SyntheticBatches(["pairs"]))
    export = export_hf(MODEL, jax.tree.map(np.asarray, first.state.params), tmp_path / "hf",
                       tokenizer_dir=tmp_path / "tokenizer")
    tiny_lr = OptimizerConfig(learning_rate=1e-30, warmup_steps=0, total_steps=1, weight_decay=0.0)
    probe = train(config("pairs", num_steps=1, optimizer=tiny_lr, init_from=str(export)), tmp_path / "probe",
                  SyntheticBatches(["pairs"]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-12),
                 probe.state.params, first.state.params)
