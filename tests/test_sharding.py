"""The encoder on an 8-device mesh with sharded parameters equals the single-device result."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from bilingual import JinaBert, get_config
from bilingual import sharding
from bilingual.training import sharded


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
    # The unsharded reference: a plain init on one device (no mesh, no logical rules), copied to the host.
    params = jax.device_get(nn.meta.unbox(jax.jit(lambda key: model.init(key, ids))(jax.random.key(0))["params"]))
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
    shardings = sharded.state_shardings(model, optax.sgd(0.1), mesh, ids).params
    sharded_params = jax.device_put(params, shardings)
    batch = sharding.batch_sharding(mesh)

    @jax.jit
    def forward(p, ids, mask):
        return model.apply({"params": p}, ids, mask)

    with sharding.sharding_context(mesh):
        out = forward(sharded_params, jax.device_put(ids, batch), jax.device_put(mask, batch))
    # Error model: the split contractions (H = 128, I = 512) add float32 partial sums in another order,
    # ~sqrt(512) * 1.2e-7 ~ 3e-6 relative per matmul on O(1) LayerNorm outputs; 2 layers -> within 1e-5.
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


def test_sharded_init_places_shards_and_equals_the_unsharded_init(setup):
    """The trainer's init (``sharded.init_state``) on a (data=2, fsdp=2, tensor=2) mesh: each device holds
    only its shard, and the gathered parameters equal a plain one-device init with the same key."""
    model, ids, _, params, _ = setup
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    state, _ = sharded.init_state(model, optax.adamw(1e-3), mesh, jax.random.key(0), ids)
    layer = state.params["encoder"]["layer_1"]
    cases = {  # parameter: (mesh spec, shape of one shard); embed -> fsdp (2), heads/mlp/vocab -> tensor (2)
        "query kernel [embed, heads]": (layer["attention"]["self"]["query"]["kernel"], ("fsdp", "tensor"), (64, 64)),
        "gated kernel [embed, mlp]": (layer["mlp"]["gated_layers"]["kernel"], ("fsdp", "tensor"), (64, 512)),
        "word table [vocab, embed]": (state.params["embeddings"]["word_embeddings"]["embedding"],
                                      ("tensor", "fsdp"), (4096, 64)),
        "LayerNorm scale [embed]": (state.params["embeddings"]["LayerNorm"]["scale"], ("fsdp",), (64,)),
    }
    for name, (array, spec, shard_shape) in cases.items():
        assert array.sharding.spec == PartitionSpec(*spec), name
        assert array.sharding.shard_shape(array.shape) == shard_shape != array.shape, name
        assert {s.data.shape for s in array.addressable_shards} == {shard_shape}, name
    # The optimiser moments are sharded like their parameters.
    mu = state.opt_state[0].mu["encoder"]["layer_1"]["attention"]["self"]["query"]["kernel"]
    assert mu.sharding.spec == PartitionSpec("fsdp", "tensor")
    # Initialisation is elementwise (partitionable threefry bits -> normal samples, no accumulation), so the
    # sharded values equal the unsharded ones bit for bit.
    gathered = jax.device_get(state.params)
    assert jax.tree.structure(gathered) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, gathered, params)


def test_indivisible_sharding_fails_naming_the_parameter():
    config = get_config("tiny", num_heads=2, hidden_size=64, intermediate_size=130, vocab_size=1001)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, tensor=4))
    with pytest.raises(ValueError, match=r"word_embeddings.*1001"):
        sharded.state_shardings(JinaBert(config), optax.sgd(0.1), mesh, jnp.zeros((1, 4), jnp.int32))


@pytest.mark.parametrize("mesh_config,match", [
    (sharding.MeshConfig(data=3), "needs 3 devices"),
    (sharding.MeshConfig(data=-1, fsdp=3), "not divisible"),
    (sharding.MeshConfig(data=-1, fsdp=-1), "at most one"),
])
def test_bad_mesh_configs(mesh_config, match):
    with pytest.raises(ValueError, match=match):
        sharding.make_mesh(mesh_config)
