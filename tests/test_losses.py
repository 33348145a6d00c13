"""Losses against independent numpy implementations, and 8-device sharded equals 1-device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from scipy.special import logsumexp
from scipy.stats import pearsonr

from bilingual import losses, sharding
from numpy_reference import cosine_matrix, info_nce, info_nce_with_negatives, sts_loss

TAU = 0.05


def rand(*shape, seed=0):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def test_bidirectional_info_nce_matches_numpy():
    q, p = rand(8, 16, seed=1), rand(8, 16, seed=2)
    loss, metrics = losses.bidirectional_info_nce(jnp.asarray(q), jnp.asarray(p), TAU)
    expected = info_nce(q, p, TAU) + info_nce(p, q, TAU)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(metrics["in_batch_accuracy"]) == np.mean(np.argmax(cosine_matrix(q, p), 1) == np.arange(8))


def test_bidirectional_info_nce_perfect_pairs_have_low_loss():
    q = rand(6, 32, seed=3)
    loss, metrics = losses.bidirectional_info_nce(jnp.asarray(q), jnp.asarray(q), TAU)
    assert float(loss) < 1e-3 * 2 + 2 * np.log1p(5 * np.exp(-1 / TAU)) and float(metrics["in_batch_accuracy"]) == 1


def test_info_nce_with_negatives_matches_numpy():
    q, p, n = rand(5, 12, seed=4), rand(5, 12, seed=5), rand(5, 3, 12, seed=6)
    loss, _ = losses.info_nce_with_negatives(jnp.asarray(q), jnp.asarray(p), jnp.asarray(n), TAU)
    np.testing.assert_allclose(float(loss), info_nce_with_negatives(q, p, n, TAU), rtol=1e-5)


def test_negative_pearson_matches_scipy():
    s, t = rand(20, seed=7), np.abs(rand(20, seed=8)) * 2
    np.testing.assert_allclose(float(losses.negative_pearson(jnp.asarray(s), jnp.asarray(t))),
                               -pearsonr(s, t)[0], rtol=1e-5)


def test_sts_losses_on_embeddings():
    a, b, gold = rand(10, 8, seed=9), rand(10, 8, seed=10), np.linspace(0, 5, 10).astype(np.float32)
    pearson, metrics = losses.sts_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(gold), "pearson")
    np.testing.assert_allclose(float(pearson), sts_loss(a, b, gold, "pearson"), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["sts_pearson"]), -sts_loss(a, b, gold, "pearson"), rtol=1e-5)
    mse, _ = losses.sts_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(gold), "mse")
    np.testing.assert_allclose(float(mse), sts_loss(a, b, gold, "mse"), rtol=1e-5)
    with pytest.raises(ValueError, match="cosent"):
        losses.sts_loss(jnp.asarray(a), jnp.asarray(b), jnp.asarray(gold), "cosent")


def test_mlm_loss_matches_numpy_and_uses_every_weighted_position():
    logits = rand(2, 5, 11, seed=11)
    targets = np.random.RandomState(12).randint(0, 11, (2, 5))
    weights = np.array([[1, 0, 1, 0, 0], [0, 1, 1, 1, 0]], np.float32)
    loss, metrics = losses.mlm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    logp = logits - logsumexp(logits, axis=-1, keepdims=True)
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), (nll * weights).sum() / weights.sum(), rtol=1e-5)
    assert float(metrics["mlm_tokens"]) == 5
    zero, _ = losses.mlm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.zeros_like(jnp.asarray(weights)))
    assert float(zero) == 0.0


@pytest.mark.parametrize("name", ["pairs", "negatives", "sts"])
def test_sharded_loss_and_gradients_equal_single_device(name):
    """Batch sharded over 8 devices: the similarity matrix spans all of them (global negatives)."""
    q, p, n, gold = rand(16, 8, seed=13), rand(16, 8, seed=14), rand(16, 2, 8, seed=15), rand(16, seed=16)
    fn = {
        "pairs": lambda q, p, n, g: losses.bidirectional_info_nce(q, p)[0],
        "negatives": lambda q, p, n, g: losses.info_nce_with_negatives(q, p, n)[0],
        "sts": lambda q, p, n, g: losses.sts_loss(q, p, g)[0],
    }[name]
    grad_fn = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))
    single = grad_fn(q, p, n, gold)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=8))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    args = [put(x) for x in (q, p, n, gold)]
    assert len(args[0].addressable_shards) == 8 and args[0].addressable_shards[0].data.shape[0] == 2
    sharded = grad_fn(*args)
    np.testing.assert_allclose(float(sharded[0]), float(single[0]), rtol=1e-6)
    for a, b in zip(sharded[1], single[1]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # Not a local-only loss: with per-device batches of 2, the loss would differ.
    local = np.mean([float(fn(*(x[i:i + 2] for x in (q, p, n, gold)))) for i in range(0, 16, 2)])
    assert abs(local - float(single[0])) > 1e-3
