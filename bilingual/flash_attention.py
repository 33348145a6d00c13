"""Flash attention with the symmetric ALiBi bias computed inside the kernel (Pallas), forward and backward.

``flash_attention(q, k, v, slopes, key_mask, segment_ids)`` has the contract of
``bilingual.attention.dense_attention``: ``q, k, v`` ``[batch, length, heads, head_dim]`` (bf16 or f32), key
``j`` visible from query ``i`` when ``key_mask[b, j]`` and, with ``segment_ids`` (packed rows, ids >= 0),
``segment_ids[b, i] == segment_ids[b, j]``; scores ``q.k / sqrt(d) - m_h |i - j|``. Neither the ``[L, L]``
scores nor the bias ever exist in memory: each program keeps one query block (or key block) and walks the
other side block by block with the online-softmax recurrence (running max ``m``, normaliser ``l``, f32
accumulator), so memory is ``O(L * head_dim)`` per (batch, head). The bias of a block is
``-slope_h * |(q_start + a) - (k_start + b)|`` from two iotas; the head's slope is a ``[1, 1]`` block of the
``[heads, 1, 1]`` slopes input (so a head-sharded call sees its own heads' slopes).

Backward (``jax.custom_vjp``, the flash-attention-2 split): the forward saves the output and the row
max ``m`` and normaliser ``l``; ``delta = sum(dO * O)`` is one XLA reduction; one kernel per key block accumulates
``dK, dV`` over the query blocks, another per query block accumulates ``dQ`` over the key blocks, both
recomputing ``p = exp(s - m) / l``. All accumulation is float32; outputs are in the input dtype.

Layout: the wrapper transposes to ``[batch, heads, length, head_dim]`` (one XLA transpose each way) so that a
block is ``[block, head_dim]``, the shape both Triton (GPU) and Mosaic (TPU) tile; the length is padded to a
multiple of the blocks. Padded keys get score ``-inf`` (weight exactly 0); masked keys get the finite
``finfo(f32).min`` like ``dense_attention``, so a query row that sees no key averages all real keys as the
dense softmax does, and such rows get no gradient into ``q``/``k``.

Grid ``(batch, heads, length // block)``; no collectives. XLA cannot partition a Pallas call, so under a
sharded ``jit`` the caller runs it in ``shard_map`` on each device's (batch, heads) slice
(``bilingual.attention.attention(..., partition=...)``); the slopes travel sharded like the heads.

``interpret=True`` runs the same kernels through the Pallas interpreter (CPU tests).
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

_MASKED = float(jnp.finfo(jnp.float32).min)  # the score of a masked key, as in dense_attention
_NO_SEGMENT = int(np.iinfo(np.int32).min)  # key segment of a masked / padded key: equals no query's segment


def _scores(x, y, x_seg, y_seg, x_start, y_start, slope, scale: float, length: int, *, keys: str = "y"):
    """Scores ``x . y^T`` of one ``[bx, D] x [by, D]`` block with ALiBi, masks and padding applied.

    One side is queries, the other keys (``keys`` says which: ``"y"`` in the forward and dQ kernels, which
    compute ``s`` ``[bq, bk]``; ``"x"`` in the dK/dV kernel, which computes ``s^T`` ``[bk, bq]`` so that the
    query statistics it reads are lane-dense rows). ALiBi's ``|i - j|`` is symmetric, so the bias needs no
    orientation; key padding (positions ``>= length``) gets ``-inf``. ``x_seg`` is a column ``[bx, 1]``,
    ``y_seg`` a row ``[1, by]`` and ``slope`` ``[1, 1]`` (the layouts Mosaic tiles without a relayout).

    Returns the scores ``[bx, by]`` float32 and ``visible`` ``[bx, by]`` bool.
    """
    s = jax.lax.dot_general(x, y, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
    shape = s.shape
    x_pos = x_start + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
    y_pos = y_start + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    s = s - slope * jnp.abs(x_pos - y_pos).astype(jnp.float32)
    visible = x_seg == y_seg
    s = jnp.where(visible, s, _MASKED)
    s = jnp.where((y_pos if keys == "y" else x_pos) < length, s, -jnp.inf)
    return s, visible


def _dot(a, b, contract: tuple[int, int]):
    """``a`` and ``b`` contracted over dims ``contract``, accumulated in float32."""
    return jax.lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                               preferred_element_type=jnp.float32)


def _forward_kernel(slope_ref, q_ref, k_ref, v_ref, q_seg_ref, k_seg_ref, o_ref, m_ref, l_ref, *, scale, length,
                    block_k):
    """One query block against every key block: the online softmax. Saves each row's max ``m`` and
    normaliser ``l`` (not ``m + log l``: for a row that sees no key ``m`` is ``finfo.min`` and ``log l``
    would vanish in the sum, losing the uniform average the backward must reproduce)."""
    block_q = q_ref.shape[0]
    q_start = pl.program_id(2) * block_q
    slope, q, q_seg = slope_ref[...], q_ref[...], q_seg_ref[...]

    def body(j, carry):
        m, l, acc = carry
        k_start = pl.multiple_of(j * block_k, block_k)
        keys = pl.ds(k_start, block_k)
        v = v_ref[keys, :]
        s, _ = _scores(q, k_ref[keys, :], q_seg, k_seg_ref[:, keys], q_start, k_start, slope, scale, length)
        m_new = jnp.maximum(m, s.max(axis=1, keepdims=True))
        p = jnp.exp(s - m_new)
        correction = jnp.exp(m - m_new)
        l = l * correction + p.sum(axis=1, keepdims=True)
        return m_new, l, acc * correction + _dot(p.astype(v.dtype), v, (1, 0))

    init = (jnp.full((block_q, 1), _MASKED, jnp.float32), jnp.zeros((block_q, 1), jnp.float32),
            jnp.zeros(q_ref.shape, jnp.float32))
    m, l, acc = jax.lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
    o_ref[...] = (acc / l).astype(o_ref.dtype)
    m_ref[...] = m
    l_ref[...] = l


def _dkdv_kernel(slope_ref, q_ref, k_ref, v_ref, q_seg_ref, k_seg_ref, do_ref, m_ref, l_ref, delta_ref, dk_ref,
                 dv_ref, *, scale, length, block_q):
    """One key block: ``dK, dV`` summed over all query blocks, in the transposed orientation (``s^T``
    ``[bk, bq]``): the query-side statistics and segments are read as rows ``[1, bq]``."""
    block_k = k_ref.shape[0]
    k_start = pl.program_id(2) * block_k
    slope, k, v, k_seg = slope_ref[...], k_ref[...], v_ref[...], k_seg_ref[...]

    def body(i, carry):
        dk, dv = carry
        q_start = pl.multiple_of(i * block_q, block_q)
        rows = pl.ds(q_start, block_q)
        q, do = q_ref[rows, :], do_ref[rows, :]
        s_t, visible = _scores(k, q, k_seg, q_seg_ref[:, rows], k_start, q_start, slope, scale, length,
                               keys="x")
        p_t = jnp.exp(s_t - m_ref[:, rows]) / l_ref[:, rows]  # [bk, bq]
        dv = dv + _dot(p_t.astype(do.dtype), do, (1, 0))
        dp_t = _dot(v, do, (1, 1))
        ds_t = jnp.where(visible, p_t * (dp_t - delta_ref[:, rows]), 0.0)
        return dk + _dot(ds_t.astype(q.dtype), q, (1, 0)), dv

    zeros = jnp.zeros(k_ref.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(0, q_ref.shape[0] // block_q, body, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(slope_ref, q_ref, k_ref, v_ref, q_seg_ref, k_seg_ref, do_ref, m_ref, l_ref, delta_ref, dq_ref, *,
               scale, length, block_k):
    """One query block: ``dQ`` summed over all key blocks."""
    block_q = q_ref.shape[0]
    q_start = pl.program_id(2) * block_q
    slope, q, q_seg, do = slope_ref[...], q_ref[...], q_seg_ref[...], do_ref[...]
    m, l, delta = m_ref[...], l_ref[...], delta_ref[...]

    def body(j, dq):
        k_start = pl.multiple_of(j * block_k, block_k)
        keys = pl.ds(k_start, block_k)
        k, v = k_ref[keys, :], v_ref[keys, :]
        s, visible = _scores(q, k, q_seg, k_seg_ref[:, keys], q_start, k_start, slope, scale, length)
        p = jnp.exp(s - m) / l
        ds = jnp.where(visible, p * (_dot(do, v, (1, 1)) - delta), 0.0)
        return dq + _dot(ds.astype(k.dtype), k, (1, 0))

    dq = jax.lax.fori_loop(0, k_ref.shape[0] // block_k, body, jnp.zeros(q_ref.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _specs(block: int, padded: int, head_dim: int):
    """BlockSpecs over the grid ``(b, h, i)``: a ``block`` of rows ``i``, or the whole (padded) length.

    Arrays: slopes ``[H, 1, 1]``; rows ``[B, H, padded, D]``; query segments ``[B, padded, 1]`` (read as
    columns); key segments ``[B, 1, padded]`` (read as rows); row statistics (``m``, ``l``, ``delta``)
    ``[B, H, padded, 1]``. Mosaic needs a block's last two dims to be multiples of (8, 128) or whole: hence
    the unit dims. The ``_t`` specs are the dK/dV kernel's transposed orientation (query segments and
    statistics as rows ``[.., 1, padded]``, key segments as columns).
    """
    return dict(
        slope=pl.BlockSpec((None, 1, 1), lambda b, h, i: (h, 0, 0)),
        rows=pl.BlockSpec((None, None, block, head_dim), lambda b, h, i: (b, h, i, 0)),
        all_rows=pl.BlockSpec((None, None, padded, head_dim), lambda b, h, i: (b, h, 0, 0)),
        q_seg=pl.BlockSpec((None, block, 1), lambda b, h, i: (b, i, 0)),
        all_k_seg=pl.BlockSpec((None, 1, padded), lambda b, h, i: (b, 0, 0)),
        row_stat=pl.BlockSpec((None, None, block, 1), lambda b, h, i: (b, h, i, 0)),
        all_q_seg_t=pl.BlockSpec((None, 1, padded), lambda b, h, i: (b, 0, 0)),
        k_seg_t=pl.BlockSpec((None, block, 1), lambda b, h, i: (b, i, 0)),
        all_row_stat_t=pl.BlockSpec((None, None, 1, padded), lambda b, h, i: (b, h, 0, 0)),
    )


def _compiler_params(target: str, interpret: bool):
    """Triton on GPU: the whole-length K/V refs stay in global memory and each step loads one block (the
    Mosaic GPU lowering would stage them in shared memory, which 8192 x 64 exceeds). Mosaic (TPU) defaults."""
    if target == "gpu" and not interpret:
        return pl_triton.CompilerParams(num_warps=4, num_stages=2)
    return None


def _call(kernel, grid, in_specs, out_specs, out_shape, static, name):
    interpret, target = static[3], static[4]
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
                          interpret=interpret, compiler_params=_compiler_params(target, interpret),
                          name=name)


def _forward(slopes, q, k, v, q_seg, k_seg, static):
    length, block_q, block_k = static[:3]
    batch, heads, padded, head_dim = q.shape
    spec = _specs(block_q, padded, head_dim)
    stat = jax.ShapeDtypeStruct((batch, heads, padded, 1), jnp.float32)
    kernel = functools.partial(_forward_kernel, scale=1.0 / math.sqrt(head_dim), length=length, block_k=block_k)
    return _call(kernel, (batch, heads, padded // block_q),
                 [spec["slope"], spec["rows"], spec["all_rows"], spec["all_rows"], spec["q_seg"], spec["all_k_seg"]],
                 [spec["rows"], spec["row_stat"], spec["row_stat"]],
                 [jax.ShapeDtypeStruct(q.shape, q.dtype), stat, stat], static, "alibi_flash_forward")(
        slopes, q, k, v, q_seg, k_seg)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _flash(slopes, q, k, v, q_seg, k_seg, static):
    return _forward(slopes, q, k, v, q_seg, k_seg, static)[0]


def _flash_fwd(slopes, q, k, v, q_seg, k_seg, static):
    out, m, l = _forward(slopes, q, k, v, q_seg, k_seg, static)
    return out, (slopes, q, k, v, q_seg, k_seg, out, m, l)


def _flash_bwd(static, residuals, d_out):
    length, block_q, block_k = static[:3]
    slopes, q, k, v, q_seg, k_seg, out, m, l = residuals
    batch, heads, padded, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    rows_t = lambda x: jnp.swapaxes(x, -1, -2)  # [.., n, 1] <-> [.., 1, n]: a reshape, no data movement

    spec = _specs(block_k, padded, head_dim)
    dk, dv = _call(
        functools.partial(_dkdv_kernel, scale=scale, length=length, block_q=block_q),
        (batch, heads, padded // block_k),
        [spec["slope"], spec["all_rows"], spec["rows"], spec["rows"], spec["all_q_seg_t"], spec["k_seg_t"],
         spec["all_rows"]] + [spec["all_row_stat_t"]] * 3,
        [spec["rows"], spec["rows"]],
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)], static,
        "alibi_flash_dkdv")(slopes, q, k, v, rows_t(q_seg), rows_t(k_seg), d_out, rows_t(m), rows_t(l),
                            rows_t(delta))

    spec = _specs(block_q, padded, head_dim)
    dq = _call(
        functools.partial(_dq_kernel, scale=scale, length=length, block_k=block_k),
        (batch, heads, padded // block_q),
        [spec["slope"], spec["rows"], spec["all_rows"], spec["all_rows"], spec["q_seg"], spec["all_k_seg"],
         spec["rows"]] + [spec["row_stat"]] * 3,
        spec["rows"], jax.ShapeDtypeStruct(q.shape, q.dtype), static, "alibi_flash_dq")(
        slopes, q, k, v, q_seg, k_seg, d_out, m, l, delta)
    return None, dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _block(requested: int, length: int, name: str) -> int:
    if requested < 8 or requested & (requested - 1):
        raise ValueError(f"flash_attention {name}={requested} must be a power of two >= 8")
    return min(requested, max(8, pl.next_power_of_2(length)))


def flash_attention(q, k, v, slopes, key_mask, segment_ids: Optional[jnp.ndarray] = None, *,
                    block_q: int = 128, block_k: int = 128, interpret: bool = False,
                    target: Optional[str] = None):
    """ALiBi attention through the Pallas kernels; same arguments and result as ``dense_attention``.

    Args:
      q, k, v: ``[batch, length, heads, head_dim]``, bf16 or f32 (the output has their dtype).
      slopes: ``[heads]`` ALiBi slopes (a kernel input: under ``shard_map`` each device gets its heads').
      key_mask: ``[batch, length]``, nonzero where the key is a real token.
      segment_ids: ``[batch, length]`` int, ids >= 0, or None (one segment per row).
      block_q, block_k: query / key block sizes (powers of two, >= 8; shrunk for short inputs).
      interpret: run through the Pallas interpreter (any platform; the CPU tests).
      target: ``"gpu"`` (Triton lowering) or ``"tpu"`` (Mosaic); default ``jax.default_backend()``. Given
        explicitly when lowering for another platform than this process's (ahead-of-time compiles).

    Returns:
      ``[batch, length, heads, head_dim]``.
    """
    batch, length, heads, head_dim = q.shape
    if jnp.shape(slopes) != (heads,):
        raise ValueError(f"flash_attention got slopes of shape {jnp.shape(slopes)} for {heads} heads")
    block_q, block_k = _block(block_q, length, "block_q"), _block(block_k, length, "block_k")
    padded = -(-length // max(block_q, block_k)) * max(block_q, block_k)

    def to_blocks(x):  # [B, L, H, D] -> [B, H, padded, D]
        return jnp.pad(jnp.transpose(x, (0, 2, 1, 3)), ((0, 0), (0, 0), (0, padded - length), (0, 0)))

    seg = (jnp.zeros((batch, length), jnp.int32) if segment_ids is None
           else segment_ids.astype(jnp.int32))
    k_seg = jnp.where(key_mask.astype(bool), seg, _NO_SEGMENT)
    pad = ((0, 0), (0, padded - length))
    q_seg = jnp.pad(seg, pad)[:, :, None]  # [B, padded, 1]
    k_seg = jnp.pad(k_seg, pad, constant_values=_NO_SEGMENT)[:, None, :]  # [B, 1, padded]
    slopes = jnp.asarray(slopes, jnp.float32).reshape(heads, 1, 1)
    static = (length, block_q, block_k, interpret, target or jax.default_backend())
    out = _flash(slopes, to_blocks(q), to_blocks(k), to_blocks(v), q_seg, k_seg, static)
    return jnp.transpose(out[:, :, :length], (0, 2, 1, 3))


def platform_supported(platform: str, head_dim: int) -> bool:
    """Whether the compiled (non-interpret) kernel is meant for ``platform`` and ``head_dim``.

    GPU (Triton lowering; Triton tiles need power-of-two dims): head dims that are powers of two in [16, 256].
    TPU (Mosaic; a block's last dim is the whole head dim): head dims up to 256. ``tests/test_flash_attention``
    lowers the forward and backward for both ahead of time (Triton to its IR, Mosaic through libtpu's compiler
    for a v5e chip). Elsewhere the kernels run only in interpret mode.
    """
    if platform == "gpu":
        return 16 <= head_dim <= 256 and not head_dim & (head_dim - 1)
    return platform == "tpu" and head_dim <= 256


__all__: Sequence[str] = ("flash_attention", "platform_supported")
