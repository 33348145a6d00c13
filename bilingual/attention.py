"""Attention with symmetric ALiBi, behind one function with three implementations.

All implementations take ``q, k, v`` of shape ``[batch, length, heads, head_dim]`` and return the same
shape. A key ``j`` is visible from query ``i`` when ``key_mask[b, j]`` is set and, if ``segment_ids`` is
given (packed rows), ``segment_ids[b, i] == segment_ids[b, j]``. Scores are
``q.k / sqrt(d) + alibi`` (the bias after the scaling, as in the reference), softmax in float32.

* ``dense``: plain XLA, materialises ``[batch, heads, L, L]``. The reference; used for training at 512.
* ``chunked``: blockwise with an online softmax (flash-attention recurrence) in plain JAX; the ALiBi bias is
  computed per block from position offsets, so memory is linear in ``L``. Used on CPU/TPU for long inputs.
* ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` with the bias materialised once per
  call (``[1, heads, L, L]`` in the compute dtype). Fast on NVIDIA GPUs for bf16/fp16 and head dim <= 128.

TPU: no stock kernel takes ALiBi slopes; long inputs fall back to ``chunked`` (XLA), short ones to
``dense``. A Pallas flash kernel with a materialised bias would be the next step there.

Sharding: these functions contain no collectives; under ``jit`` the batch axis may be sharded over
``data``/``fsdp`` and the heads axis over ``tensor``, and each device computes its own slice.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from bilingual.alibi import bias_block

_NEG = float(jnp.finfo(jnp.float32).min)


def visible(key_mask: jnp.ndarray, q_segments: Optional[jnp.ndarray], k_segments: Optional[jnp.ndarray]) -> jnp.ndarray:
    """Which keys each query may attend to: ``[batch, 1, q, k]`` bool.

    ``key_mask`` is ``[batch, k]``; segments are ``[batch, q]`` / ``[batch, k]`` or None.
    """
    mask = key_mask.astype(bool)[:, None, None, :]
    if q_segments is not None:
        mask = mask & (q_segments[:, None, :, None] == k_segments[:, None, None, :])
    return mask


def dense_attention(q, k, v, slopes, key_mask, segment_ids=None, dropout=None):
    """Reference attention. ``dropout``, if given, is applied to the probabilities: ``p -> dropout(p)``."""
    length, head_dim = q.shape[1], q.shape[3]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(head_dim)
    positions = jnp.arange(length)
    scores = scores + bias_block(slopes, positions, positions)[None]
    scores = jnp.where(visible(key_mask, segment_ids, segment_ids), scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1)
    if dropout is not None:
        probs = dropout(probs)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def _pad_to(x, length, axis, value=0):
    pad = length - x.shape[axis]
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def chunked_attention(q, k, v, slopes, key_mask, segment_ids=None, block_size=512):
    """Blockwise attention with an online softmax; memory ``O(L * block)`` instead of ``O(L^2)``.

    The sequence is padded up to a multiple of ``block_size`` (padded keys are masked out, padded query
    rows are dropped). For each query block (``lax.map``) the key blocks are scanned while keeping the
    running maximum ``m``, normaliser ``l`` and weighted sum ``acc`` (all float32).
    """
    batch, length, heads, head_dim = q.shape
    block = min(block_size, length)
    num_blocks = -(-length // block)
    padded = num_blocks * block
    scale = 1.0 / math.sqrt(head_dim)

    q = _pad_to(q, padded, 1)
    k = _pad_to(k, padded, 1)
    v = _pad_to(v, padded, 1)
    key_mask = _pad_to(key_mask.astype(bool), padded, 1, False)
    seg = None if segment_ids is None else _pad_to(segment_ids, padded, 1, -1)

    def blocks(x):  # [B, padded, ...] -> [num_blocks, B, block, ...]
        return jnp.moveaxis(x.reshape((batch, num_blocks, block) + x.shape[2:]), 1, 0)

    k_blocks, v_blocks, mask_blocks = blocks(k), blocks(v), blocks(key_mask)
    seg_blocks = None if seg is None else blocks(seg)
    offsets = jnp.arange(num_blocks) * block
    local = jnp.arange(block)

    def one_query_block(args):
        q_blk, q_offset, q_seg = args  # [B, block, H, D], scalar, [B, block] or None

        def step(carry, kv):
            m, l, acc = carry
            k_blk, v_blk, kmask, k_seg, k_offset = kv
            s = jnp.einsum("bqhd,bkhd->bhqk", q_blk, k_blk, preferred_element_type=jnp.float32) * scale
            s = s + bias_block(slopes, q_offset + local, k_offset + local)[None]
            s = jnp.where(visible(kmask, q_seg, k_seg), s, _NEG)
            m_new = jnp.maximum(m, s.max(axis=-1))
            p = jnp.exp(s - m_new[..., None])
            correction = jnp.exp(m - m_new)
            l = l * correction + p.sum(axis=-1)
            pv = jnp.einsum("bhqk,bkhd->bhqd", p.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32)
            acc = acc * correction[..., None] + pv
            return (m_new, l, acc), None

        init = (jnp.full((batch, heads, block), -jnp.inf, jnp.float32),
                jnp.zeros((batch, heads, block), jnp.float32),
                jnp.zeros((batch, heads, block, head_dim), jnp.float32))
        xs = (k_blocks, v_blocks, mask_blocks, seg_blocks, offsets)
        (_, l, acc), _ = jax.lax.scan(step, init, xs)
        out = acc / l[..., None]
        return jnp.transpose(out, (0, 2, 1, 3)).astype(q.dtype)  # [B, block, H, D]

    outs = jax.lax.map(one_query_block, (blocks(q), offsets, seg_blocks))  # [nb, B, block, H, D]
    out = jnp.moveaxis(outs, 0, 1).reshape(batch, padded, heads, head_dim)
    return out[:, :length]


def fused_attention(q, k, v, slopes, key_mask, segment_ids=None, implementation="cudnn"):
    """``jax.nn.dot_product_attention`` with the ALiBi bias materialised as ``[1, heads, L, L]``.

    ``implementation="cudnn"`` is the GPU path; ``"xla"`` runs the same call anywhere (used in tests).
    """
    length, head_dim = q.shape[1], q.shape[3]
    positions = jnp.arange(length)
    bias = bias_block(slopes, positions, positions)[None].astype(q.dtype)
    mask = visible(key_mask, segment_ids, segment_ids)
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=1.0 / math.sqrt(head_dim), implementation=implementation)


def select_implementation(requested: str, *, length: int, head_dim: int, dtype, platform: str,
                          chunked_min_length: int, dropout_active: bool) -> str:
    """Resolve ``"auto"`` to a concrete implementation; validate forced choices.

    ``auto``: attention dropout in training needs ``dense``; an NVIDIA GPU with bf16/fp16 and a
    cuDNN-compatible head dim uses ``cudnn``; otherwise ``chunked`` above ``chunked_min_length`` tokens
    and ``dense`` below.
    """
    dtype = jnp.dtype(dtype)
    cudnn_ok = (platform == "gpu" and dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
                and head_dim <= 128 and head_dim % 8 == 0)
    if requested == "auto":
        if dropout_active:
            return "dense"
        if cudnn_ok:
            return "cudnn"
        return "chunked" if length > chunked_min_length else "dense"
    if dropout_active and requested != "dense":
        raise ValueError(
            f"attention_impl={requested!r} does not implement attention dropout; set "
            "attention_impl='dense' or attention_dropout=0.0")
    if requested == "cudnn" and not cudnn_ok:
        raise ValueError(
            f"attention_impl='cudnn' needs an NVIDIA GPU, bf16/fp16 compute and head_dim <= 128 "
            f"(a multiple of 8); got platform={platform!r}, dtype={dtype.name}, head_dim={head_dim}")
    return requested


def attention(q, k, v, slopes, key_mask, segment_ids=None, *, implementation: str, block_size: int = 512,
              dropout=None):
    """Dispatch to one implementation (already resolved by ``select_implementation``)."""
    if implementation == "dense":
        return dense_attention(q, k, v, slopes, key_mask, segment_ids, dropout=dropout)
    if implementation == "chunked":
        return chunked_attention(q, k, v, slopes, key_mask, segment_ids, block_size=block_size)
    if implementation == "cudnn":
        return fused_attention(q, k, v, slopes, key_mask, segment_ids, implementation="cudnn")
    raise ValueError(f"unknown attention implementation {implementation!r}")
