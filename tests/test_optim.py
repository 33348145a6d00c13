"""The optimiser: warmup/decay schedules, weight decay only on kernels and embeddings, clipping."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from bilingual import JinaBert, get_config
from bilingual.optim import OptimizerConfig, decay_mask, make_optimizer, make_schedule


@pytest.mark.parametrize("decay,expected", [
    ("linear", {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.55, 100: 0.1}),
    ("cosine", {0: 0.0, 10: 1.0, 55: 0.55, 100: 0.1}),
    ("constant", {0: 0.0, 10: 1.0, 100: 1.0}),
])
def test_schedules(decay, expected):
    schedule = make_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10, total_steps=100, decay=decay,
                                             end_lr_ratio=0.1))
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, abs=1e-6), (decay, step)


def test_weight_decay_skips_layernorm_and_biases():
    params = nn.meta.unbox(JinaBert(get_config("tiny", vocab_size=64)).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    mask = traverse_util.flatten_dict(decay_mask(params))
    assert mask[("embeddings", "word_embeddings", "embedding")]
    assert mask[("encoder", "layer_0", "mlp", "gated_layers", "kernel")]
    assert not mask[("encoder", "layer_0", "mlp", "wo", "bias")]
    assert not mask[("encoder", "layer_0", "attention", "output", "LayerNorm", "scale")]
    assert not mask[("embeddings", "LayerNorm", "bias")]
    # With zero gradients only decayed parameters move: lr * wd * value.
    tx = make_optimizer(OptimizerConfig(learning_rate=0.1, warmup_steps=0, total_steps=10, decay="constant",
                                        weight_decay=0.5))
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    flat_updates, flat_params = traverse_util.flatten_dict(updates), traverse_util.flatten_dict(params)
    for path, update in flat_updates.items():
        expected = -0.1 * 0.5 * np.asarray(flat_params[path]) if mask[path] else 0.0
        np.testing.assert_allclose(np.asarray(update), expected, atol=1e-7, err_msg=str(path))


def test_gradients_are_clipped_to_the_global_norm():
    tx = make_optimizer(OptimizerConfig(learning_rate=1.0, warmup_steps=0, total_steps=10, decay="constant",
                                        weight_decay=0.0, max_grad_norm=1.0))
    params = {"w": {"kernel": jnp.zeros(4)}}
    state = tx.init(params)
    big = {"w": {"kernel": jnp.full(4, 100.0)}}
    clipped = optax.clip_by_global_norm(1.0).update(big, optax.clip_by_global_norm(1.0).init(params))[0]
    assert float(optax.global_norm(clipped)) == pytest.approx(1.0, rel=1e-5)
    updates, _ = tx.update(big, state, params)
    assert np.all(np.isfinite(np.asarray(updates["w"]["kernel"])))


@pytest.mark.parametrize("kwargs,match", [(dict(decay="step"), "decay"), (dict(warmup_steps=20, total_steps=10), "warmup"),
                                          (dict(learning_rate=0.0), "learning_rate")])
def test_bad_optimizer_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimizerConfig(**kwargs)
