"""Symmetric ALiBi: slopes and bias blocks.

JinaBERT adds ``bias[h, i, j] = -m_h * |i - j|`` to the scaled attention scores (after ``1/sqrt(d)``),
in both directions. The slopes are those of the ALiBi paper (``shared/spec/MODEL.md``):

* ``n`` a power of two: ``m_h = 2^(-8h/n)`` for ``h = 1..n``;
* otherwise, with ``c = 2^floor(log2 n)``: the ``c`` slopes for ``c`` heads, then
  ``slopes(2c)[0::2][: n - c]``.

The bias is never built as an ``[heads, L, L]`` tensor for long inputs: ``bias_block`` computes the
block for given query and key positions, which the chunked attention calls per block.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def _power_of_two_slopes(n: int) -> list[float]:
    return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi slopes, shape ``[num_heads]``, float32, in head order."""
    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = _power_of_two_slopes(closest)
    if closest < num_heads:
        slopes += _power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return np.asarray(slopes, dtype=np.float32)


def bias_block(slopes: jnp.ndarray, query_positions: jnp.ndarray, key_positions: jnp.ndarray) -> jnp.ndarray:
    """ALiBi bias for a block of positions.

    Args:
      slopes: ``[heads]``.
      query_positions: ``[q]`` integer positions.
      key_positions: ``[k]`` integer positions.

    Returns:
      ``[heads, q, k]`` float32 ``-slope * |i - j|``.
    """
    distance = jnp.abs(query_positions[:, None] - key_positions[None, :]).astype(jnp.float32)
    return -slopes.astype(jnp.float32)[:, None, None] * distance[None, :, :]
