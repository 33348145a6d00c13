"""Config presets, validation messages, parameter count and the golden base-de parameter layout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilingual import ConfigError, JinaBert, JinaBertForMaskedLM, get_config
from bilingual import hf_layout


def abstract_params(config, model_cls=JinaBert):
    shapes = jax.eval_shape(lambda: model_cls(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
    return nn.meta.unbox(shapes["params"])


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_base_de_has_exactly_the_published_parameter_count():
    assert count(abstract_params(get_config("base-de"))) == 160_223_232


def count_by_hand(layers, hidden, inter, vocab, layout):
    """Parameters (no pooler) from the layer formulas, independent of the code."""
    embeddings = vocab * hidden + 2 * hidden + 2 * hidden          # word, token type, LayerNorm
    attention = 4 * (hidden * hidden + hidden) + 2 * hidden         # q, k, v, output dense; output LayerNorm
    if layout == "post_ln":
        # gated_layers (no bias), wo, mlp.layernorm
        layer = attention + hidden * 2 * inter + (inter * hidden + hidden) + 2 * hidden
    else:
        # layer_norm_q/k, up_gated_layer (no bias), down_layer, layer_norm_1, layer_norm_2
        layer = attention + 2 * 2 * hidden + hidden * 2 * inter + (inter * hidden + hidden) + 2 * 2 * hidden
    return embeddings + layers * layer


def test_base_de_count_by_hand_is_the_published_one():
    assert count_by_hand(12, 768, 3072, 61056, "post_ln") == 160_223_232


def test_base_es_has_the_qk_post_norm_parameter_count():
    # 160,223,232 + 12 layers x (qk norms 4H + layer_norm_1/2 4H - mlp.layernorm 2H) = + 55,296
    assert count_by_hand(12, 768, 3072, 61056, "qk_post_norm") == 160_278_528
    assert count(abstract_params(get_config("base-es"))) == 160_278_528


def test_base_es_preset_is_the_published_qk_post_norm_layer():
    config = get_config("base-es")
    assert config.layer_layout == "qk_post_norm" and config.qk_layernorm
    assert get_config("base-de").layer_layout == "post_ln" and get_config("tiny").layer_layout == "post_ln"


@pytest.mark.parametrize("preset,expected_millions", [("small", 33), ("base", 137)])
def test_english_presets_match_the_spec_sizes(preset, expected_millions):
    # The published English sizes (~33M, ~137M) count the BERT pooler.
    assert round(count(abstract_params(get_config(preset, add_pooler=True))) / 1e6) == expected_millions


def reference_layout(layers, hidden, inter, vocab):
    """MODEL.md's state-dict table, written out independently of the code."""
    names = {
        "embeddings.word_embeddings.weight": (vocab, hidden),
        "embeddings.token_type_embeddings.weight": (2, hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
    }
    for n in range(layers):
        p = f"encoder.layer.{n}."
        for proj in ("query", "key", "value"):
            names[p + f"attention.self.{proj}.weight"] = (hidden, hidden)
            names[p + f"attention.self.{proj}.bias"] = (hidden,)
        names[p + "attention.output.dense.weight"] = (hidden, hidden)
        names[p + "attention.output.dense.bias"] = (hidden,)
        names[p + "attention.output.LayerNorm.weight"] = (hidden,)
        names[p + "attention.output.LayerNorm.bias"] = (hidden,)
        names[p + "mlp.gated_layers.weight"] = (2 * inter, hidden)
        names[p + "mlp.wo.weight"] = (hidden, inter)
        names[p + "mlp.wo.bias"] = (hidden,)
        names[p + "mlp.layernorm.weight"] = (hidden,)
        names[p + "mlp.layernorm.bias"] = (hidden,)
    return names


def reference_layout_qk_post_norm(layers, hidden, inter, vocab):
    """The jina-bert-v2-qk-post-norm state-dict names (MODEL.md's qk-norm paragraph plus the attention
    block's own output LayerNorm, which the published layer keeps), written out independently of the code."""
    names = {k: v for k, v in reference_layout(layers, hidden, inter, vocab).items() if ".mlp." not in k}
    for n in range(layers):
        p = f"encoder.layer.{n}."
        for norm in ("attention.self.layer_norm_q", "attention.self.layer_norm_k", "layer_norm_1", "layer_norm_2"):
            names[p + norm + ".weight"] = (hidden,)
            names[p + norm + ".bias"] = (hidden,)
        names[p + "mlp.up_gated_layer.weight"] = (2 * inter, hidden)
        names[p + "mlp.down_layer.weight"] = (hidden, inter)
        names[p + "mlp.down_layer.bias"] = (hidden,)
    return names


def test_golden_base_es_names_and_shapes():
    params = abstract_params(get_config("base-es"))
    state = hf_layout.to_state_dict(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), params))
    got = {k: tuple(v.shape) for k, v in state.items()}
    assert got == reference_layout_qk_post_norm(12, 768, 3072, 61056)


def test_golden_base_de_names_and_shapes():
    params = abstract_params(get_config("base-de"))
    state = hf_layout.to_state_dict(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), params))
    got = {k: tuple(v.shape) for k, v in state.items()}
    assert got == reference_layout(12, 768, 3072, 61056)


@pytest.mark.parametrize("overrides", [dict(), dict(qk_layernorm=True, layer_layout="qk_post_norm")])
def test_layout_round_trips(overrides):
    config = get_config("tiny", add_pooler=True, **overrides)
    params = nn.meta.unbox(JinaBert(config).init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"])
    back = hf_layout.from_state_dict(hf_layout.to_state_dict(params))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), back)
    assert "pooler.dense.weight" in hf_layout.to_state_dict(params)


def test_masked_lm_layout_has_bert_prefix_and_cls_predictions():
    params = abstract_params(get_config("tiny"), JinaBertForMaskedLM)
    names = set(hf_layout.to_state_dict(jax.tree.map(lambda s: np.zeros(s.shape), params)))
    assert "bert.embeddings.word_embeddings.weight" in names
    assert {"cls.predictions.bias", "cls.predictions.transform.dense.weight",
            "cls.predictions.transform.LayerNorm.weight"} <= names
    # The decoder is tied to the word embeddings: no separate parameter.
    assert not any("decoder" in n for n in names)


@pytest.mark.parametrize("overrides,field", [
    (dict(hidden_size=100, num_heads=12), "num_heads"),
    (dict(feed_forward_type="swiglu"), "feed_forward_type"),
    (dict(attention_impl="splash"), "attention_impl"),
    (dict(compute_dtype="float64"), "compute_dtype"),
    (dict(num_layers=0), "num_layers"),
    (dict(hidden_dropout=1.5), "hidden_dropout"),
    (dict(pad_token_id=10**6), "pad_token_id"),
    (dict(vocab_sizes=3), "vocab_sizes"),
    (dict(layer_layout="pre_ln"), "layer_layout"),
])
def test_invalid_configs_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        get_config("tiny", **overrides)


def test_qk_post_norm_requires_the_qk_layernorm():
    with pytest.raises(ConfigError, match=r"layer_layout='qk_post_norm' requires EncoderConfig.qk_layernorm=True"):
        get_config("tiny", layer_layout="qk_post_norm")
    with pytest.raises(ConfigError, match="qk_layernorm"):
        get_config("base-es", qk_layernorm=False)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="base-de"):
        get_config("huge")


def test_config_is_frozen():
    config = get_config("tiny")
    with pytest.raises(Exception):
        config.hidden_size = 3
