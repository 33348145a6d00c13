"""Artifacts: checkpoints of every kind round-trip through orbax, HF exports load through the same call,
the tokenizer travels with every checkpoint, and broken or mismatched ones are reported with the path."""

import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilingual import JinaBert, JinaBertForMaskedLM, get_config
from bilingual import artifacts
from bilingual.artifacts import CheckpointError, load_encoder, load_meta
from bilingual.artifacts import save_model as save_encoder
from bilingual.config import ConfigError
from tokenizer_fixture import tokenizer_dir


def params_of(model_cls, config):
    return nn.meta.unbox(model_cls(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])


def test_round_trip_latest_step(tmp_path):
    config = get_config("tiny", vocab_size=512)
    params = params_of(JinaBert, config)
    save_encoder(tmp_path, 3, config, jax.tree.map(lambda x: x * 0, params))
    save_encoder(tmp_path, 7, config, params, extra_meta={"stage": "pairs"})
    loaded_config, loaded = load_encoder(tmp_path)
    assert loaded_config == config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, loaded)
    assert load_meta(tmp_path)["stage"] == "pairs"
    _, older = load_encoder(tmp_path / "3")
    assert all(np.all(x == 0) for x in jax.tree.leaves(older))


def test_masked_lm_checkpoint_gives_the_encoder_part(tmp_path):
    config = get_config("tiny", vocab_size=512)
    params = params_of(JinaBertForMaskedLM, config)
    save_encoder(tmp_path, 1, config, params, model_kind="masked_lm")
    _, loaded = load_encoder(tmp_path)
    assert set(loaded) == set(params["bert"])


def test_missing_and_damaged_checkpoints_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no finished checkpoint"):
        load_encoder(tmp_path)
    config = get_config("tiny", vocab_size=512)
    save_encoder(tmp_path, 2, config, params_of(JinaBert, config))
    shutil.rmtree(tmp_path / "2" / "model")
    with pytest.raises(CheckpointError, match=str(tmp_path / "2")):
        load_encoder(tmp_path)


def test_an_existing_step_is_refused_not_silently_kept(tmp_path):
    config = get_config("tiny", vocab_size=512)
    save_encoder(tmp_path, 1, config, params_of(JinaBert, config))
    with pytest.raises(CheckpointError, match="already exists"):
        save_encoder(tmp_path, 1, config, params_of(JinaBert, config))


def test_the_tokenizer_is_recorded_with_the_checkpoint(tmp_path):
    from bilingual import Encoder

    config = get_config("tiny", vocab_size=1000)
    save_encoder(tmp_path / "ckpt", 4, config, params_of(JinaBert, config), tokenizer=tokenizer_dir())
    assert load_meta(tmp_path / "ckpt")["tokenizer"] == "tokenizer"
    copied = tmp_path / "ckpt" / "tokenizer" / "tokenizer.json"
    assert copied.read_bytes() == (tokenizer_dir() / "tokenizer.json").read_bytes()
    assert artifacts.find_tokenizer(tmp_path / "ckpt" / "4") == tmp_path / "ckpt" / "tokenizer"
    encoder = Encoder.from_checkpoint(tmp_path / "ckpt")  # no tokenizer given: the recorded one
    assert encoder.encode(["Ein Hund."]).shape == (1, config.hidden_size)


def test_hf_exports_and_orbax_checkpoints_load_through_one_call(tmp_path):
    from bilingual.export.hf_export import export_hf

    config = get_config("tiny", vocab_size=1000)
    params = params_of(JinaBert, config)
    export_hf(config, jax.tree.map(np.asarray, params), tmp_path / "hf", tokenizer_dir=tokenizer_dir())
    assert artifacts.is_hf_directory(tmp_path / "hf") and not artifacts.is_hf_directory(tmp_path)
    loaded_config, loaded = load_encoder(tmp_path / "hf")
    assert loaded_config.architecture_differences(config) == {}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, loaded)


def test_a_different_architecture_names_the_key_and_the_fields(tmp_path):
    config = get_config("tiny", vocab_size=512)
    save_encoder(tmp_path, 1, config, params_of(JinaBert, config))
    with pytest.raises(ConfigError, match=r"TrainConfig.init_from=.*'num_layers': \(2, 1\)"):
        artifacts.load_matching_encoder(tmp_path, config.replace(num_layers=1), "TrainConfig.init_from")
    # fields outside the architecture (dropout, dtype, attention) may differ between stages
    assert artifacts.load_matching_encoder(tmp_path, config.replace(hidden_dropout=0.3), "k") is not None
