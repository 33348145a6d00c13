"""The Flax encoder against an independent numpy forward pass, plus its component contracts."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

import numpy_reference as ref
from bilingual import JinaBert, JinaBertForMaskedLM, get_config, hf_layout
from bilingual.modeling import gelu_exact, mean_pool


def random_batch(batch, length, lengths, vocab, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(5, vocab, (batch, length))
    mask = (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids = np.where(mask, ids, 0)  # pad id 0, as the tokenizer pads
    return jnp.asarray(ids), jnp.asarray(mask)


def init_params(config, ids, seed=0, model_cls=JinaBert):
    return nn.meta.unbox(model_cls(config).init(jax.random.key(seed), ids)["params"])


def perturb(params, seed=1, scale=0.05):
    """Make LayerNorm scales/biases non-trivial so the test sees them."""
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.RandomState(seed)
    return jax.tree.unflatten(treedef, [x + scale * rng.randn(*x.shape).astype(np.float32) for x in leaves])


QK_POST_NORM = dict(qk_layernorm=True, layer_layout="qk_post_norm")


@pytest.mark.parametrize("overrides,act", [
    (dict(), "gelu"),
    (dict(qk_layernorm=True), "gelu"),
    (dict(feed_forward_type="reglu", num_heads=2), "relu"),
    (dict(attention_impl="chunked", attention_block_size=16), "gelu"),
    (QK_POST_NORM, "gelu"),
    (dict(QK_POST_NORM, feed_forward_type="reglu", num_heads=2), "relu"),
    (dict(QK_POST_NORM, attention_impl="chunked", attention_block_size=16), "gelu"),
])
def test_matches_numpy_reference(overrides, act):
    config = get_config("tiny", hidden_dropout=0.0, **overrides)
    ids, mask = random_batch(3, 41, [41, 23, 1], config.vocab_size)
    params = perturb(init_params(config, ids))
    out = JinaBert(config).apply({"params": params}, ids, mask)
    hidden, emb = ref.forward(hf_layout.to_state_dict(params), ids, mask, num_heads=config.num_heads,
                              num_layers=config.num_layers, intermediate=config.intermediate_size,
                              qk_layernorm=config.qk_layernorm, act=act,
                              layout=overrides.get("layer_layout", "post_ln"))
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(out.last_hidden_state)[valid], hidden[valid], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(out.embedding), emb, atol=1e-5, rtol=0)


def test_gelu_is_the_exact_erf_form():
    x = np.linspace(-5, 5, 101).astype(np.float32)
    exact = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    np.testing.assert_allclose(np.asarray(gelu_exact(jnp.asarray(x))), exact, atol=1e-6)
    # The tanh approximation differs by more than that: the test can tell them apart.
    assert np.abs(np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=True)) - exact).max() > 1e-4


def test_post_layernorm_output_is_normalised():
    """Post-LN: every layer output (and so the last hidden state) is a LayerNorm output."""
    config = get_config("tiny", hidden_dropout=0.0)
    ids, mask = random_batch(2, 9, [9, 9], config.vocab_size)
    params = init_params(config, ids)  # LayerNorm scale 1, bias 0
    h = np.asarray(JinaBert(config).apply({"params": params}, ids, mask).last_hidden_state)
    np.testing.assert_allclose(h.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(h.std(-1), 1, atol=1e-3)


def test_padding_does_not_change_the_embedding():
    config = get_config("tiny", hidden_dropout=0.0)
    ids, mask = random_batch(2, 10, [10, 6], config.vocab_size)
    params = init_params(config, ids)
    model = JinaBert(config)
    base = np.asarray(model.apply({"params": params}, ids, mask).embedding)
    pad = 23
    ids_padded = jnp.concatenate([ids, jnp.zeros((2, pad), ids.dtype)], axis=1)
    mask_padded = jnp.concatenate([mask, jnp.zeros((2, pad), mask.dtype)], axis=1)
    padded = np.asarray(model.apply({"params": params}, ids_padded, mask_padded).embedding)
    np.testing.assert_allclose(padded, base, atol=1e-5)
    # Row 1 alone, without any padding, gives the same embedding as inside the padded batch.
    alone = np.asarray(model.apply({"params": params}, ids[1:, :6], mask[1:, :6]).embedding)
    np.testing.assert_allclose(alone[0], base[1], atol=1e-5)


def test_mean_pool_with_empty_row_is_zero_not_nan():
    hidden = jnp.ones((2, 3, 4))
    mask = jnp.asarray([[1, 1, 0], [0, 0, 0]])
    pooled = np.asarray(mean_pool(hidden, mask))
    np.testing.assert_array_equal(pooled, [[1, 1, 1, 1], [0, 0, 0, 0]])


def test_masked_lm_logits_use_tied_embeddings():
    config = get_config("tiny", hidden_dropout=0.0)
    ids, mask = random_batch(2, 8, [8, 5], config.vocab_size)
    model = JinaBertForMaskedLM(config)
    params = perturb(init_params(config, ids, model_cls=JinaBertForMaskedLM))
    logits, out = model.apply({"params": params}, ids, mask)
    assert logits.shape == (2, 8, config.vocab_size) and logits.dtype == jnp.float32
    sd = hf_layout.to_state_dict(params)
    h = np.asarray(out.last_hidden_state, np.float64)
    x = h @ sd["cls.predictions.transform.dense.weight"].T + sd["cls.predictions.transform.dense.bias"]
    x = ref.layer_norm(ref.gelu(x), sd["cls.predictions.transform.LayerNorm.weight"],
                       sd["cls.predictions.transform.LayerNorm.bias"], 1e-12)
    expected = x @ sd["bert.embeddings.word_embeddings.weight"].T + sd["cls.predictions.bias"]
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4)


def test_bf16_compute_keeps_float32_parameters():
    config = get_config("tiny", compute_dtype="bfloat16", hidden_dropout=0.0)
    ids, mask = random_batch(2, 16, [16, 9], config.vocab_size)
    variables = JinaBert(config).init(jax.random.key(0), ids, mask)
    params = nn.meta.unbox(variables["params"])
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    out = JinaBert(config).apply({"params": params}, ids, mask)
    assert out.last_hidden_state.dtype == jnp.bfloat16 and out.embedding.dtype == jnp.float32
    f32 = JinaBert(config.replace(compute_dtype="float32")).apply({"params": params}, ids, mask)
    np.testing.assert_allclose(np.asarray(out.embedding), np.asarray(f32.embedding), atol=0.1)


def test_embedding_gradients_are_one_float32_scatter():
    """bf16 compute: the word-table gradient is a single float32 scatter-add (GPUs have native f32 atomics; a
    bf16 one is a compare-and-swap loop, measured at 170 ms of a 443 ms base-de step on an H200) and the
    type table's is a reduction. Both tables still get every position's gradient, on the rows used."""
    import re

    config = get_config("tiny", compute_dtype="bfloat16", hidden_dropout=0.0)
    ids, mask = random_batch(2, 16, [16, 9], config.vocab_size)
    types = jnp.asarray(np.random.RandomState(3).randint(0, 2, ids.shape), jnp.int32)
    params = init_params(config, ids)
    upstream = jnp.asarray(np.random.RandomState(4).randn(2, 16, config.hidden_size), jnp.float32)

    def loss(p):
        out = JinaBert(config).apply({"params": p}, ids, mask, types).last_hidden_state
        return jnp.sum(out.astype(jnp.float32) * upstream)

    hlo = jax.jit(jax.grad(loss)).lower(params).as_text(dialect="hlo")
    scatters = re.findall(r"= (\w+)\[([\d,]+)\][^ ]* scatter\(", hlo)
    assert scatters == [("f32", f"{config.vocab_size},{config.hidden_size}")], scatters

    g = jax.grad(loss)(params)["embeddings"]
    g_words = np.asarray(g["word_embeddings"]["embedding"])
    g_types = np.asarray(g["token_type_embeddings"]["embedding"])
    unused = np.setdiff1d(np.arange(config.vocab_size), np.asarray(ids))
    assert np.all(g_words[unused] == 0) and np.abs(g_words[np.unique(ids)]).sum(axis=1).min() > 0
    # every position adds its pre-LayerNorm gradient once to each table: the row sums agree
    np.testing.assert_allclose(g_words.sum(axis=0), g_types.sum(axis=0), rtol=1e-4, atol=1e-5)


def test_remat_gives_the_same_gradients():
    config = get_config("tiny", hidden_dropout=0.0)
    ids, mask = random_batch(2, 12, [12, 8], config.vocab_size)
    params = init_params(config, ids)

    def grads(cfg):
        loss = lambda p: jnp.sum(JinaBert(cfg).apply({"params": p}, ids, mask).embedding ** 2)
        return jax.grad(loss)(params)

    # Error model: remat recomputes the forward with other fusions, so each entry differs by f32 rounding
    # (eps = 1.2e-7) of terms up to the leaf's largest gradient, accumulated over 24 positions x 2 layers:
    # bound 64 eps x max|leaf| (measured: <= 2.3e-7 x max|leaf|, about 2 eps, on jax 0.10 and 0.12). The scale has a floor
    # of 1, the size of the gradients flowing back from this loss: a leaf whose exact gradient cancels to 0
    # (measured 1e-10: a bias feeding a LayerNorm) holds only that rounding. A remat that dropped or
    # reordered a layer's contribution is off by O(max|leaf|).
    def close(a, b):
        a, b = np.asarray(a), np.asarray(b)
        scale = max(float(np.abs(a).max()), 1.0)
        np.testing.assert_allclose(a, b, rtol=0, atol=64 * np.finfo(np.float32).eps * scale)

    jax.tree.map(close, grads(config), grads(config.replace(remat=True)))


def test_dropout_only_in_training_mode():
    config = get_config("tiny", hidden_dropout=0.1, attention_dropout=0.1)
    ids, mask = random_batch(2, 12, [12, 8], config.vocab_size)
    params = init_params(config, ids)
    model = JinaBert(config)
    eval_a = model.apply({"params": params}, ids, mask).embedding
    eval_b = model.apply({"params": params}, ids, mask).embedding
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    train = model.apply({"params": params}, ids, mask, deterministic=False,
                        rngs={"dropout": jax.random.key(3)}).embedding
    assert np.abs(np.asarray(train) - np.asarray(eval_a)).max() > 1e-3


@pytest.mark.parametrize("call,error,match", [
    (lambda m, p, ids, mask: m.apply({"params": p}, ids.astype(jnp.float32), mask), TypeError, "integer"),
    (lambda m, p, ids, mask: m.apply({"params": p}, ids, mask[:, :-1]), ValueError, "attention_mask"),
    (lambda m, p, ids, mask: m.apply({"params": p}, ids[0], mask[0]), ValueError, r"\[batch, length\]"),
    (lambda m, p, ids, mask: m.apply({"params": p}, jnp.zeros((1, 65), jnp.int32)), ValueError, "max_length=64"),
    (lambda m, p, ids, mask: m.apply({"params": p}, ids, mask, token_type_ids=ids[:, :3]), ValueError, "token_type_ids"),
])
def test_bad_inputs_raise_clear_errors(call, error, match):
    config = get_config("tiny", max_length=64)
    ids, mask = random_batch(2, 8, [8, 5], config.vocab_size)
    params = init_params(config, ids)
    with pytest.raises(error, match=match):
        call(JinaBert(config), params, ids, mask)


def test_long_input_auto_selects_chunked_and_matches_dense():
    config = get_config("tiny", hidden_dropout=0.0, chunked_min_length=64, attention_block_size=32)
    ids, mask = random_batch(1, 200, [190], config.vocab_size)
    params = init_params(config, ids)
    auto = JinaBert(config).apply({"params": params}, ids, mask)
    dense = JinaBert(config.replace(attention_impl="dense")).apply({"params": params}, ids, mask)
    np.testing.assert_allclose(np.asarray(auto.embedding), np.asarray(dense.embedding), atol=1e-5)
    text = jax.jit(lambda p: JinaBert(config).apply({"params": p}, ids, mask).embedding).lower(params).as_text()
    assert "while" in text  # the chunked path is a loop, the dense one is not


def qk_post_norm_setup(seed=0):
    config = get_config("tiny", hidden_dropout=0.0, **QK_POST_NORM)
    ids, mask = random_batch(2, 19, [19, 11], config.vocab_size, seed=seed)
    params = perturb(init_params(config, ids, seed=seed), seed=seed + 1)
    return config, ids, mask, params


def test_qk_post_norm_parameter_names_are_the_published_ones():
    config, ids, _, _ = qk_post_norm_setup()
    variables = JinaBert(config).init(jax.random.key(0), ids)
    layer = nn.meta.unbox(variables["params"])["encoder"]["layer_0"]
    assert set(layer) == {"attention", "layer_norm_1", "layer_norm_2", "mlp"}
    assert set(layer["mlp"]) == {"up_gated_layer", "down_layer"}
    assert set(layer["mlp"]["up_gated_layer"]) == {"kernel"}  # no bias
    assert layer["mlp"]["up_gated_layer"]["kernel"].shape == (128, 2 * 512)
    assert set(layer["attention"]["self"]) == {"query", "key", "value", "layer_norm_q", "layer_norm_k"}
    assert set(layer["attention"]["output"]) == {"dense", "LayerNorm"}
    names = set(hf_layout.to_state_dict(jax.tree.map(np.asarray, nn.meta.unbox(variables["params"]))))
    assert {"encoder.layer.1.layer_norm_1.weight", "encoder.layer.1.layer_norm_2.bias",
            "encoder.layer.1.mlp.up_gated_layer.weight", "encoder.layer.1.mlp.down_layer.bias",
            "encoder.layer.1.attention.output.LayerNorm.weight"} <= names
    assert not any("gated_layers" in n or ".mlp.wo." in n or "mlp.layernorm" in n for n in names)


def test_qk_post_norm_parameters_carry_logical_axis_names():
    config, ids, _, _ = qk_post_norm_setup()
    boxed = JinaBert(config).init(jax.random.key(0), ids)["params"]["encoder"]["layer_0"]
    flat = flax.traverse_util.flatten_dict(boxed)
    axes = {"/".join(path): leaf.names for path, leaf in flat.items()}
    assert axes["mlp/up_gated_layer/kernel"] == ("embed", "mlp")
    assert axes["mlp/down_layer/kernel"] == ("mlp", "embed") and axes["mlp/down_layer/bias"] == ("embed",)
    assert axes["layer_norm_1/scale"] == ("embed",) and axes["layer_norm_2/bias"] == ("embed",)
    assert axes["attention/self/layer_norm_q/scale"] == ("heads",)
    assert all(isinstance(leaf, nn.Partitioned) for leaf in flat.values())


@pytest.mark.parametrize("layout,projection", [("post_ln", "gated_layers"), ("qk_post_norm", "up_gated_layer")])
def test_gated_projection_split_order(layout, projection):
    """Swapping the halves of the gated projection changes the output and the reference order wins:
    post_ln's gated_layers is [gate | linear], qk_post_norm's up_gated_layer is [linear | gate]."""
    if layout == "qk_post_norm":
        config, ids, mask, params = qk_post_norm_setup()
    else:
        config = get_config("tiny", hidden_dropout=0.0)
        ids, mask = random_batch(2, 12, [12, 7], config.vocab_size)
        params = perturb(init_params(config, ids))
    assert config.layer_layout == layout
    state = hf_layout.to_state_dict(params)
    inter = config.intermediate_size
    swapped = dict(state)
    for n in range(config.num_layers):
        w = state[f"encoder.layer.{n}.mlp.{projection}.weight"]
        swapped[f"encoder.layer.{n}.mlp.{projection}.weight"] = np.concatenate([w[inter:], w[:inter]])
    out = np.asarray(JinaBert(config).apply({"params": params}, ids, mask).embedding)
    kwargs = dict(num_heads=config.num_heads, num_layers=config.num_layers, intermediate=inter, layout=layout)
    np.testing.assert_allclose(out, ref.forward(state, ids, mask, **kwargs)[1], atol=1e-5)
    assert np.abs(out - ref.forward(swapped, ids, mask, **kwargs)[1]).max() > 1e-3


def test_qk_post_norm_every_layer_norm_is_used():
    """attention.output.LayerNorm, layer_norm_1 and layer_norm_2 each change the output (the reference
    comparison above checks how; this checks none of them is dead)."""
    config, ids, mask, params = qk_post_norm_setup()
    model = JinaBert(config)
    base = np.asarray(model.apply({"params": params}, ids, mask).last_hidden_state)
    for path in (("layer_norm_1",), ("layer_norm_2",), ("attention", "output", "LayerNorm"),
                 ("attention", "self", "layer_norm_q"), ("attention", "self", "layer_norm_k")):
        flat = flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, params))
        key = ("encoder", "layer_0") + path + ("scale",)
        flat[key] = flat[key] * 1.5 + 0.2
        changed = flax.traverse_util.unflatten_dict(flat)
        diff = np.abs(np.asarray(model.apply({"params": changed}, ids, mask).last_hidden_state) - base).max()
        assert diff > 1e-3, path


def test_qk_post_norm_padding_does_not_change_the_embedding():
    config, ids, mask, params = qk_post_norm_setup()
    model = JinaBert(config)
    base = np.asarray(model.apply({"params": params}, ids, mask).embedding)
    pad = jnp.zeros((2, 13), ids.dtype)
    padded = np.asarray(model.apply({"params": params}, jnp.concatenate([ids, pad], 1),
                                    jnp.concatenate([mask, pad.astype(mask.dtype)], 1)).embedding)
    np.testing.assert_allclose(padded, base, atol=1e-5)
    alone = np.asarray(model.apply({"params": params}, ids[1:, :11], mask[1:, :11]).embedding)
    np.testing.assert_allclose(alone[0], base[1], atol=1e-5)


def test_qk_post_norm_long_input_chunked_matches_dense():
    config = get_config("tiny", hidden_dropout=0.0, chunked_min_length=64, attention_block_size=32, **QK_POST_NORM)
    ids, mask = random_batch(2, 150, [150, 97], config.vocab_size, seed=3)
    params = perturb(init_params(config, ids))
    chunked = JinaBert(config.replace(attention_impl="chunked")).apply({"params": params}, ids, mask)
    hidden, emb = ref.forward(hf_layout.to_state_dict(params), ids, mask, num_heads=4, num_layers=2,
                              intermediate=512, layout="qk_post_norm")
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(chunked.last_hidden_state)[valid], hidden[valid], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(chunked.embedding), emb, atol=1e-5, rtol=0)


def test_qk_post_norm_dropout_and_remat():
    config = get_config("tiny", hidden_dropout=0.1, **QK_POST_NORM)
    ids, mask = random_batch(2, 12, [12, 8], config.vocab_size)
    params = init_params(config, ids)
    model = JinaBert(config)
    eval_out = np.asarray(model.apply({"params": params}, ids, mask).embedding)
    train = np.asarray(model.apply({"params": params}, ids, mask, deterministic=False,
                                   rngs={"dropout": jax.random.key(3)}).embedding)
    assert np.abs(train - eval_out).max() > 1e-3

    def grads(cfg):
        loss = lambda p: jnp.sum(JinaBert(cfg).apply({"params": p}, ids, mask).embedding ** 2)
        return jax.grad(loss)(params)

    # Recomputation may reorder float32 sums (differences of ~1e-6 on gradients of ~1e-2).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5),
                 grads(config.replace(hidden_dropout=0.0)), grads(config.replace(hidden_dropout=0.0, remat=True)))
