"""Fine-tuning heads: shapes, pooling and output layers against numpy, losses against numpy, parameter
handling, config validation, sharding, and a few AdamW steps that must learn a separable task."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import log_softmax

from bilingual import JinaBert, get_config, sharding
from bilingual.config import ConfigError
from bilingual.training import sharded
from bilingual.heads import (
    MASKED_LOGIT, HeadConfig, HeadError, JinaBertForQuestionAnswering, JinaBertForSequenceClassification,
    JinaBertForTokenClassification, classification_loss, init_head_params, loss_for_head, merge_encoder_params,
    model_for_head, regression_loss, span_loss, token_classification_loss)

CONFIG = get_config("tiny", num_layers=1, vocab_size=256, hidden_dropout=0.1)
LENGTHS = [9, 5, 1]


def batch(length=9, lengths=LENGTHS, seed=0, vocab=256):
    rng = np.random.RandomState(seed)
    mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids = np.where(mask, rng.randint(5, vocab, (len(lengths), length)), 0)
    types = np.where(np.arange(length)[None, :] >= 3, 1, 0) * mask  # a packed pair: second segment type 1
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask), jnp.asarray(types, jnp.int32)


def perturbed(params, seed=3, scale=0.1):
    """Non-trivial biases (they initialise to zero) so the numpy comparisons see every parameter."""
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.RandomState(seed)
    return jax.tree.unflatten(treedef, [x + scale * rng.randn(*x.shape).astype(np.float32) for x in leaves])


def last_hidden(params, head, ids, mask, types):
    config = CONFIG.replace(add_pooler=head.uses_pooler)
    return np.asarray(JinaBert(config).apply({"params": params["bert"]}, ids, mask, types).last_hidden_state,
                      np.float64)


HEADS = [
    HeadConfig("classification", num_labels=3, pooling="cls"),
    HeadConfig("classification", num_labels=3, pooling="mean"),
    HeadConfig("regression", num_labels=1, pooling="cls"),
    HeadConfig("regression", num_labels=1, pooling="mean"),
    HeadConfig("token_classification", num_labels=5),
    HeadConfig("question_answering"),
]


@pytest.mark.parametrize("head", HEADS, ids=lambda h: f"{h.task}-{h.pooling}")
def test_shapes_and_parameter_tree(head):
    model = model_for_head(CONFIG, head)
    params = init_head_params(model, jax.random.key(0))
    ids, mask, types = batch()
    out = model.apply({"params": params}, ids, mask, types)
    out_name = "qa_outputs" if head.task == "question_answering" else "classifier"
    assert set(params) == {"bert", out_name}
    assert params[out_name]["kernel"].shape == (CONFIG.hidden_size, head.num_outputs)
    assert params[out_name]["bias"].shape == (head.num_outputs,)
    assert ("pooler" in params["bert"]) == head.uses_pooler
    if head.uses_pooler:
        assert params["bert"]["pooler"]["dense"]["kernel"].shape == (CONFIG.hidden_size, CONFIG.hidden_size)
    if head.task in ("classification", "regression"):
        assert isinstance(model, JinaBertForSequenceClassification)
        assert out.shape == (3, head.num_labels) and out.dtype == jnp.float32
    elif head.task == "token_classification":
        assert isinstance(model, JinaBertForTokenClassification)
        assert out.shape == (3, 9, head.num_labels) and out.dtype == jnp.float32
    else:
        assert isinstance(model, JinaBertForQuestionAnswering)
        start, end = out
        assert start.shape == end.shape == (3, 9) and start.dtype == end.dtype == jnp.float32


@pytest.mark.parametrize("head", HEADS[:4], ids=lambda h: f"{h.task}-{h.pooling}")
def test_sequence_head_equals_numpy_from_last_hidden_state(head):
    model = model_for_head(CONFIG, head)
    params = perturbed(init_head_params(model, jax.random.key(1)))
    ids, mask, types = batch()
    logits = np.asarray(model.apply({"params": params}, ids, mask, types))
    h = last_hidden(params, head, ids, mask, types)
    if head.pooling == "cls":
        dense = params["bert"]["pooler"]["dense"]
        pooled = np.tanh(h[:, 0] @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"]))
    else:
        m = np.asarray(mask, np.float64)[..., None]
        pooled = (h * m).sum(1) / m.sum(1)
    expected = pooled @ np.asarray(params["classifier"]["kernel"], np.float64) + params["classifier"]["bias"]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sequence_logits_ignore_padding(pooling):
    head = HeadConfig("classification", num_labels=3, pooling=pooling)
    model = model_for_head(CONFIG, head)
    params = perturbed(init_head_params(model, jax.random.key(2)))
    ids, mask, types = batch()
    padded = np.asarray(model.apply({"params": params}, ids, mask, types))
    alone = np.asarray(model.apply({"params": params}, ids[1:2, :5], mask[1:2, :5], types[1:2, :5]))
    np.testing.assert_allclose(padded[1:2], alone, rtol=1e-5, atol=1e-5)


def test_token_and_span_heads_equal_numpy():
    ids, mask, types = batch()
    for head in (HeadConfig("token_classification", num_labels=5), HeadConfig("question_answering")):
        model = model_for_head(CONFIG, head)
        params = perturbed(init_head_params(model, jax.random.key(4)))
        name = "qa_outputs" if head.task == "question_answering" else "classifier"
        h = last_hidden(params, head, ids, mask, types)
        expected = h @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(params[name]["bias"])
        out = model.apply({"params": params}, ids, mask, types)
        if head.task == "token_classification":
            np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
        else:
            valid = np.asarray(mask, bool)
            for got, want in zip(out, (expected[..., 0], expected[..., 1])):
                got = np.asarray(got)
                np.testing.assert_allclose(got[valid], want[valid], rtol=1e-5, atol=1e-5)
                assert np.all(got[~valid] == MASKED_LOGIT)


def test_dropout_is_active_only_when_not_deterministic():
    head = HeadConfig("classification", num_labels=3, dropout=0.5)
    model = model_for_head(CONFIG, head)
    params = init_head_params(model, jax.random.key(0))
    ids, mask, types = batch()
    a = model.apply({"params": params}, ids, mask, types)
    b = model.apply({"params": params}, ids, mask, types, deterministic=True)
    c = model.apply({"params": params}, ids, mask, types, deterministic=False, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# --- losses against numpy -------------------------------------------------------------------------------

def np_weighted_mean(values, weights):
    return float((values * weights).sum() / weights.sum()) if weights.sum() > 0 else 0.0


def test_classification_loss_matches_numpy():
    rng = np.random.RandomState(0)
    logits = rng.randn(6, 4).astype(np.float32) * 3
    labels = np.array([0, 3, 2, -100, 1, 1], np.int32)  # -100: ignored
    weights = np.array([1.0, 0.5, 2.0, 1.0, 0.0, 1.0], np.float32)
    loss, metrics = jax.jit(classification_loss)(logits, labels, weights)
    keep = weights * (labels >= 0)
    nll = -log_softmax(logits.astype(np.float64), axis=-1)[np.arange(6), np.maximum(labels, 0)]
    assert float(loss) == pytest.approx(np_weighted_mean(nll, keep), rel=1e-6)
    assert float(metrics["loss"]) == float(loss)
    correct = (logits.argmax(-1) == labels).astype(np.float64)
    assert float(metrics["accuracy"]) == pytest.approx(np_weighted_mean(correct, keep), rel=1e-6)
    assert float(metrics["examples"]) == pytest.approx(keep.sum())


def test_regression_loss_matches_numpy_for_both_prediction_shapes():
    rng = np.random.RandomState(1)
    predictions = rng.randn(5).astype(np.float32)
    scores = rng.uniform(0, 5, 5).astype(np.float32)
    weights = np.array([1.0, 1.0, 0.0, 0.25, 1.0], np.float32)
    expected = np_weighted_mean((predictions.astype(np.float64) - scores) ** 2, weights)
    for shaped in (predictions, predictions[:, None]):
        loss, metrics = regression_loss(shaped, scores, weights)
        assert float(loss) == pytest.approx(expected, rel=1e-6)
        assert float(metrics["examples"]) == pytest.approx(3.25)


def test_token_classification_loss_matches_numpy():
    rng = np.random.RandomState(2)
    logits = rng.randn(3, 7, 5).astype(np.float32)
    labels = rng.randint(0, 5, (3, 7)).astype(np.int32)
    labels[0, 2] = -100  # a word-piece continuation
    weights = (np.arange(7)[None] < np.array([[7], [4], [1]])).astype(np.float32)  # padding
    loss, metrics = token_classification_loss(logits, labels, weights)
    keep = weights * (labels >= 0)
    nll = -np.take_along_axis(log_softmax(logits.astype(np.float64), -1), np.maximum(labels, 0)[..., None], -1)[..., 0]
    assert float(loss) == pytest.approx(np_weighted_mean(nll, keep), rel=1e-6)
    correct = (logits.argmax(-1) == labels).astype(np.float64)
    assert float(metrics["accuracy"]) == pytest.approx(np_weighted_mean(correct, keep), rel=1e-6)
    assert float(metrics["tokens"]) == keep.sum() == 11


def test_span_loss_matches_numpy():
    rng = np.random.RandomState(3)
    start, end = rng.randn(4, 10).astype(np.float32), rng.randn(4, 10).astype(np.float32)
    start[:, 8:] = MASKED_LOGIT  # padding, as the QA model masks it
    end[:, 8:] = MASKED_LOGIT
    start_pos = np.array([0, 3, 7, start[3].argmax()], np.int32)
    end_pos = np.array([0, 5, 7, end[3].argmax()], np.int32)
    weights = np.array([1.0, 1.0, 0.0, 1.0], np.float32)
    loss, metrics = jax.jit(span_loss)(start, end, start_pos, end_pos, weights)
    ls, le = log_softmax(start.astype(np.float64), -1), log_softmax(end.astype(np.float64), -1)
    nll = -(ls[np.arange(4), start_pos] + le[np.arange(4), end_pos]) / 2
    assert np.isfinite(float(loss))
    assert float(loss) == pytest.approx(np_weighted_mean(nll, weights), rel=1e-6)
    both = ((start.argmax(-1) == start_pos) & (end.argmax(-1) == end_pos)).astype(np.float64)
    assert float(metrics["exact_match"]) == pytest.approx(np_weighted_mean(both, weights))
    assert float(metrics["exact_match"]) >= 1 / 3  # example 3 is right by construction


def test_losses_with_no_weight_are_zero_with_finite_gradients():
    logits = jnp.ones((2, 3))
    grad = jax.grad(lambda x: classification_loss(x, jnp.array([1, 2]), jnp.zeros(2))[0])(logits)
    assert float(classification_loss(logits, jnp.array([1, 2]), jnp.zeros(2))[0]) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


def test_loss_for_head():
    assert loss_for_head(HeadConfig("classification")) is classification_loss
    assert loss_for_head(HeadConfig("regression", num_labels=1)) is regression_loss
    assert loss_for_head(HeadConfig("token_classification", num_labels=9)) is token_classification_loss
    assert loss_for_head(HeadConfig("question_answering")) is span_loss


# --- parameters -------------------------------------------------------------------------------------------

def encoder_params(add_pooler, seed=7, config=CONFIG):
    ids = jnp.ones((1, 4), jnp.int32)
    return nn.meta.unbox(JinaBert(config.replace(add_pooler=add_pooler)).init(jax.random.key(seed), ids)["params"])


@pytest.mark.parametrize("head", HEADS, ids=lambda h: f"{h.task}-{h.pooling}")
@pytest.mark.parametrize("with_pooler", [False, True])
def test_init_head_params_keeps_the_encoder_exactly(head, with_pooler):
    model = model_for_head(CONFIG, head)
    encoder = encoder_params(with_pooler)
    fresh = init_head_params(model, jax.random.key(0))
    params = init_head_params(model, jax.random.key(0), encoder)
    for part in ("embeddings", "encoder"):
        for got, want in zip(jax.tree.leaves(params["bert"][part]), jax.tree.leaves(encoder[part])):
            assert got is want
    assert ("pooler" in params["bert"]) == head.uses_pooler
    if head.uses_pooler:
        source = encoder if with_pooler else fresh["bert"]  # the encoder's pooler, else a fresh one
        np.testing.assert_array_equal(params["bert"]["pooler"]["dense"]["kernel"],
                                      source["pooler"]["dense"]["kernel"])
    # The head itself is freshly initialised, and the tree runs.
    for name in set(params) - {"bert"}:
        np.testing.assert_array_equal(params[name]["kernel"], fresh[name]["kernel"])
    ids, mask, types = batch()
    model.apply({"params": params}, ids, mask, types)


def test_init_head_params_rejects_a_mismatched_encoder():
    model = model_for_head(CONFIG, HeadConfig("classification"))
    other = encoder_params(False, config=CONFIG.replace(hidden_size=64, intermediate_size=128))
    with pytest.raises(HeadError, match=r"embeddings/word_embeddings/embedding: encoder has \(256, 64\)"):
        init_head_params(model, jax.random.key(0), other)
    deeper = encoder_params(False, config=CONFIG.replace(num_layers=2))
    with pytest.raises(HeadError, match=r"unexpected encoder/layer_1/"):
        init_head_params(model, jax.random.key(0), deeper)
    with pytest.raises(HeadError, match="pass its 'bert' subtree"):
        init_head_params(model, jax.random.key(0), {"bert": encoder_params(False), "cls": {}})


@pytest.mark.parametrize("kwargs,field", [
    (dict(task="ner"), "HeadConfig.task='ner'"),
    (dict(task="classification", pooling="max"), "HeadConfig.pooling='max'"),
    (dict(task="classification", num_labels=1), "HeadConfig.num_labels=1"),
    (dict(task="classification", num_labels=0), "HeadConfig.num_labels=0"),
    (dict(task="regression"), "HeadConfig.num_labels=2"),
    (dict(task="token_classification", num_labels=2.5), "HeadConfig.num_labels=2.5"),
    (dict(task="classification", dropout=1.0), "HeadConfig.dropout=1.0"),
    (dict(task="classification", dropout=-0.1), "HeadConfig.dropout=-0.1"),
])
def test_bad_head_configs_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        HeadConfig(**kwargs)
    assert field in str(err.value)


def test_head_models_refuse_the_wrong_task():
    with pytest.raises(ConfigError, match="HeadConfig.task='question_answering'"):
        init_head_params(JinaBertForSequenceClassification(CONFIG, HeadConfig("question_answering")),
                         jax.random.key(0))


def test_heads_shard_on_a_mesh():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    head = HeadConfig("classification", num_labels=4)
    model = model_for_head(CONFIG, head)
    ids, mask, types = batch(lengths=[9, 5, 1, 9])
    params = sharded.init_state(model, optax.sgd(0.1), mesh, jax.random.key(0), ids)[0].params
    assert params["classifier"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    # A pre-trained encoder put in place on the mesh keeps the tree (and so the shardings) of the model.
    encoder = jax.device_put(encoder_params(False), jax.tree.map(lambda x: x.sharding, {
        k: v for k, v in params["bert"].items() if k != "pooler"}))
    params = merge_encoder_params(params, encoder, CONFIG)
    for got, want in zip(jax.tree.leaves(params["bert"]["encoder"]), jax.tree.leaves(encoder["encoder"])):
        assert got is want
    assert params["bert"]["pooler"]["dense"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    host = jax.device_get(params)
    with sharding.sharding_context(mesh):
        logits = jax.jit(lambda p, i, m, t: model.apply({"params": p}, i, m, t))(params, ids, mask, types)
    np.testing.assert_allclose(logits, model.apply({"params": host}, ids, mask, types), rtol=1e-5, atol=1e-5)


def test_adamw_steps_learn_a_separable_task():
    """Label = whether token 7 occurs in the text: a few AdamW steps must cut the loss well down."""
    config = get_config("tiny", num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64, vocab_size=32,
                        hidden_dropout=0.0)
    rng = np.random.RandomState(0)
    ids = rng.randint(8, 32, (32, 12))
    labels = rng.randint(0, 2, 32)
    ids[labels == 1, rng.randint(0, 12, int(labels.sum()))] = 7
    ids, labels = jnp.asarray(ids, jnp.int32), jnp.asarray(labels, jnp.int32)
    mask, weights = jnp.ones_like(ids), jnp.ones(32)
    for pooling in ("cls", "mean"):
        model = model_for_head(config, HeadConfig("classification", num_labels=2, pooling=pooling, dropout=0.0))
        params = init_head_params(model, jax.random.key(0))
        optimizer = optax.adamw(3e-3, weight_decay=0.01)
        state = optimizer.init(params)

        def loss_fn(p):
            return classification_loss(model.apply({"params": p}, ids, mask), labels, weights)

        @jax.jit
        def step(p, s):
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
            updates, s = optimizer.update(grads, s, p)
            return optax.apply_updates(p, updates), s, metrics

        first = float(loss_fn(params)[0])
        for _ in range(40):
            params, state, metrics = step(params, state)
        final, final_metrics = loss_fn(params)
        assert float(final) < 0.5 * first, (pooling, first, float(final))
        assert float(final_metrics["accuracy"]) >= 0.9, pooling


@pytest.mark.parametrize("head", HEADS, ids=lambda h: f"{h.task}-{h.pooling}")
def test_bfloat16_compute_gives_float32_logits_close_to_float32(head):
    ids, mask, types = batch()
    params = perturbed(init_head_params(model_for_head(CONFIG, head), jax.random.key(5)))
    full = model_for_head(CONFIG, head).apply({"params": params}, ids, mask, types)
    half = model_for_head(CONFIG.replace(compute_dtype="bfloat16"), head).apply({"params": params}, ids, mask, types)
    for f, h in zip(jax.tree.leaves(full), jax.tree.leaves(half)):
        assert h.dtype == jnp.float32
        valid = np.abs(np.asarray(f)) < 1e8  # QA padding positions hold MASKED_LOGIT in both
        np.testing.assert_allclose(np.asarray(h)[valid], np.asarray(f)[valid], atol=0.15, rtol=0.05)
