"""FLOP counts for throughput and MFU, and per-device peak figures.

Counts are of matrix multiplications only (the standard MFU convention): embeddings gathers, softmax,
LayerNorm and elementwise ops are excluded. Training is 3x the forward (forward + two backward matmuls);
GradCache adds one more forward.
"""

from __future__ import annotations

import time

from bilingual.config import EncoderConfig

# Dense bf16 peak per chip (vendor figures, without sparsity).
PEAK_FLOPS = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v6 lite": 918e12,
    "nvidia h100": 989e12,
    "nvidia h200": 989e12,
    "nvidia a100": 312e12,
}


def encoder_forward_flops(config: EncoderConfig, batch: int, length: int) -> float:
    """Forward matmul FLOPs of the encoder on ``batch`` sequences of ``length`` tokens."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_layers
    tokens = batch * length
    linear = 2 * tokens * layers * (4 * h * h + 2 * h * i + i * h)
    attention = 2 * batch * layers * 2 * length * length * h  # q.k^T and p.v
    return float(linear + attention)


def mlm_head_forward_flops(config: EncoderConfig, positions: int) -> float:
    """Transform dense plus the tied decoder at ``positions`` selected positions."""
    h = config.hidden_size
    return float(2 * positions * (h * h + h * config.vocab_size))


def device_peak_flops(device) -> float | None:
    """The table's peak for ``device.device_kind``, or None when unknown (CPU: measure it instead)."""
    kind = getattr(device, "device_kind", "").lower()
    for name, peak in PEAK_FLOPS.items():
        if kind.startswith(name):
            return peak
    return None


def measure_matmul_peak(sizes=(1024, 2048, 3072), repeats: int = 5, dtype: str = "float32") -> float:
    """Measured matmul FLOP/s of the default device in ``dtype``: the best over ``sizes`` of the median of
    ``repeats`` timings (square ``n x n @ n x n``, inputs drawn at random so no hardware shortcut applies to
    zeros). Used as the MFU denominator on CPU, and beside the vendor figure on accelerators."""
    import jax
    import jax.numpy as jnp

    if isinstance(sizes, int):
        sizes = (sizes,)
    f = jax.jit(lambda x: x @ x)
    best = 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype) / n ** 0.5
        f(a).block_until_ready()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            f(a).block_until_ready()
            times.append(time.perf_counter() - start)
        best = max(best, 2 * n ** 3 / sorted(times)[len(times) // 2])
    return best
