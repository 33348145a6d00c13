"""The optimiser: warmup/decay schedules, weight decay only on kernels and embeddings, clipping + AdamW
against a numpy reference."""

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
        # Error model: float32 schedule values in [0, 1], a few ops each: round-off ~1e-7 << 1e-6.
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
        # Error model: one float32 product lr * wd * p with |p| <~ 1 (LayerNorm scale 1): round-off <= 6e-8.
        np.testing.assert_allclose(np.asarray(update), expected, atol=1e-7, err_msg=str(path))


def _numpy_clip_adamw(params, grads_per_step, *, lr, warmup, total, end_ratio, b1, b2, eps, wd, max_norm,
                      decayed, clip=True):
    """Global-norm clipping then AdamW, written out in float64 from the papers (Pascanu et al. 2013;
    Loshchilov & Hutter 2019, decoupled decay ``lr * wd * p``), with the linear warmup/decay schedule.
    ``decayed``: the names that get weight decay."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for count, grads in enumerate(grads_per_step):  # count: updates done so far (0 for the first)
        g = {k: np.asarray(x, np.float64) for k, x in grads.items()}
        norm = np.sqrt(sum(np.sum(x ** 2) for x in g.values()))
        if clip and norm > max_norm:
            g = {k: x * (max_norm / norm) for k, x in g.items()}
        if count < warmup:
            rate = lr * count / warmup
        else:
            rate = lr + (lr * end_ratio - lr) * min(count - warmup, total - warmup) / (total - warmup)
        t = count + 1
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            step = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
            p[k] = p[k] - rate * (step + (wd * p[k] if k in decayed else 0.0))
    return p


def test_clipping_and_adamw_match_a_numpy_reference():
    settings = dict(lr=0.1, warmup=2, total=10, end_ratio=0.1, b1=0.9, b2=0.98, eps=1e-6, wd=0.01, max_norm=1.0)
    tx = make_optimizer(OptimizerConfig(
        learning_rate=settings["lr"], warmup_steps=settings["warmup"], total_steps=settings["total"],
        decay="linear", end_lr_ratio=settings["end_ratio"], weight_decay=settings["wd"], b1=settings["b1"],
        b2=settings["b2"], eps=settings["eps"], max_grad_norm=settings["max_norm"]))
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)},
              "LayerNorm": {"scale": 1 + 0.1 * rng.normal(size=4)}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    # Global norms 40, 0.5, 300, 5, 80: all but the second far above max_grad_norm = 1, and unequal, so the
    # clipped and unclipped gradient histories differ in direction-weighting (Adam alone is scale-invariant
    # only for a constant factor). One below the threshold checks that small gradients pass unscaled.
    grads = []
    for scale in (40.0, 0.5, 300.0, 5.0, 80.0):
        tree = jax.tree.map(lambda x: rng.normal(size=x.shape), params)
        tree = jax.tree.map(lambda x: x * scale / float(optax.global_norm(tree)), tree)
        grads.append(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree))
    state, got = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, got)
        got = optax.apply_updates(got, updates)
    flat = lambda tree: {"/".join(k): np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(tree).items()}
    reference = dict(params=flat(params), grads_per_step=[flat(g) for g in grads], decayed={"dense/kernel"})
    expected = _numpy_clip_adamw(reference["params"], reference["grads_per_step"], **settings,
                                 decayed=reference["decayed"])
    unclipped = _numpy_clip_adamw(reference["params"], reference["grads_per_step"], **settings,
                                  decayed=reference["decayed"], clip=False)
    got = flat(got)
    # Error model: each float32 update carries ~1e-7 relative round-off of its size (<= lr = 0.1 per element,
    # Adam's normalised step is O(1)); 5 steps -> <= 5 * 0.1 * 1e-6 with margin, on O(1) parameters: 1e-6.
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    # The test has teeth: without clipping the parameters would end up measurably elsewhere.
    assert max(np.max(np.abs(unclipped[k] - expected[k])) for k in expected) > 1e-2


@pytest.mark.parametrize("kwargs,match", [(dict(decay="step"), "decay"), (dict(warmup_steps=20, total_steps=10), "warmup"),
                                          (dict(learning_rate=0.0), "learning_rate")])
def test_bad_optimizer_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptimizerConfig(**kwargs)
