"""The attention of one long document: time and memory per implementation (a child of `benchmarks/suite.py`).

    python benchmarks/attention_forward.py --impl chunked --length 8192 [--heads 12 --head_dim 64 --dtype float32]

One ``bilingual.attention.attention`` forward over ``[1, L, heads, head_dim]`` with ALiBi and a key mask (the
last 3% of keys padded), base-de's head shape by default. Prints one JSON line: median warm seconds of
``--repeats`` calls, the compiled program's temporary bytes (XLA's buffer assignment: what the
implementation needs beyond its inputs and output, the same on any machine), and the peak device memory
(accelerators) or the process's peak RSS (CPU).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bilingual import attention as attn  # noqa: E402
from bilingual.alibi import alibi_slopes  # noqa: E402


def measure(impl: str, length: int, heads: int, head_dim: int, dtype: str, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((1, length, heads, head_dim)), dtype) for _ in range(3))
    mask = jnp.asarray(np.arange(length)[None] < int(length * 0.97))
    slopes = jnp.asarray(alibi_slopes(heads))
    forward = jax.jit(lambda q, k, v, m: attn.attention(q, k, v, slopes, m, implementation=impl))
    compiled = forward.lower(q, k, v, mask).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    compiled(q, k, v, mask).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        compiled(q, k, v, mask).block_until_ready()
        times.append(time.perf_counter() - start)
    out = {"impl": impl, "length": length, "heads": heads, "head_dim": head_dim, "dtype": dtype,
           "warm_s": statistics.median(times), "temp_bytes": int(temp), "platform": jax.default_backend()}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["peak_device_gb"] = stats["peak_bytes_in_use"] / 2 ** 30
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", required=True, choices=["dense", "chunked", "cudnn", "flash"])
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.impl, args.length, args.heads, args.head_dim, args.dtype, args.repeats)))


if __name__ == "__main__":
    main()
