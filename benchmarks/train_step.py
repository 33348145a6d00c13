"""Train-step benchmark on this machine: `base-de`, float32.

Prints, in one run:

* the XLA f32 matmul peak (best over n = 1024..3072 of the median) — the ceiling for MFU;
* the MLM step (batch x 512 tokens, 30% of positions predicted) and the pair step (bi-directional InfoNCE,
  batch x 128 tokens per side): tokens/s and MFU against that peak (median of the timed steps);
* GradCache memory: the compiled pair step's per-device memory (XLA's buffer assignment: arguments,
  temporaries, outputs) for 256 and 4096 pairs with the same chunk size — it should stay flat — beside the
  plain (no GradCache) step at 256 pairs.

    python benchmarks/train_step.py [--steps 3] [--mlm_batch 2] [--pair_batch 16] [--skip_memory]

Memory: f32 activations of base-de are ~0.4 GB per layer per 4k tokens, so the defaults (1k MLM tokens,
2 x 2k pair tokens) keep the run near 6 GB of RSS on a 24 GB machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bilingual import flops, get_config, sharding  # noqa: E402
from bilingual.optim import OptimizerConfig, make_optimizer  # noqa: E402
from bilingual.training import sharded, steps  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def mlm_batch(batch, length, vocab, rng):
    ids = rng.integers(5, vocab, (batch, length), dtype=np.int32)
    weights = (rng.random((batch, length)) < 0.3).astype(np.float32)
    return {"input_ids": np.where(weights > 0, 4, ids).astype(np.int32), "attention_mask": np.ones_like(ids),
            "segment_ids": np.ones_like(ids), "targets": ids, "loss_weights": weights}


def pair_batch(batch, length, vocab, rng):
    q = rng.integers(5, vocab, (batch, length), dtype=np.int32)
    p = rng.integers(5, vocab, (batch, length), dtype=np.int32)
    return {"query_ids": q, "query_mask": np.ones_like(q), "passage_ids": p, "passage_mask": np.ones_like(p)}


def setup(stage, config, step_config, mesh):
    model = steps.model_for_stage(stage, config)
    tx = make_optimizer(OptimizerConfig(warmup_steps=1, total_steps=1000))
    example = jnp.zeros((1, 8), jnp.int32)
    shardings = sharded.state_shardings(model, tx, mesh, example)
    fn = (steps.make_mlm_step(model, tx, step_config) if stage == "mlm"
          else steps.make_contrastive_step(model, tx, "pairs", step_config, groups=sharding.batch_divisor(mesh)))
    return model, tx, example, shardings, fn


def time_step(stage, config, step_config, batch, mesh, repeats):
    model, tx, example, shardings, fn = setup(stage, config, step_config, mesh)
    state, _ = sharded.init_state(model, tx, mesh, jax.random.key(0), example)
    compiled, memory = sharded.compile_step(fn, mesh, shardings, state, batch)
    device_batch = sharded.put_batch(mesh, batch)
    state, metrics = compiled(state, device_batch, jax.random.key(0))  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        state, metrics = compiled(state, device_batch, jax.random.key(i + 1))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), memory


def compiled_memory(config, pairs, chunks, length, mesh):
    step_config = steps.StepConfig(gradcache_chunks=chunks)
    model, tx, example, shardings, fn = setup("pairs", config, step_config, mesh)
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                         __import__("flax").linen.meta.unbox(sharded.abstract_state(model, tx, example)))
    batch = {k: jax.ShapeDtypeStruct((pairs, length), jnp.int32)
             for k in ("query_ids", "query_mask", "passage_ids", "passage_mask")}
    _, memory = sharded.compile_step(fn, mesh, shardings, state, batch)
    return memory


def gib(x):
    return x / 2 ** 30


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--mlm_batch", type=int, default=2)
    parser.add_argument("--pair_batch", type=int, default=16)
    parser.add_argument("--preset", default="base-de")
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--gradcache_chunk", type=int, default=32, help="pairs per GradCache chunk")
    args = parser.parse_args()

    mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    config = get_config(args.preset, hidden_dropout=0.0)
    rng = np.random.default_rng(0)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, backend {jax.default_backend()}, "
          f"preset {args.preset}, float32")
    peak = flops.measure_matmul_peak((1024, 2048, 3072), repeats=5)
    print(f"XLA f32 matmul peak (best of n = 1024, 2048, 3072; median of 5 each): {peak / 1e9:.1f} GFLOP/s\n")

    rows = []
    length = 512
    predictions = int(np.ceil(0.3 * length * 1.25 / 8) * 8)
    batch = mlm_batch(args.mlm_batch, length, config.vocab_size, rng)
    seconds, _ = time_step("mlm", config, steps.StepConfig(max_predictions=predictions, dropout=False), batch, mesh,
                           args.steps)
    train_flops = 3 * (flops.encoder_forward_flops(config, args.mlm_batch, length)
                       + flops.mlm_head_forward_flops(config, args.mlm_batch * predictions))
    rows.append((f"MLM step {args.mlm_batch} x {length}", args.mlm_batch * length / seconds, train_flops / seconds))

    pair_len = 128
    batch = pair_batch(args.pair_batch, pair_len, config.vocab_size, rng)
    seconds, _ = time_step("pairs", config, steps.StepConfig(dropout=False), batch, mesh, args.steps)
    train_flops = 3 * 2 * flops.encoder_forward_flops(config, args.pair_batch, pair_len)
    rows.append((f"pair step {args.pair_batch} x 2 x {pair_len}", 2 * args.pair_batch * pair_len / seconds,
                 train_flops / seconds))

    print(f"{'step':30s} {'tokens/s':>10s} {'GFLOP/s':>9s} {'MFU vs peak':>12s}")
    for name, tps, fl in rows:
        print(f"{name:30s} {tps:10.0f} {fl / 1e9:9.1f} {fl / peak:12.1%}")

    if not args.skip_memory:
        chunk = args.gradcache_chunk
        print(f"\nGradCache: compiled pair step memory per device (XLA buffer assignment), 32 tokens per side, "
              f"chunks of {chunk} pairs")
        print(f"{'pairs':>8s} {'chunks':>7s} {'arguments':>10s} {'temporaries':>12s} {'total':>9s}")
        totals = {}
        for pairs, chunks in ((256, 1), (256, 256 // chunk), (4096, 4096 // chunk)):
            m = compiled_memory(config, pairs, chunks, 32, mesh)
            total = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            totals[(pairs, chunks)] = total
            label = "plain" if chunks == 1 else "GradCache"
            print(f"{pairs:8d} {chunks:7d} {gib(m.argument_size_in_bytes):9.2f}G {gib(m.temp_size_in_bytes):11.2f}G "
                  f"{gib(total):8.2f}G  {label}")
        ratio = totals[(4096, 4096 // chunk)] / totals[(256, 256 // chunk)]
        print(f"GradCache 4096 / 256 pairs memory ratio: {ratio:.3f} (flat is 1.0); plain 256 pairs already needs "
              f"{totals[(256, 1)] / totals[(256, 256 // chunk)]:.1f}x the GradCache memory")

if __name__ == "__main__":
    main()
