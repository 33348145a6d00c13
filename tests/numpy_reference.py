"""An independent numpy forward pass of JinaBERT, written from shared/spec/MODEL.md (``post_ln``) and from
the published ``jina-bert-v2-qk-post-norm`` layer formula (``qk_post_norm``, see ``forward``).

It reads a plain parameter dict in the reference (PyTorch) layout, ``name -> array`` with PyTorch shapes
(linear weights ``[out, in]``), so it shares nothing with the Flax code but the spec. float64 throughout.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf


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
