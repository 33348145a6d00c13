"""Where a train step's time goes: step time per attention implementation, and the top ops of one traced step.

    python benchmarks/profile_step.py --preset base-de --compute_dtype bfloat16 --batch 64 \
        --impls cudnn,dense,chunked --trace /tmp/trace

For each implementation: compile, warm up, time ``--steps`` MLM steps (median) and print tokens/s and MFU
against the matmul peak measured here. With ``--trace``, one more step of the first implementation is traced
with ``jax.profiler`` (a Perfetto trace is written there, viewable in ui.perfetto.dev or TensorBoard) and the
20 ops or kernels with the most total time are printed, so a slow step points at its cause.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import train_step  # noqa: E402
from bilingual import flops, get_config, sharding, task_types  # noqa: E402
from bilingual.training import sharded, steps  # noqa: E402


def top_ops(trace_dir: pathlib.Path, n: int = 20) -> list[tuple[str, float, int]]:
    """(name, total ms, count) of the complete events with the most total time, device events preferred."""
    files = sorted(trace_dir.rglob("*.trace.json.gz")) + sorted(trace_dir.rglob("perfetto_trace.json.gz"))
    if not files:
        return []
    with gzip.open(files[-1], "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    names = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            names[e["pid"]] = e.get("args", {}).get("name", "")
    device_pids = {pid for pid, name in names.items() if "/device:" in name and "CPU" not in name.upper()}
    totals: dict = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        if device_pids and e.get("pid") not in device_pids:
            continue
        t = totals[e["name"][:90]]
        t[0] += e["dur"] / 1000
        t[1] += 1
    return sorted(((k, v[0], v[1]) for k, v in totals.items()), key=lambda x: -x[1])[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base-de")
    parser.add_argument("--compute_dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--segments", action="store_true", help="pass segment ids (packed rows), as MLM does")
    parser.add_argument("--impls", default="auto", help="comma-separated attention implementations to time")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--trace", default=None, help="directory for a jax.profiler trace of one step")
    args = parser.parse_args()

    mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    sizes = (1024, 2048) if jax.default_backend() == "cpu" else (8192,)
    peak = flops.measure_matmul_peak(sizes, repeats=5, dtype=args.compute_dtype)
    print(f"{jax.devices()[0].device_kind}: {args.compute_dtype} matmul peak {peak / 1e12:.3f} TFLOP/s", flush=True)
    rng = np.random.default_rng(0)
    predictions = int(np.ceil(0.3 * args.length * 1.25 / 8) * 8)
    for n, impl in enumerate(args.impls.split(",")):
        config = get_config(args.preset, hidden_dropout=0.0, compute_dtype=args.compute_dtype, attention_impl=impl)
        batch = train_step.mlm_batch(args.batch, args.length, config.vocab_size, rng)
        if not args.segments:
            batch.pop("segment_ids")
            batch["segment_ids"] = None
        batch = {k: v for k, v in batch.items() if v is not None}
        step_config = steps.StepConfig(max_predictions=predictions, dropout=False)
        model, tx, example, shardings, fn = train_step.setup("mlm", config, step_config, mesh)
        if "segment_ids" not in batch:
            fn = _without_segments(fn)
        state, _ = sharded.init_state(model, tx, mesh, jax.random.key(0), example)
        try:
            compiled, _ = sharded.compile_step(fn, mesh, shardings, state, batch)
        except Exception as e:  # report and go on to the next implementation
            print(f"  {impl:8s} failed to compile: {str(e)[:200]}", flush=True)
            continue
        device_batch = sharded.put_batch(mesh, batch)
        state, metrics = compiled(state, device_batch, jax.random.key(0))
        jax.block_until_ready(metrics)
        times = []
        for i in range(args.steps):
            start = time.perf_counter()
            state, metrics = compiled(state, device_batch, jax.random.key(i + 1))
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        seconds = float(np.median(times))
        train_flops = task_types.get("mlm").train_flops(config, step_config, batch)
        print(f"  {impl:8s} MLM step {args.batch} x {args.length}: {seconds * 1e3:8.1f} ms, "
              f"{args.batch * args.length / seconds:9.0f} tokens/s, MFU {train_flops / seconds / peak:6.1%}", flush=True)
        if args.trace and n == 0:
            trace = pathlib.Path(args.trace)
            with jax.profiler.trace(str(trace), create_perfetto_trace=True):
                state, metrics = compiled(state, device_batch, jax.random.key(99))
                jax.block_until_ready(metrics)
            print(f"  top ops of one traced step ({impl}):")
            for name, ms, count in top_ops(trace):
                print(f"    {ms:9.2f} ms  {count:5d}x  {name}")


def _without_segments(fn):
    def step(state, batch, rng):
        return fn(state, {**batch, "segment_ids": None}, rng)
    return step


if __name__ == "__main__":
    main()
