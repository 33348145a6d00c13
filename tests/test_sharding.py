"""The encoder on an 8-device mesh with sharded parameters equals the single-device result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilingual import JinaBert, get_config
from bilingual import sharding


@pytest.fixture(scope="module")
def setup():
    assert len(jax.devices()) == 8, "tests/conftest.py must give 8 fake CPU devices"
    config = get_config("tiny", hidden_dropout=0.0)
    rng = np.random.RandomState(0)
    ids = rng.randint(5, config.vocab_size, (8, 33))
    mask = (np.arange(33)[None] < rng.randint(1, 34, (8, 1))).astype(np.int32)
    ids = jnp.asarray(np.where(mask, ids, 0))
    mask = jnp.asarray(mask)
    model = JinaBert(config)
    single_mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    params = sharding.init_sharded(model, jax.random.key(0), single_mesh, ids)
    expected = model.apply({"params": params}, ids, mask)
    return model, ids, mask, params, expected


@pytest.mark.parametrize("mesh_config", [
    sharding.MeshConfig(data=2, fsdp=4, tensor=1),
    sharding.MeshConfig(data=2, fsdp=1, tensor=4),
    sharding.MeshConfig(data=2, fsdp=2, tensor=2),
])
def test_sharded_forward_equals_single_device(setup, mesh_config):
    model, ids, mask, params, expected = setup
    mesh = sharding.make_mesh(mesh_config)
    shardings, _ = sharding.param_shardings(model, mesh, ids)
    sharded_params = jax.device_put(jax.tree.map(np.asarray, params), shardings)
    batch = sharding.batch_sharding(mesh)

    @jax.jit
    def forward(p, ids, mask):
        return model.apply({"params": p}, ids, mask)

    with sharding.sharding_context(mesh):
        out = forward(sharded_params, jax.device_put(ids, batch), jax.device_put(mask, batch))
    np.testing.assert_allclose(np.asarray(out.embedding), np.asarray(expected.embedding), atol=1e-5, rtol=0)
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(out.last_hidden_state)[valid],
                               np.asarray(expected.last_hidden_state)[valid], atol=1e-5, rtol=0)
    # The parameters really are split across devices, per the rules table.
    table = sharded_params["embeddings"]["word_embeddings"]["embedding"]
    gated = sharded_params["encoder"]["layer_0"]["mlp"]["gated_layers"]["kernel"]
    if mesh_config.tensor > 1:
        assert table.sharding.spec[0] == "tensor" and gated.sharding.spec[1] == "tensor"
        assert table.addressable_shards[0].data.shape[0] == table.shape[0] // mesh_config.tensor
    if mesh_config.fsdp > 1:
        assert gated.sharding.spec[0] == "fsdp"
    # The output stays batch-sharded: each device holds batch / (data * fsdp) rows.
    rows = out.embedding.addressable_shards[0].data.shape[0]
    assert rows == ids.shape[0] // (mesh_config.data * mesh_config.fsdp)


def test_init_sharded_places_shards_and_matches_unsharded_init(setup):
    model, ids, _, params, _ = setup
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    sharded = sharding.init_sharded(model, jax.random.key(0), mesh, ids)
    kernel = sharded["encoder"]["layer_1"]["attention"]["self"]["query"]["kernel"]
    assert kernel.sharding.spec[0] == "fsdp"
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 4, kernel.shape[1])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), sharded, params)


def test_indivisible_sharding_fails_naming_the_parameter():
    config = get_config("tiny", num_heads=2, hidden_size=64, intermediate_size=130, vocab_size=1001)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, tensor=4))
    with pytest.raises(ValueError, match=r"word_embeddings.*1001"):
        sharding.param_shardings(JinaBert(config), mesh, jnp.zeros((1, 4), jnp.int32))


@pytest.mark.parametrize("mesh_config,match", [
    (sharding.MeshConfig(data=3), "needs 3 devices"),
    (sharding.MeshConfig(data=-1, fsdp=3), "not divisible"),
    (sharding.MeshConfig(data=-1, fsdp=-1), "at most one"),
])
def test_bad_mesh_configs(mesh_config, match):
    with pytest.raises(ValueError, match=match):
        sharding.make_mesh(mesh_config)
