"""Encoder checkpoints round-trip through orbax; broken ones are reported with the path."""

import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilingual import JinaBert, JinaBertForMaskedLM, get_config
from bilingual.checkpoints import CheckpointError, load_encoder, load_meta, save_encoder


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
