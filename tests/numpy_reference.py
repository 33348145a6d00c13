"""An independent numpy forward pass of JinaBERT, written from shared/spec/MODEL.md (``post_ln``) and from
the published ``jina-bert-v2-qk-post-norm`` layer formula (``qk_post_norm``, see ``forward``), and numpy
versions of the contrastive and STS losses (TRAINING.md), written loop by loop from their formulas.

It reads a plain parameter dict in the reference (PyTorch) layout, ``name -> array`` with PyTorch shapes
(linear weights ``[out, in]``), so it shares nothing with the Flax code but the spec. float64 throughout.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf, logsumexp
from scipy.stats import pearsonr


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def slopes(n):
    def pow2(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    c = 2 ** int(math.floor(math.log2(n)))
    out = pow2(c)
    if c < n:
        out += pow2(2 * c)[0::2][: n - c]
    return np.array(out)


def linear(x, sd, name, bias=True):
    y = x @ sd[name + ".weight"].T
    return y + sd[name + ".bias"] if bias else y


def norm(x, sd, name, eps):
    return layer_norm(x, sd[name + ".weight"], sd[name + ".bias"], eps)


def forward(sd, input_ids, attention_mask, *, num_heads, num_layers, intermediate, eps=1e-12,
            qk_layernorm=False, act="gelu", layout="post_ln"):
    """Last hidden states ``[B, L, H]`` and masked-mean embeddings ``[B, H]``.

    ``layout="post_ln"``: the jina-bert-implementation layer (MODEL.md). ``layout="qk_post_norm"``: the
    published jina-bert-v2-qk-post-norm layer, per layer with input ``x``:
    ``q, k = LN_q(Wq x), LN_k(Wk x)`` (over all heads, before the split), ALiBi attention,
    ``a = attention.output.LayerNorm(x + dense(ctx))``, ``r = layer_norm_1(x + a)``,
    ``[up | gate] = up_gated_layer(r)`` (first half linear), ``out = layer_norm_2(r + down_layer(up * act(gate)))``.
    """
    if layout not in ("post_ln", "qk_post_norm"):
        raise ValueError(f"unknown layout {layout!r}")
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask, np.float64)
    b, length = ids.shape
    h = sd["embeddings.word_embeddings.weight"][ids] + sd["embeddings.token_type_embeddings.weight"][0]
    h = layer_norm(h, sd["embeddings.LayerNorm.weight"], sd["embeddings.LayerNorm.bias"], eps)
    hidden = h.shape[-1]
    d = hidden // num_heads
    pos = np.arange(length)
    alibi = -slopes(num_heads)[:, None, None] * np.abs(pos[:, None] - pos[None, :])
    neg = np.where(mask[:, None, None, :] > 0, 0.0, -1e30)
    for n in range(num_layers):
        p = f"encoder.layer.{n}."
        q = linear(h, sd, p + "attention.self.query")
        k = linear(h, sd, p + "attention.self.key")
        v = linear(h, sd, p + "attention.self.value")
        if qk_layernorm or layout == "qk_post_norm":
            q = layer_norm(q, sd[p + "attention.self.layer_norm_q.weight"], sd[p + "attention.self.layer_norm_q.bias"], eps)
            k = layer_norm(k, sd[p + "attention.self.layer_norm_k.weight"], sd[p + "attention.self.layer_norm_k.bias"], eps)
        q, k, v = (x.reshape(b, length, num_heads, d).transpose(0, 2, 1, 3) for x in (q, k, v))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + alibi[None] + neg
        scores = scores - scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, length, hidden)
        if layout == "qk_post_norm":
            x = h
            a = norm(x + linear(ctx, sd, p + "attention.output.dense"), sd, p + "attention.output.LayerNorm", eps)
            r = norm(x + a, sd, p + "layer_norm_1", eps)
            proj = linear(r, sd, p + "mlp.up_gated_layer", bias=False)
            up, gated = proj[..., :intermediate], proj[..., intermediate:]
            activated = gelu(gated) if act == "gelu" else np.maximum(gated, 0.0)
            h = norm(r + linear(up * activated, sd, p + "mlp.down_layer"), sd, p + "layer_norm_2", eps)
            continue
        h = layer_norm(h + linear(ctx, sd, p + "attention.output.dense"),
                       sd[p + "attention.output.LayerNorm.weight"], sd[p + "attention.output.LayerNorm.bias"], eps)
        both = linear(h, sd, p + "mlp.gated_layers", bias=False)
        gate, lin = both[..., :intermediate], both[..., intermediate:]
        g = gelu(gate) if act == "gelu" else np.maximum(gate, 0.0)
        h = layer_norm(h + linear(g * lin, sd, p + "mlp.wo"),
                       sd[p + "mlp.layernorm.weight"], sd[p + "mlp.layernorm.bias"], eps)
    emb = (h * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
    return h, emb


def cosine_matrix(a, b):
    """``[Ba, H], [Bb, H] -> [Ba, Bb]`` cosine similarities (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def info_nce(q, p, tau):
    """One direction: ``mean_i -log softmax_j(cos(q_i, p_j) / tau)[i]``; ``q, p`` ``[B, H]``."""
    s = cosine_matrix(q, p) / tau
    return np.mean([-(s[i, i] - logsumexp(s[i])) for i in range(len(q))])


def info_nce_with_negatives(q, p, n, tau):
    """Query-to-passage over the batch's passages and all ``B * m`` negatives ``n`` ``[B, m, H]``, plus
    passage-to-query."""
    flat = n.reshape(-1, n.shape[-1])
    total = 0.0
    for i in range(len(q)):
        pos = cosine_matrix(q[i:i + 1], p)[0] / tau
        neg = cosine_matrix(q[i:i + 1], flat)[0] / tau
        total += -(pos[i] - logsumexp(np.concatenate([pos, neg])))
    forward = total / len(q)
    backward = 0.0
    for i in range(len(p)):
        to_queries = cosine_matrix(p[i:i + 1], q)[0] / tau
        backward += -(to_queries[i] - logsumexp(to_queries))
    return forward + backward / len(p)


def sts_loss(a, b, gold, kind):
    """``-pearson(cos(a_i, b_i), gold)`` (``kind="pearson"``) or ``mean (cos - gold / 5)^2`` (``"mse"``)."""
    a, b, gold = (np.asarray(x, np.float64) for x in (a, b, gold))
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return -pearsonr(cos, gold)[0] if kind == "pearson" else np.mean((cos - gold / 5) ** 2)
