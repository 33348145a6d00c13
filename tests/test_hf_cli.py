"""The export / import entry points: checkpoint -> HF directory -> checkpoint, run through their main()."""

import json
import os
import pathlib
import subprocess
import sys

import hf_testing as H
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file

from bilingual.artifacts import load_meta, load_model_tree
from bilingual.artifacts import save_model as save_encoder
from bilingual.export import hf_state
from launch import export as export_cli
from launch import import_hf as import_cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    H.train_tokenizer(base / "tokenizer")
    config = H.tiny_config(num_layers=1)
    params = H.init_params(config, masked_lm=True, seed=7)
    save_encoder(base / "mlm_ckpt", 30, config, params, model_kind="masked_lm")
    save_encoder(base / "enc_ckpt", 12, config, params["bert"], model_kind="encoder")
    return base, config, params


def _flat_equal(a, b):
    a, b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=str(key))


def test_export_import_round_trip_through_the_cli(setup, capsys):
    base, config, params = setup
    out = base / "hf_mlm"
    rc = export_cli.main(["--checkpoint", str(base / "mlm_ckpt"), "--tokenizer", str(base / "tokenizer"),
                          "--out", str(out), "--mlm_head"])
    assert rc == 0
    assert "exported step 30" in capsys.readouterr().out
    tensors = load_file(str(out / "model.safetensors"))
    expected = hf_state.to_export_state_dict(params["bert"], params["cls"])
    assert sorted(tensors) == sorted(expected)
    for name in tensors:
        np.testing.assert_array_equal(tensors[name], expected[name])

    rc = import_cli.main(["--hf", str(out), "--out", str(base / "imported"), "--step", "5"])
    assert rc == 0
    assert "masked_lm" in capsys.readouterr().out
    meta = load_meta(base / "imported")
    assert meta["model"] == "masked_lm" and meta["source_dtype"] == "float32"
    config2, _, tree = load_model_tree(base / "imported" / "5")
    assert config2.to_dict() == config.to_dict()
    _flat_equal(tree, params)


def test_encoder_export_in_float16_and_its_import(setup):
    base, config, params = setup
    out = base / "hf_enc16"
    assert export_cli.main(["--checkpoint", str(base / "enc_ckpt" / "12"), "--tokenizer", str(base / "tokenizer"),
                            "--out", str(out), "--dtype", "float16", "--auto_map", "upstream"]) == 0
    values = json.loads((out / "config.json").read_text())
    assert values["torch_dtype"] == "float16" and values["auto_map"]["AutoModel"].startswith("jinaai/")
    assert not any(k.startswith("bert.") for k in load_file(str(out / "model.safetensors")))
    assert import_cli.main(["--hf", str(out), "--out", str(base / "imported16")]) == 0
    _, _, tree = load_model_tree(base / "imported16")
    rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in traverse_util.flatten_dict(params["bert"]).items()}
    _flat_equal(tree, traverse_util.unflatten_dict(rounded))


def test_qk_post_norm_checkpoint_round_trip_through_the_cli(setup, tmp_path):
    """A base-es-style (layer_layout='qk_post_norm') checkpoint exports in the published qk-post-norm names with
    the upstream auto_map of jina-embeddings-v2-base-es, and imports back to the same config and parameters."""
    base, _, _ = setup
    config = H.tiny_config(num_layers=1, qk_layernorm=True, layer_layout="qk_post_norm")
    params = H.init_params(config, seed=8)
    save_encoder(tmp_path / "es_ckpt", 3, config, params, model_kind="encoder")
    out = tmp_path / "hf_es"
    assert export_cli.main(["--checkpoint", str(tmp_path / "es_ckpt"), "--tokenizer", str(base / "tokenizer"),
                            "--out", str(out), "--auto_map", "upstream"]) == 0
    values = json.loads((out / "config.json").read_text())
    assert values["auto_map"]["AutoModel"] == "jinaai/jina-bert-v2-qk-post-norm--modeling_bert.JinaBertModel"
    assert "encoder.layer.0.mlp.up_gated_layer.weight" in load_file(str(out / "model.safetensors"))
    assert import_cli.main(["--hf", str(out), "--out", str(tmp_path / "imported")]) == 0
    config2, _, tree = load_model_tree(tmp_path / "imported")
    assert config2.to_dict() == config.to_dict()
    _flat_equal(tree, params)


def test_export_reads_a_trainer_checkpoint(setup, tmp_path):
    """The trainer's checkpoints (extra opt_state and data items) export with the MLM head."""
    import jax.numpy as jnp
    import optax

    from bilingual.artifacts import TrainCheckpointer
    from bilingual.training.steps import TrainState

    base, config, params = setup
    state = TrainState(step=jnp.asarray(40, jnp.int32), params=params, opt_state=optax.adamw(1e-3).init(params))
    checkpointer = TrainCheckpointer(tmp_path / "run" / "checkpoints", async_save=False)
    checkpointer.save(state, {"encoder_config": config.to_dict(), "stage": "mlm", "model": "masked_lm"},
                      {"position": 7}, force=True)
    checkpointer.close()
    out = tmp_path / "hf"
    assert export_cli.main(["--checkpoint", str(tmp_path / "run" / "checkpoints"), "--tokenizer",
                            str(base / "tokenizer"), "--out", str(out), "--mlm_head"]) == 0
    tensors = load_file(str(out / "model.safetensors"))
    expected = hf_state.to_export_state_dict(params["bert"], params["cls"])
    assert sorted(tensors) == sorted(expected)
    for name in tensors:
        np.testing.assert_array_equal(tensors[name], expected[name])


def test_cli_errors(setup, capsys):
    base, _, _ = setup
    rc = export_cli.main(["--checkpoint", str(base / "enc_ckpt"), "--tokenizer", str(base / "tokenizer"),
                          "--out", str(base / "x"), "--mlm_head"])
    assert rc == 2
    assert "--mlm_head needs a masked_lm checkpoint" in capsys.readouterr().err
    rc = export_cli.main(["--checkpoint", str(base / "nothing"), "--tokenizer", str(base / "tokenizer"),
                          "--out", str(base / "x")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_import_module_runs_as_a_script(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "position_embedding_type": "absolute"}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "launch.import_hf", "--hf", str(tmp_path), "--out",
                           str(tmp_path / "ckpt")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "position_embedding_type must be 'alibi'" in proc.stderr


def test_export_in_onnx_format(setup):
    """--format onnx adds onnx/model.onnx (here from a masked-LM checkpoint: the encoder part, read from the
    bert.-prefixed names); onnxruntime matches the Flax encoder (1e-5: float32 on both sides, see
    test_onnx_export.py). A later --format hf export over it removes the then stale onnx/."""
    pytest.importorskip("onnxruntime")
    from bilingual.export.onnx_export import session

    base, config, params = setup
    out = base / "hf_onnx"
    assert export_cli.main(["--checkpoint", str(base / "mlm_ckpt"), "--tokenizer", str(base / "tokenizer"),
                            "--out", str(out), "--mlm_head", "--format", "onnx"]) == 0
    ids, mask = np.array([[0, 7, 9, 11, 2], [0, 8, 2, 1, 1]]), np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    (embedding,) = session(out / "onnx" / "model.onnx").run(["sentence_embedding"],
                                                            {"input_ids": ids, "attention_mask": mask})
    _, flax_embedding = H.flax_encoder(config, params["bert"], ids, mask)
    np.testing.assert_allclose(embedding, H.normalise(flax_embedding), atol=1e-5, rtol=0)
    assert export_cli.main(["--checkpoint", str(base / "enc_ckpt"), "--tokenizer", str(base / "tokenizer"),
                            "--out", str(out), "--overwrite"]) == 0
    assert not (out / "onnx").exists()
