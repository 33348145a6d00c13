"""Encoder benchmark on this machine: `base-de`, float32, forward only.

Prints, each measured in a fresh subprocess so peak RSS is that of one measurement:

* the XLA:CPU f32 matmul peak (n = 2048), the ceiling everything else is compared with;
* forward throughput (tokens/s, median of N runs) at batch 32 x 128, and its share of that peak;
* wall time and peak RSS of one 8192-token document with the `chunked` attention;

next to the public PyTorch reference figures measured on this kind of machine (shared/spec/MEASURED.md:
302 tokens/s at 32 x 128, 122 s and 7.5 GB at 8192 tokens). `benchmarks/inference.py` runs PyTorch side by
side in the same process tree once the exporter exists.

    python benchmarks/encoder.py [--repeats 5] [--long_length 8192] [--skip_long]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

REFERENCE = {"throughput_tokens_per_s": 302.0, "long_seconds": 122.0, "long_peak_rss_gb": 7.5}


def _child_setup():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    return jax


def measure_matmul(repeats: int) -> dict:
    jax = _child_setup()
    import jax.numpy as jnp
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"matmul_gflops": 2 * n ** 3 / times[len(times) // 2] / 1e9}


def forward_flops(config, batch: int, length: int) -> float:
    """Matmul FLOPs of one forward pass (embedding gathers and elementwise ops excluded)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_layers
    tokens = batch * length
    linear = 2 * tokens * layers * (4 * h * h + 2 * h * i + i * h)
    attention = 2 * batch * layers * 2 * length * length * h  # q.k and p.v
    return float(linear + attention)


def _encoder(attention_impl: str):
    jax = _child_setup()
    import flax.linen as nn
    import jax.numpy as jnp
    import numpy as np
    from bilingual import JinaBert, get_config
    config = get_config("base-de", hidden_dropout=0.0, attention_impl=attention_impl)
    model = JinaBert(config)
    # Random weights leaf by leaf (a trained model would be loaded the same way, one array at a time):
    # a jitted whole-model init holds every initialiser's temporaries at once and peaks at ~2 GB by itself.
    abstract = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32) * 0.02), abstract)
    forward = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask).embedding)
    return jax, jnp, config, params, forward


def measure_throughput(repeats: int, batch: int, length: int) -> dict:
    jax, jnp, config, params, forward = _encoder("dense")
    ids = jax.random.randint(jax.random.key(1), (batch, length), 5, config.vocab_size)
    mask = jnp.ones((batch, length), jnp.int32)
    start = time.perf_counter()
    forward(params, ids, mask).block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(params, ids, mask).block_until_ready()
        times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    return {"tokens_per_s": batch * length / median, "median_s": median, "first_call_s": compile_s,
            "gflops": forward_flops(config, batch, length) / median / 1e9}


def measure_long(length: int) -> dict:
    jax, jnp, config, params, forward = _encoder("chunked")
    ids = jax.random.randint(jax.random.key(2), (1, length), 5, config.vocab_size)
    mask = jnp.ones((1, length), jnp.int32)
    start = time.perf_counter()
    forward(params, ids, mask).block_until_ready()
    first = time.perf_counter() - start
    start = time.perf_counter()
    forward(params, ids, mask).block_until_ready()
    second = time.perf_counter() - start
    return {"first_call_s": first, "seconds": second,
            "gflops": forward_flops(config, 1, length) / second / 1e9}


def run_child(kind: str, args) -> dict:
    """Run one measurement in a fresh subprocess (which reports its own peak RSS in GB)."""
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--repeats", str(args.repeats),
                          "--long_length", str(args.long_length)],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"benchmark child {kind!r} failed with exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long_length", type=int, default=8192)
    parser.add_argument("--skip_long", action="store_true")
    parser.add_argument("--child", choices=["matmul", "throughput", "long"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = {"matmul": lambda: measure_matmul(args.repeats),
                  "throughput": lambda: measure_throughput(args.repeats, 32, 128),
                  "long": lambda: measure_long(args.long_length)}[args.child]()
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux
        print(json.dumps(result))
        return

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    matmul = run_child("matmul", args)
    print(f"XLA f32 matmul peak (2048^3, median of {args.repeats}): {matmul['matmul_gflops']:.1f} GFLOP/s")
    tp = run_child("throughput", args)
    print("\nbase-de forward, f32, batch 32 x 128 (dense attention)")
    print(f"  {'':28s} {'this code':>12s} {'PyTorch ref':>12s}")
    print(f"  {'tokens/s (median)':28s} {tp['tokens_per_s']:12.0f} {REFERENCE['throughput_tokens_per_s']:12.0f}")
    print(f"  {'ratio to reference':28s} {tp['tokens_per_s'] / REFERENCE['throughput_tokens_per_s']:12.2f}")
    print(f"  {'GFLOP/s (share of peak)':28s} {tp['gflops']:7.1f} ({tp['gflops'] / matmul['matmul_gflops']:.0%})")
    print(f"  {'peak RSS (GB)':28s} {tp['peak_rss_gb']:12.2f} {1.2:12.2f}")
    if not args.skip_long:
        lg = run_child("long", args)
        print(f"\nbase-de forward, f32, one {args.long_length}-token document (chunked attention)")
        print(f"  {'':28s} {'this code':>12s} {'PyTorch ref':>12s}")
        print(f"  {'wall time (s), compiled':28s} {lg['seconds']:12.1f} {REFERENCE['long_seconds']:12.1f}")
        print(f"  {'first call incl. compile (s)':28s} {lg['first_call_s']:12.1f}")
        print(f"  {'peak RSS (GB)':28s} {lg['peak_rss_gb']:12.2f} {REFERENCE['long_peak_rss_gb']:12.2f}")
        print(f"  {'GFLOP/s':28s} {lg['gflops']:12.1f}")
    print("\nReference figures: shared/spec/MEASURED.md (public PyTorch JinaBERT, same kind of 2-core machine).")


if __name__ == "__main__":
    main()
