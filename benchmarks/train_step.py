"""Train-step benchmark: `base-de` MLM and pair steps, with MFU against a matmul peak measured in the same run.

Measures, in one process:

* the XLA matmul peak of this device in the compute dtype (best over the sizes of the median of 5, measured
  before and after the steps) — the
  denominator for MFU (on accelerators the vendor's dense bf16 peak is printed beside it);
* the MLM step (batch x 512 tokens, 30% of positions predicted) and the pair step (bi-directional InfoNCE,
  batch x 128 tokens per side, optionally GradCache chunks): tokens/s (median of the timed steps) and MFU.
  MFU counts 3x the forward matmul FLOPs (GradCache's extra forward is not counted, as remat is not);
* GradCache memory: the compiled pair step's per-device memory (XLA's buffer assignment: arguments,
  temporaries, outputs) for 256 and 4096 pairs with the same chunk size — it should stay flat — beside the
  plain (no GradCache) step at 256 pairs.

    python benchmarks/train_step.py [--steps 3] [--mlm_batch 2] [--pair_batch 16] [--skip_memory]
    python benchmarks/train_step.py --compute_dtype bfloat16 --mlm_batch 64 --pair_batch 4096 --pair_chunks 8

CPU memory: f32 activations of base-de are ~0.4 GB per layer per 4k tokens, so the defaults (1k MLM tokens,
2 x 2k pair tokens) keep the run near 6 GB of RSS. `benchmarks/suite.py` runs this as part of one table.
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

from bilingual import flops, get_config, sharding, task_types, text_identity  # noqa: E402
from bilingual.optim import OptimizerConfig, make_optimizer  # noqa: E402
from bilingual.training import objectives, sharded, steps  # noqa: E402

MLM_LENGTH = 512
PAIR_LENGTH = 128
MLM, PAIRS = task_types.get("mlm"), task_types.get("pairs")
# MFU counts model FLOPs: the pair step's FLOPs are counted without GradCache's extra (recomputing) forward.
MODEL_FLOPS_STEP = steps.StepConfig()


def mlm_batch(batch, length, vocab, rng):
    """Random full rows (one piece each, 30% of positions selected) in the ``task_types`` MLM layout."""
    ids = rng.integers(5, vocab, (batch, length), dtype=np.int32)
    weights = (rng.random((batch, length)) < 0.3).astype(np.float32)
    out = {"input_ids": np.where(weights > 0, 4, ids).astype(np.int32), "attention_mask": np.ones_like(ids),
           "segment_ids": np.ones_like(ids), "targets": ids, "loss_weights": weights}
    MLM.check_batch(out, batch, {"text": length})
    return out


def pair_batch(batch, length, vocab, rng):
    """Random unpadded pairs of ``length`` tokens per side in the ``task_types`` pairs layout."""
    out = {}
    for ids_key, mask_key in PAIRS.views.values():
        out[ids_key] = rng.integers(5, vocab, (batch, length), dtype=PAIRS.arrays[ids_key][1])
        out[mask_key] = np.ones_like(out[ids_key])
    out.update({key: text_identity.distinct_keys(batch, name=key) for key in PAIRS.text_keys.values()})
    PAIRS.check_batch(out, batch, dict.fromkeys(PAIRS.sides, length))
    return out


def setup(stage, config, step_config, mesh):
    objective = objectives.for_stage(stage, config, step_config)
    tx = make_optimizer(OptimizerConfig(warmup_steps=1, total_steps=1000))
    example = jnp.zeros((1, 8), jnp.int32)
    shardings = sharded.state_shardings(objective.model, tx, mesh, example)
    fn = objective.make_step(objective.task_types[0], tx, sharding.batch_divisor(mesh))
    return objective.model, tx, example, shardings, fn


def time_step(stage, config, step_config, batch, mesh, repeats):
    """Median seconds of ``repeats`` steps after one warm-up, and the compile time."""
    model, tx, example, shardings, fn = setup(stage, config, step_config, mesh)
    state, _ = sharded.init_state(model, tx, mesh, jax.random.key(0), example)
    start = time.perf_counter()
    compiled, memory = sharded.compile_step(fn, mesh, shardings, state, batch)
    compile_s = time.perf_counter() - start
    device_batch = sharded.put_batch(mesh, batch)
    state, metrics = compiled(state, device_batch, jax.random.key(0))  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        state, metrics = compiled(state, device_batch, jax.random.key(i + 1))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), compile_s


def compiled_memory(config, pairs, chunks, length, mesh):
    step_config = steps.StepConfig(gradcache_chunks=chunks)
    model, tx, example, shardings, fn = setup("pairs", config, step_config, mesh)
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype),
                         __import__("flax").linen.meta.unbox(sharded.abstract_state(model, tx, example)))
    batch = PAIRS.batch_shapes(pairs, dict.fromkeys(PAIRS.sides, length))
    _, memory = sharded.compile_step(fn, mesh, shardings, state, batch)
    return memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes \
        - memory.alias_size_in_bytes


def measure_steps(preset="base-de", compute_dtype="float32", mlm_batch_size=2, pair_batch_size=16, pair_chunks=1,
                  repeats=3, matmul_sizes=(1024, 2048, 3072), attention_impl="auto") -> dict:
    """The matmul peak and both steps; every figure in one dict (FLOP/s, tokens/s, MFU fractions)."""
    if compute_dtype == "float32":
        jax.config.update("jax_default_matmul_precision", "highest")
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    config = get_config(preset, hidden_dropout=0.0, compute_dtype=compute_dtype, attention_impl=attention_impl)
    rng = np.random.default_rng(0)
    peak = flops.measure_matmul_peak(matmul_sizes, repeats=5, dtype=compute_dtype)
    vendor = flops.device_peak_flops(jax.devices()[0])
    out = {"preset": preset, "compute_dtype": compute_dtype, "device": jax.devices()[0].device_kind,
           "matmul_peak_flops": peak, "vendor_peak_flops": vendor}

    predictions = int(np.ceil(0.3 * MLM_LENGTH * 1.25 / 8) * 8)
    batch = mlm_batch(mlm_batch_size, MLM_LENGTH, config.vocab_size, rng)
    mlm_config = steps.StepConfig(max_predictions=predictions, dropout=False)
    seconds, compile_s = time_step("mlm", config, mlm_config, batch, mesh, repeats)
    train_flops = MLM.train_flops(config, mlm_config, batch)
    out["mlm"] = {"batch": mlm_batch_size, "length": MLM_LENGTH, "seconds": seconds, "compile_s": compile_s,
                  "tokens_per_s": mlm_batch_size * MLM_LENGTH / seconds, "flops_per_s": train_flops / seconds}

    batch = pair_batch(pair_batch_size, PAIR_LENGTH, config.vocab_size, rng)
    seconds, compile_s = time_step("pairs", config, steps.StepConfig(dropout=False, gradcache_chunks=pair_chunks),
                                   batch, mesh, repeats)
    train_flops = PAIRS.train_flops(config, MODEL_FLOPS_STEP, batch)
    out["pairs"] = {"batch": pair_batch_size, "length": PAIR_LENGTH, "gradcache_chunks": pair_chunks,
                    "seconds": seconds, "compile_s": compile_s,
                    "tokens_per_s": 2 * pair_batch_size * PAIR_LENGTH / seconds, "flops_per_s": train_flops / seconds}
    # On a shared machine the peak measured before the steps may have met more contention than they did:
    # measure it again after them and keep the better of the two.
    peak = max(peak, flops.measure_matmul_peak(matmul_sizes, repeats=5, dtype=compute_dtype))
    out["matmul_peak_flops"] = peak
    for key in ("mlm", "pairs"):
        out[key]["mfu_measured_peak"] = out[key]["flops_per_s"] / peak
        out[key]["mfu_vendor_peak"] = out[key]["flops_per_s"] / vendor if vendor else None
    return out


def measure_gradcache(preset="base-de", compute_dtype="float32", chunk=32, length=32, small=256,
                      large=4096, attention_impl="auto") -> dict:
    """Compiled per-device bytes of the pair step: GradCache at ``small`` and ``large`` pairs (chunks of
    ``chunk`` pairs) and the plain step at ``small`` pairs. Nothing is run: XLA's buffer assignment."""
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    config = get_config(preset, hidden_dropout=0.0, compute_dtype=compute_dtype, attention_impl=attention_impl)
    return {"chunk": chunk, "length": length, "small": small, "large": large,
            "gradcache_small_bytes": compiled_memory(config, small, small // chunk, length, mesh),
            "gradcache_large_bytes": compiled_memory(config, large, large // chunk, length, mesh),
            "plain_small_bytes": compiled_memory(config, small, 1, length, mesh)}


def gib(x):
    return x / 2 ** 30


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--mlm_batch", type=int, default=2)
    parser.add_argument("--pair_batch", type=int, default=16)
    parser.add_argument("--pair_chunks", type=int, default=1, help="GradCache chunks of the timed pair step")
    parser.add_argument("--preset", default="base-de")
    parser.add_argument("--compute_dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--gradcache_chunk", type=int, default=32, help="pairs per GradCache chunk")
    args = parser.parse_args()

    sizes = (1024, 2048, 3072) if jax.default_backend() == "cpu" else (4096, 8192)
    r = measure_steps(args.preset, args.compute_dtype, args.mlm_batch, args.pair_batch, args.pair_chunks,
                      args.steps, sizes)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {r['device']}, preset {args.preset}, "
          f"{args.compute_dtype}")
    print(f"XLA {args.compute_dtype} matmul peak (best of n = {sizes}): {r['matmul_peak_flops'] / 1e9:.1f} GFLOP/s\n")
    print(f"{'step':30s} {'tokens/s':>10s} {'GFLOP/s':>9s} {'MFU vs peak':>12s}")
    for key, name in (("mlm", f"MLM step {args.mlm_batch} x {MLM_LENGTH}"),
                      ("pairs", f"pair step {args.pair_batch} x 2 x {PAIR_LENGTH}")):
        m = r[key]
        print(f"{name:30s} {m['tokens_per_s']:10.0f} {m['flops_per_s'] / 1e9:9.1f} {m['mfu_measured_peak']:12.1%}")

    if not args.skip_memory:
        g = measure_gradcache(args.preset, args.compute_dtype, args.gradcache_chunk)
        print(f"\nGradCache: compiled pair step memory per device, {g['length']} tokens per side, chunks of "
              f"{g['chunk']} pairs: {g['small']} pairs {gib(g['gradcache_small_bytes']):.2f} GiB, {g['large']} pairs "
              f"{gib(g['gradcache_large_bytes']):.2f} GiB (ratio "
              f"{g['gradcache_large_bytes'] / g['gradcache_small_bytes']:.3f}; flat is 1.0); plain step at "
              f"{g['small']} pairs {gib(g['plain_small_bytes']):.2f} GiB")


if __name__ == "__main__":
    main()
