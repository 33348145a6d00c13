"""Matryoshka losses (``StepConfig.matryoshka_dims``) against numpy: the weighted sum of each loss on the
truncated embeddings; the config checks; the checkpoint meta the export reads; GradCache still equals plain."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilingual import gradcache, task_types
from bilingual.config import ConfigError, get_config
from bilingual.modeling import JinaBert
from bilingual.training import objectives, steps
from bilingual.training.steps import StepConfig
from numpy_reference import info_nce, info_nce_with_negatives, sts_loss
from train_helpers import synthetic_batch

TAU = 0.05
DIMS, WEIGHTS = (16, 8, 4), (1.0, 0.5, 0.25)


def _emb(*shape, seed):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def _keys(spec, shapes):
    from bilingual.text_identity import distinct_keys
    return {**shapes, **{k: distinct_keys(*shapes[k].shape[:-1], name=k) for k in spec.text_keys.values()}}


def test_pairs_retrieval_and_sts_losses_are_the_weighted_sum_over_prefixes():
    config = StepConfig(temperature=TAU, matryoshka_dims=DIMS, matryoshka_weights=WEIGHTS)
    q, p, n = _emb(6, 16, seed=1), _emb(6, 16, seed=2), _emb(18, 16, seed=3)
    # f32 losses of <= 24 logits of magnitude <= 20, summed over 3 sizes: rtol 1e-5 as for one loss
    pairs = task_types.get("pairs")
    batch = _keys(pairs, pairs.batch_shapes(6, {"query": 5, "passage": 5}))
    loss, metrics = pairs.embedding_loss(batch, config)({"query": q, "passage": p})
    per_dim = {d: info_nce(q[:, :d], p[:, :d], TAU) + info_nce(p[:, :d], q[:, :d], TAU) for d in DIMS}
    np.testing.assert_allclose(float(loss), sum(w * per_dim[d] for d, w in zip(DIMS, WEIGHTS)), rtol=1e-5)
    for d in DIMS:
        np.testing.assert_allclose(float(metrics[f"loss_dim{d}"]), per_dim[d], rtol=1e-5)
    assert "in_batch_accuracy" in metrics and "masked_false_negatives" in metrics

    retrieval = task_types.get("retrieval")
    batch = _keys(retrieval, retrieval.batch_shapes(6, {"query": 5, "passage": 5, "negatives": 5}, 3))
    loss, _ = retrieval.embedding_loss(batch, config)({"query": q, "passage": p, "negative": n})
    expected = sum(w * info_nce_with_negatives(q[:, :d], p[:, :d], n.reshape(6, 3, 16)[..., :d], TAU)
                   for d, w in zip(DIMS, WEIGHTS))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)

    a, b, gold = _emb(10, 16, seed=4), _emb(10, 16, seed=5), np.linspace(0, 5, 10).astype(np.float32)
    loss, _ = task_types.get("sts").embedding_loss({"score": gold}, config)({"a": a, "b": b})
    expected = sum(w * sts_loss(a[:, :d], b[:, :d], gold, "pearson") for d, w in zip(DIMS, WEIGHTS))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-6)


def test_default_weights_are_one_and_no_dims_is_the_plain_loss():
    q, p = _emb(4, 16, seed=6), _emb(4, 16, seed=7)
    pairs = task_types.get("pairs")
    batch = _keys(pairs, pairs.batch_shapes(4, {"query": 5, "passage": 5}))
    loss, _ = pairs.embedding_loss(batch, StepConfig(matryoshka_dims=[16, 8]))({"query": q, "passage": p})
    plain = lambda d: float(pairs.embedding_loss(batch, StepConfig())({"query": q[:, :d], "passage": p[:, :d]})[0])
    np.testing.assert_allclose(float(loss), plain(16) + plain(8), rtol=1e-5)
    assert StepConfig(matryoshka_dims=[16, 8]).matryoshka_dims == (16, 8)  # gin lists become tuples


@pytest.mark.parametrize("dims, weights, match", [
    ((256,), (), "matryoshka_dims.*hidden size 128"), ((64, 64), (), "repeated"), ((0,), (), "not \\[0\\]"),
    ((64, 32), (1.0,), "matryoshka_weights.*2 numbers"), ((64,), (-1.0,), "matryoshka_weights")])
def test_bad_matryoshka_config_fails_before_compiling(dims, weights, match):
    with pytest.raises(ConfigError, match=match):
        objectives.for_stage("pairs", get_config("tiny"), StepConfig(matryoshka_dims=dims, matryoshka_weights=weights))


def test_checkpoint_meta_records_the_dims_for_the_export():
    objective = objectives.for_stage("multitask", get_config("tiny"), StepConfig(matryoshka_dims=(32, 128, 64)))
    assert objective.meta == {"matryoshka_dims": [128, 64, 32]}
    assert objectives.for_stage("multitask", get_config("tiny"), StepConfig()).meta == {}


def test_gradcache_equals_plain_with_matryoshka():
    config = get_config("tiny", hidden_dropout=0.0)
    model = JinaBert(config)
    batch = jax.tree.map(jnp.asarray, synthetic_batch("pairs", batch=8, length=12, vocab=config.vocab_size))
    views = steps.contrastive_views("pairs", batch)
    params = model.init(jax.random.key(0), batch["query_ids"], batch["query_mask"])["params"]
    step_config = StepConfig(dropout=False, matryoshka_dims=(128, 32), matryoshka_weights=(1.0, 0.5))
    embed = steps.make_embed_fn(model, dropout=False)
    loss_fn = task_types.get("pairs").embedding_loss(batch, step_config)
    rng = jax.random.key(1)
    (plain, _), plain_grads = jax.jit(lambda p: gradcache.plain_value_and_grad(embed, loss_fn, p, views, rng))(params)
    (cached, _), cached_grads = jax.jit(
        lambda p: gradcache.value_and_grad(embed, loss_fn, p, views, rng, num_chunks=2))(params)
    # the same f32 forward in two chunks: loss to a few ulp, gradients to 1e-5 of their scale
    np.testing.assert_allclose(float(cached), float(plain), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(cached_grads), jax.tree.leaves(plain_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * max(1.0, float(np.abs(b).max())))
