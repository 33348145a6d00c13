"""Attention with symmetric ALiBi, behind one function with four implementations.

All implementations take ``q, k, v`` of shape ``[batch, length, heads, head_dim]`` and return the same
shape. A key ``j`` is visible from query ``i`` when ``key_mask[b, j]`` is set and, if ``segment_ids`` is
given (packed rows), ``segment_ids[b, i] == segment_ids[b, j]``. Scores are
``q.k / sqrt(d) + alibi`` (the bias after the scaling, as in the reference), softmax in float32.

* ``dense``: plain XLA, materialises ``[batch, heads, L, L]``. The reference; used for training at 512.
* ``chunked``: blockwise with an online softmax (flash-attention recurrence) in plain JAX; the ALiBi bias is
  computed per block from position offsets, so memory is linear in ``L``. Long inputs on CPU.
* ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` with the bias materialised once per
  call (``[1, heads, L, L]`` in the compute dtype). NVIDIA GPUs, bf16/fp16, head dim <= 128; short inputs.
* ``flash``: the Pallas kernels of ``bilingual.flash_attention`` (bias computed in the kernel, forward and
  backward; Triton on GPU, Mosaic on TPU, the Pallas interpreter elsewhere). Long inputs on GPU and TPU.

``auto`` never builds an ``[L, L]`` bias above ``chunked_min_length`` (``select_implementation``).

Sharding: these functions contain no collectives; under ``jit`` the batch axis may be sharded over
``data``/``fsdp`` and the heads axis over ``tensor``, and each device computes its own slice. XLA cannot
partition a Pallas call, so ``attention(..., partition=spec)`` runs ``flash`` under ``jax.shard_map`` over the
active mesh with that spec (batch and heads split, length and head dim whole).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from bilingual import flash_attention as flash
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

    ``auto``: attention dropout in training needs ``dense`` (an error above ``chunked_min_length``, where
    ``dense`` would build ``[L, L]``: force ``attention_impl='dense'`` to accept that). Above
    ``chunked_min_length``: ``flash`` where the kernel compiles for the platform (GPU: head dims that are
    powers of two in [16, 256]; TPU), else ``chunked``. At or below it: ``cudnn`` on an NVIDIA GPU with
    bf16/fp16 and a cuDNN-compatible head dim, else ``dense``.
    """
    dtype = jnp.dtype(dtype)
    cudnn_ok = (platform == "gpu" and dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
                and head_dim <= 128 and head_dim % 8 == 0)
    long = length > chunked_min_length
    if requested == "auto":
        if dropout_active:
            if long:
                raise ValueError(
                    f"attention dropout at length {length} (> chunked_min_length={chunked_min_length}) would "
                    "build the [L, L] attention matrix: set attention_dropout=0.0, or attention_impl='dense' "
                    "to accept the quadratic memory")
            return "dense"
        if long:
            return "flash" if flash.platform_supported(platform, head_dim) else "chunked"
        return "cudnn" if cudnn_ok else "dense"
    if dropout_active and requested != "dense":
        raise ValueError(
            f"attention_impl={requested!r} does not implement attention dropout; set "
            "attention_impl='dense' or attention_dropout=0.0")
    if requested == "cudnn" and not cudnn_ok:
        raise ValueError(
            f"attention_impl='cudnn' needs an NVIDIA GPU, bf16/fp16 compute and head_dim <= 128 "
            f"(a multiple of 8); got platform={platform!r}, dtype={dtype.name}, head_dim={head_dim}")
    if requested == "flash" and platform in ("gpu", "tpu") and not flash.platform_supported(platform, head_dim):
        raise ValueError(
            f"attention_impl='flash' on {platform} needs head_dim a power of two in [16, 256] (GPU) or <= 256 "
            f"(TPU); got head_dim={head_dim}")
    return requested


def _flash_sharded(q, k, v, slopes, key_mask, segment_ids, *, block_size: int, partition):
    """``flash_attention`` on each device's slice: ``partition`` is the ``[B, L, H, D]`` PartitionSpec (length
    and head dim must be unsharded); without an active mesh it is called directly. The slopes are split like
    the heads, so each device's kernel sees its own heads' slopes."""
    interpret = jax.default_backend() not in ("gpu", "tpu")
    call = lambda q, k, v, slopes, m, s: flash.flash_attention(
        q, k, v, slopes, m, s, block_q=block_size, block_k=block_size, interpret=interpret)
    slopes = jnp.asarray(slopes, jnp.float32)
    mesh = jax.sharding.get_abstract_mesh()
    if partition is None or mesh.empty:
        return call(q, k, v, slopes, key_mask, segment_ids)
    partition = jax.sharding.PartitionSpec(*partition, *([None] * (4 - len(partition))))
    if partition[1] is not None or partition[3] is not None:
        raise ValueError(f"flash attention cannot split the length or head dim across devices: {partition}")
    rows, heads = jax.sharding.PartitionSpec(partition[0], None), jax.sharding.PartitionSpec(partition[2])
    specs = (partition,) * 3 + (heads, rows)
    if segment_ids is None:
        return jax.shard_map(lambda *a: call(*a, None), in_specs=specs, out_specs=partition,
                             check_vma=False)(q, k, v, slopes, key_mask)
    return jax.shard_map(call, in_specs=specs + (rows,), out_specs=partition,
                         check_vma=False)(q, k, v, slopes, key_mask, segment_ids)


def attention(q, k, v, slopes, key_mask, segment_ids=None, *, implementation: str, block_size: int = 512,
              flash_block_size: int = 128, dropout=None, partition=None):
    """Dispatch to one implementation (already resolved by ``select_implementation``).

    ``partition``: the PartitionSpec of ``q``/``k``/``v`` on the active mesh, used by ``flash`` only (see the
    module docstring); ``block_size`` is the chunked implementation's block, ``flash_block_size`` the kernel's.
    """
    if implementation == "dense":
        return dense_attention(q, k, v, slopes, key_mask, segment_ids, dropout=dropout)
    if implementation == "chunked":
        return chunked_attention(q, k, v, slopes, key_mask, segment_ids, block_size=block_size)
    if implementation == "cudnn":
        return fused_attention(q, k, v, slopes, key_mask, segment_ids, implementation="cudnn")
    if implementation == "flash":
        return _flash_sharded(q, k, v, slopes, key_mask, segment_ids, block_size=flash_block_size,
                              partition=partition)
    raise ValueError(f"unknown attention implementation {implementation!r}")
