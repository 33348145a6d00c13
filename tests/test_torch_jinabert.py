"""The shipped PyTorch JinaBERT (bilingual/export/hf_code) against hand-computed cases and the numpy reference.

Nothing here touches the Flax model: these tests check the PyTorch code against the spec alone, so that the
Flax-vs-PyTorch parity tests (test_hf_export.py) can catch a mistake the two implementations share.
"""

import math

import numpy as np
import pytest
import torch

import numpy_reference as ref
from bilingual.export.hf_code import modeling_bert as mb
from bilingual.export.hf_code.configuration_bert import JinaBertConfig

torch.manual_seed(0)


def _config(**overrides):
    values = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, feed_forward_type="geglu")
    values.update(overrides)
    return JinaBertConfig(**values)


def _randomise(model, seed=0):
    """Random weights everywhere, LayerNorms far from (1, 0), so no parameter is a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim == 1:  # LayerNorm scale
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def _gelu(x):
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_alibi_slopes_12_heads_match_the_spec_list():
    expected = [2 ** -1, 2 ** -2, 2 ** -3, 2 ** -4, 2 ** -5, 2 ** -6, 2 ** -7, 2 ** -8,
                2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]
    np.testing.assert_allclose(mb.alibi_slopes(12).numpy(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("heads,expected", [
    (8, [2.0 ** -k for k in range(1, 9)]),
    (4, [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]),
    (6, [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]),
])
def test_alibi_slopes_other_head_counts(heads, expected):
    np.testing.assert_allclose(mb.alibi_slopes(heads).numpy(), expected, rtol=0, atol=1e-15)


def test_alibi_bias_is_symmetric_and_built_for_the_requested_length():
    slopes = torch.tensor([0.5, 0.25], dtype=torch.float64)
    bias = mb.alibi_bias(slopes, torch.arange(3), 3, torch.float64)
    expected_head0 = -0.5 * np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0]])
    assert bias.shape == (2, 3, 3)
    np.testing.assert_array_equal(bias[0].numpy(), expected_head0)
    np.testing.assert_array_equal(bias[1].numpy(), expected_head0 / 2)
    # A query block (rows 1..2) against all 3 keys is the matching slice.
    np.testing.assert_array_equal(mb.alibi_bias(slopes, torch.tensor([1, 2]), 3, torch.float64).numpy(),
                                  bias[:, 1:].numpy())


def test_no_eager_max_length_bias_buffer():
    model = mb.JinaBertModel(_config(max_position_embeddings=8192))
    sizes = {name: b.numel() for name, b in model.named_buffers()}
    assert sizes == {"encoder.alibi_slopes": 4}


def test_attention_with_zero_queries_is_alibi_softmax_by_hand():
    """q = k = 0: scores are the ALiBi bias alone; with one head of slope 2^-8... check 1 head, 3 tokens."""
    config = _config(hidden_size=2, num_attention_heads=1, intermediate_size=2)
    attention = mb.JinaBertSelfAttention(config)
    with torch.no_grad():
        for lin in (attention.query, attention.key):
            lin.weight.zero_()
            lin.bias.zero_()
        attention.value.weight.copy_(torch.eye(2))
        attention.value.bias.zero_()
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])
    slopes = torch.tensor([0.5])  # slope given explicitly: -0.5 |i - j|
    context = attention(hidden, slopes, torch.zeros(1, 1, 1, 3))
    # Row 0: weights proportional to exp(0), exp(-0.5), exp(-1).
    w = np.exp([0.0, -0.5, -1.0])
    w /= w.sum()
    np.testing.assert_allclose(context[0, 0].detach().numpy(), w @ hidden[0].numpy(), rtol=1e-6)
    # Padding the last key removes it from every row: row 0 then weighs exp(0), exp(-0.5) only.
    padded = attention(hidden, slopes, torch.tensor([0.0, 0.0, torch.finfo(torch.float32).min / 2]).view(1, 1, 1, 3))
    w2 = np.exp([0.0, -0.5])
    w2 /= w2.sum()
    np.testing.assert_allclose(padded[0, 0].detach().numpy(), w2 @ hidden[0, :2].numpy(), rtol=1e-6)


def test_alibi_is_added_after_the_1_over_sqrt_d_scaling():
    """One head of dim 4, two tokens, q.k = 8 for the off-diagonal pair: score 8/2 - slope."""
    config = _config(hidden_size=4, num_attention_heads=1, intermediate_size=2)
    attention = mb.JinaBertSelfAttention(config)
    with torch.no_grad():
        attention.query.weight.copy_(torch.eye(4))
        attention.key.weight.copy_(torch.eye(4))
        attention.value.weight.copy_(torch.eye(4))
        for lin in (attention.query, attention.key, attention.value):
            lin.bias.zero_()
    hidden = torch.tensor([[[2.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 1.0]]])
    out = attention(hidden, torch.tensor([1.0]), torch.zeros(1, 1, 1, 2))
    # Row 0: scores [2*2/2, 2*4/2 - 1] = [2, 3].
    w = np.exp([2.0, 3.0])
    w /= w.sum()
    np.testing.assert_allclose(out[0, 0].detach().numpy(), w @ hidden[0].numpy(), rtol=1e-6)


@pytest.mark.parametrize("kind", ["geglu", "reglu"])
def test_glu_first_half_is_the_gate(kind):
    """H = 2, I = 1: gate row reads x0, linear row reads x1; output before LN is wo * act(x0) * x1."""
    config = _config(hidden_size=2, num_attention_heads=1, intermediate_size=1, feed_forward_type=kind)
    mlp = mb.JinaBertGLUMLP(config)
    with torch.no_grad():
        mlp.gated_layers.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # row 0 gate, row 1 linear
        mlp.wo.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        mlp.wo.bias.zero_()
        mlp.layernorm.weight.fill_(1.0)
        mlp.layernorm.bias.zero_()
    x0, x1 = -0.7, 1.9
    act = _gelu(x0) if kind == "geglu" else max(x0, 0.0)
    m = act * x1
    pre = np.array([x0 + m, x1 - m])
    expected = (pre - pre.mean()) / math.sqrt(pre.var() + config.layer_norm_eps)
    out = mlp(torch.tensor([[[x0, x1]]]))[0, 0].detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    # The swapped order (linear first) would give a different value: the test can tell them apart.
    swapped_act = _gelu(x1) if kind == "geglu" else max(x1, 0.0)
    assert abs(swapped_act * x0 - m) > 0.1


def test_gelu_is_exact_erf_not_tanh():
    config = _config(hidden_size=2, num_attention_heads=1, intermediate_size=1)
    mlp = mb.JinaBertGLUMLP(config)
    x = torch.tensor([-3.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    expected = [_gelu(v) for v in x.tolist()]
    np.testing.assert_allclose(mlp.act(x).numpy(), expected, rtol=1e-12)
    # The tanh approximation differs by ~4e-4 at -3: far outside that tolerance.
    assert abs(torch.nn.functional.gelu(x, approximate="tanh")[0].item() - expected[0]) > 1e-4


@pytest.mark.parametrize("overrides,act", [
    ({}, "gelu"),
    ({"num_attention_heads": 2, "feed_forward_type": "reglu"}, "relu"),
    ({"qk_layernorm": True}, "gelu"),
    ({"layer_layout": "jina-bert-v2-qk-post-norm"}, "gelu"),
    ({"layer_layout": "jina-bert-v2-qk-post-norm", "num_attention_heads": 2, "feed_forward_type": "reglu"}, "relu"),
])
def test_model_matches_numpy_reference(overrides, act):
    config = _config(**overrides)
    model = _randomise(mb.JinaBertModel(config))
    ids = torch.tensor([[5, 9, 3, 11, 7, 2], [4, 8, 1, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    out = model(input_ids=ids, attention_mask=mask)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    hidden, emb = ref.forward(sd, ids.numpy(), mask.numpy(), num_heads=config.num_attention_heads,
                              num_layers=config.num_hidden_layers, intermediate=config.intermediate_size,
                              qk_layernorm=config.qk_layernorm, act=act,
                              layout="qk_post_norm" if config.layer_layout == mb.QK_POST_NORM else "post_ln")
    np.testing.assert_allclose(out.last_hidden_state.detach().numpy(), hidden, atol=2e-5)
    pooled = mb.mean_pooling(out.last_hidden_state, mask)
    np.testing.assert_allclose(pooled.detach().numpy(), emb, atol=2e-5)
    assert out.pooler_output is None


def test_padding_does_not_change_the_kept_tokens():
    model = _randomise(mb.JinaBertModel(_config()))
    ids = torch.tensor([[5, 9, 3]])
    alone = model(input_ids=ids, attention_mask=torch.ones(1, 3, dtype=torch.long)).last_hidden_state
    padded_ids = torch.tensor([[5, 9, 3, 17, 30]])  # padding slots hold arbitrary ids
    padded = model(input_ids=padded_ids, attention_mask=torch.tensor([[1, 1, 1, 0, 0]])).last_hidden_state
    np.testing.assert_allclose(padded[0, :3].detach().numpy(), alone[0].detach().numpy(), atol=1e-5)


def test_mean_pooling_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    np.testing.assert_allclose(mb.mean_pooling(hidden, torch.tensor([[1, 1, 0]])).numpy(), [[2.0, 3.0]])
    # An all-padding row divides by 1e-9, not by zero.
    assert torch.isfinite(mb.mean_pooling(hidden, torch.tensor([[0, 0, 0]]))).all()


def test_query_blocks_give_the_same_result(monkeypatch):
    model = _randomise(mb.JinaBertModel(_config()))
    ids = torch.randint(0, 40, (2, 23))
    mask = torch.ones(2, 23, dtype=torch.long)
    mask[1, 17:] = 0
    whole = model(input_ids=ids, attention_mask=mask).last_hidden_state
    monkeypatch.setattr(mb, "ATTENTION_QUERY_BLOCK", 5)
    blocked = model(input_ids=ids, attention_mask=mask).last_hidden_state
    # Error model: blocking the queries changes only the shapes the matmul kernels see, so each n-term f32
    # dot product may be summed in another order: at most n * u relative to the terms' scale (u = 2^-24),
    # n the longest reduction (hidden, intermediate or key length). Each layer ends in a LayerNorm that
    # brings values back to the output's scale, so the layers' errors add: num_layers * n * u * max|out|.
    # (1.4e-6 was seen on one machine of this kind; this bound is 1.5e-5. A wrong block gives O(1).)
    config = model.config
    n = max(config.hidden_size, config.intermediate_size, ids.shape[1])
    atol = config.num_hidden_layers * n * 2.0 ** -24 * float(whole.abs().max())
    np.testing.assert_allclose(blocked.detach().numpy(), whole.detach().numpy(), rtol=0, atol=atol)


def test_token_types_are_added_to_word_embeddings():
    model = _randomise(mb.JinaBertModel(_config(num_hidden_layers=0)))
    ids = torch.tensor([[3, 4]])
    types = torch.tensor([[0, 1]])
    out = model(input_ids=ids, token_type_ids=types).last_hidden_state[0].detach().numpy()
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    x = sd["embeddings.word_embeddings.weight"][[3, 4]] + sd["embeddings.token_type_embeddings.weight"][[0, 1]]
    expected = ref.layer_norm(x, sd["embeddings.LayerNorm.weight"], sd["embeddings.LayerNorm.bias"], 1e-12)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def _qk_post_norm_layer_by_hand(sd, p, h, num_heads, intermediate, eps=1e-12):
    """One jina-bert-v2-qk-post-norm layer, from its description, in float64 numpy (no padding)."""
    length, hidden = h.shape
    d = hidden // num_heads
    q = ref.layer_norm(ref.linear(h, sd, p + "attention.self.query"), sd[p + "attention.self.layer_norm_q.weight"],
                       sd[p + "attention.self.layer_norm_q.bias"], eps)
    k = ref.layer_norm(ref.linear(h, sd, p + "attention.self.key"), sd[p + "attention.self.layer_norm_k.weight"],
                       sd[p + "attention.self.layer_norm_k.bias"], eps)
    v = ref.linear(h, sd, p + "attention.self.value")
    pos = np.arange(length)
    alibi = -ref.slopes(num_heads)[:, None, None] * np.abs(pos[:, None] - pos[None, :])
    q, k, v = (x.reshape(length, num_heads, d).transpose(1, 0, 2) for x in (q, k, v))
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(d) + alibi
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(1, 0, 2).reshape(length, hidden)
    attn = ref.layer_norm(h + ref.linear(ctx, sd, p + "attention.output.dense"),
                          sd[p + "attention.output.LayerNorm.weight"], sd[p + "attention.output.LayerNorm.bias"], eps)
    r = ref.layer_norm(h + attn, sd[p + "layer_norm_1.weight"], sd[p + "layer_norm_1.bias"], eps)
    both = ref.linear(r, sd, p + "mlp.up_gated_layer", bias=False)
    lin, gate = both[:, :intermediate], both[:, intermediate:]
    y = ref.linear(lin * ref.gelu(gate), sd, p + "mlp.down_layer")
    return ref.layer_norm(r + y, sd[p + "layer_norm_2.weight"], sd[p + "layer_norm_2.bias"], eps)


def test_qk_post_norm_layout_by_hand():
    config = _config(layer_layout="jina-bert-v2-qk-post-norm", num_hidden_layers=1)
    model = _randomise(mb.JinaBertModel(config))
    names = set(model.state_dict())
    assert {"encoder.layer.0.mlp.up_gated_layer.weight", "encoder.layer.0.mlp.down_layer.bias",
            "encoder.layer.0.layer_norm_1.weight", "encoder.layer.0.layer_norm_2.bias",
            "encoder.layer.0.attention.self.layer_norm_q.weight"} <= names
    assert not any("gated_layers" in n or "mlp.layernorm" in n for n in names)
    ids = torch.tensor([[5, 9, 3, 11]])
    out = model(input_ids=ids).last_hidden_state[0].detach().numpy()
    sd = {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}
    h = ref.layer_norm(sd["embeddings.word_embeddings.weight"][ids[0].numpy()]
                       + sd["embeddings.token_type_embeddings.weight"][0],
                       sd["embeddings.LayerNorm.weight"], sd["embeddings.LayerNorm.bias"], 1e-12)
    expected = _qk_post_norm_layer_by_hand(sd, "encoder.layer.0.", h, 4, 24)
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_masked_lm_head_by_hand_and_tied_decoder():
    config = _config()
    model = _randomise(mb.JinaBertForMaskedLM(config))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    names = set(model.state_dict())
    assert "bert.embeddings.word_embeddings.weight" in names and "cls.predictions.bias" in names
    assert not any(n.startswith("bert.pooler") for n in names)
    ids = torch.tensor([[5, 9, 3]])
    out = model(input_ids=ids, labels=torch.tensor([[-100, 9, -100]]))
    hidden = model.bert(input_ids=ids).last_hidden_state[0].detach().numpy().astype(np.float64)
    sd = {k: v.detach().numpy().astype(np.float64) for k, v in model.state_dict().items()}
    t = ref.gelu(ref.linear(hidden, sd, "cls.predictions.transform.dense"))
    t = ref.layer_norm(t, sd["cls.predictions.transform.LayerNorm.weight"],
                       sd["cls.predictions.transform.LayerNorm.bias"], 1e-12)
    logits = t @ sd["bert.embeddings.word_embeddings.weight"].T + sd["cls.predictions.bias"]
    np.testing.assert_allclose(out.logits[0].detach().numpy(), logits, atol=1e-4)
    log_probs = logits[1] - logits[1].max() - np.log(np.exp(logits[1] - logits[1].max()).sum())
    np.testing.assert_allclose(out.loss.item(), -log_probs[9], rtol=1e-4)


def test_published_attn_implementation_key_is_accepted():
    config = JinaBertConfig(attn_implementation="torch", vocab_size=40, hidden_size=16, num_hidden_layers=1,
                            num_attention_heads=4, intermediate_size=8)
    assert config.jina_attn_implementation == "torch"
    mb.JinaBertModel(config)  # transformers would reject "torch" as its own backend name


@pytest.mark.parametrize("field,value", [("feed_forward_type", "swiglu"), ("layer_layout", "nope"),
                                         ("position_embedding_type", "absolute")])
def test_config_rejects_unknown_choices(field, value):
    with pytest.raises(ValueError, match=field):
        _config(**{field: value})


def test_sequence_classification_head_reads_the_mean_embedding():
    config = _config(num_labels=3, classifier_pooling="mean")
    model = _randomise(mb.JinaBertForSequenceClassification(config))
    assert model.bert.pooler is None
    ids = torch.tensor([[5, 9, 3, 1], [4, 8, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([2, 0]))
    hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state.detach().numpy()
    pooled = np.stack([hidden[0, :3].mean(0), hidden[1].mean(0)])
    w, b = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
    logits = pooled @ w.T + b
    np.testing.assert_allclose(out.logits.detach().numpy(), logits, atol=1e-5)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(out.loss.item(), -(log_softmax[0, 2] + log_softmax[1, 0]) / 2, rtol=1e-5)


@pytest.mark.parametrize("pooling", [None, "cls"])
def test_sequence_classification_head_defaults_to_the_reference_cls_pooler(pooling):
    """Without ``classifier_pooling`` (the reference's config) the head reads ``tanh(pooler(h[:, 0]))``."""
    config = _config(num_labels=1, **({} if pooling is None else {"classifier_pooling": pooling}))
    model = _randomise(mb.JinaBertForSequenceClassification(config))
    ids = torch.tensor([[5, 9, 3, 1], [4, 8, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    scores = torch.tensor([0.5, 2.0])
    out = model(input_ids=ids, attention_mask=mask, labels=scores)
    hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state.detach().numpy()
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    pooled = np.tanh(hidden[:, 0] @ sd["bert.pooler.dense.weight"].T + sd["bert.pooler.dense.bias"])
    predicted = pooled @ sd["classifier.weight"].T + sd["classifier.bias"]
    np.testing.assert_allclose(out.logits.detach().numpy(), predicted, atol=1e-5)
    np.testing.assert_allclose(out.loss.item(), ((predicted[:, 0] - scores.numpy()) ** 2).mean(), rtol=1e-5)


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_token_classification_head_and_loss():
    model = _randomise(mb.JinaBertForTokenClassification(_config(num_labels=4)))
    assert model.bert.pooler is None
    ids = torch.tensor([[5, 9, 3, 1], [4, 8, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    labels = torch.tensor([[0, 3, -100, -100], [1, 2, 2, 0]])
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state.detach().numpy()
    logits = hidden @ model.classifier.weight.detach().numpy().T + model.classifier.bias.detach().numpy()
    np.testing.assert_allclose(out.logits.detach().numpy(), logits, atol=1e-5)
    log_probs = _np_log_softmax(logits)
    picked = [log_probs[b, t, labels[b, t]] for b in range(2) for t in range(4) if labels[b, t] >= 0]
    np.testing.assert_allclose(out.loss.item(), -np.mean(picked), rtol=1e-5)


def test_question_answering_head_and_loss():
    model = _randomise(mb.JinaBertForQuestionAnswering(_config(num_labels=2)))
    ids = torch.tensor([[5, 9, 3, 1, 7], [4, 8, 2, 2, 6]])
    out = model(input_ids=ids, start_positions=torch.tensor([1, 9]), end_positions=torch.tensor([3, 4]))
    hidden = model.bert(input_ids=ids).last_hidden_state.detach().numpy()
    logits = hidden @ model.qa_outputs.weight.detach().numpy().T + model.qa_outputs.bias.detach().numpy()
    np.testing.assert_allclose(out.start_logits.detach().numpy(), logits[..., 0], atol=1e-5)
    np.testing.assert_allclose(out.end_logits.detach().numpy(), logits[..., 1], atol=1e-5)
    start, end = _np_log_softmax(logits[..., 0]), _np_log_softmax(logits[..., 1])
    # start position 9 is beyond the sequence: clamped to L and ignored, as BERT does
    expected = (-start[0, 1] + -(end[0, 3] + end[1, 4]) / 2) / 2
    np.testing.assert_allclose(out.loss.item(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="num_labels == 2"):
        mb.JinaBertForQuestionAnswering(_config(num_labels=3))


def test_config_rejects_unknown_classifier_pooling():
    with pytest.raises(ValueError, match="classifier_pooling"):
        _config(classifier_pooling="max")


def test_alibi_bias_is_built_per_query_block_for_the_actual_length(monkeypatch):
    """No [N, L, L] bias for long inputs: each call builds [N, <= block, L] for the length actually given."""
    shapes = []
    original = mb.alibi_bias

    def recording(slopes, positions, key_length, dtype):
        bias = original(slopes, positions, key_length, dtype)
        shapes.append(tuple(bias.shape))
        return bias

    monkeypatch.setattr(mb, "alibi_bias", recording)
    monkeypatch.setattr(mb, "ATTENTION_QUERY_BLOCK", 8)
    model = _randomise(mb.JinaBertModel(_config(num_hidden_layers=1, max_position_embeddings=8192)))
    model(input_ids=torch.randint(0, 40, (1, 20)))
    assert shapes == [(4, 8, 20), (4, 8, 20), (4, 4, 20)]
