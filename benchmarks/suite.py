"""One command, one table: every benchmark of the project side by side with its baseline, in one run.

    python benchmarks/suite.py                      # `make bench`: CPU, base-de in float32, ~10-14 min on 2 cores
    python benchmarks/suite.py --profile gpu        # `benchmarks/gpu.sh`: one GPU, base-de with bf16 compute
    python benchmarks/suite.py --json bench.json    # also write every figure as JSON
    python benchmarks/suite.py --sections train,gradcache --preset tiny   # a quick partial run

Rows (each measured in a fresh subprocess, so peak memory is that measurement's own):

* inference: the JAX encoder (`bilingual.Encoder`) versus the same random `base-de` weights exported to a
  Hugging Face directory and run by sentence-transformers in PyTorch (the export's own modeling code):
  tokens/s at a batch of 32 x 128 tokens (median of warm calls; the two sides alternate twice and each keeps
  its better run, so a neighbour's burst on a shared machine does not decide the ratio), and time and peak
  memory for one 8192-token document (peak RSS on CPU, peak allocated device memory on GPU);
* attention: one document's attention forward (base-de's 12 heads of 64, batch 1) per implementation that
  runs on the platform (CPU: dense and chunked at 2048 and 8192 tokens; GPU: dense, chunked, cudnn and the
  Pallas flash kernel; TPU: dense, chunked, flash) at 8192 tokens: warm time, XLA's compiled temporary
  memory and the peak device memory (RSS on CPU), each in its own process;
* train steps: the MLM step (512 tokens, 30% predicted) and the pair step (bi-directional InfoNCE, 128 tokens
  a side): tokens/s and MFU against the matmul peak measured in the same run (and the vendor peak on GPU);
* GradCache: the compiled pair step's memory at 256 and at 4096 pairs (same chunk size), and the plain step
  at 256 pairs;
* input pipeline (CPU; needs tensorflow/seqio): MLM packing+masking and pair batches, tokens/s, against the
  train steps they have to feed (the `tiny` step, the hardest to keep fed, and the `base-de` step above);
* packing (needs tensorflow/seqio): the pair step on real batches of the bundled de-en and de pairs
  (`pairs_mix_de`, truncated at 512), real texts per second, packed (`bilingual.packing`: rows of
  `pack_row_length` tokens and `pack_long_rows` rows of 512 per unit for longer texts, as
  `gin/stages/pairs.gin`) vs padded to 512 vs padded to each batch's longest text (every shape compiled
  before timing); packed and longest with `pack_chunks` GradCache chunks (the packer's units = chunks),
  padded to 512 with `pad512_chunks` (0: the same), which only bounds its memory: any chunking > 1 computes
  the same FLOPs.

Figures vary run to run on a shared machine: compare ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
SECTIONS = ("inference", "attention", "train", "gradcache", "pipeline", "packing")


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes of one run. ``cpu`` fits 15 minutes on 2 cores and ~8 GB; ``gpu`` fills one H100/H200 briefly."""

    preset: str = "base-de"
    compute_dtype: str = "float32"
    attention_impl: str = "auto"
    matmul_sizes: tuple = (1024, 2048, 3072)
    mlm_batch: int = 2
    pair_batch: int = 16
    pair_chunks: int = 1
    step_repeats: int = 3
    infer_rows: int = 32
    infer_length: int = 128
    infer_repeats: int = 3
    gradcache_chunk: int = 32
    pipeline_mlm_batches: int = 30
    pipeline_pair_batches: int = 200
    # the packing row: base-de padded to 512 tokens asks XLA's CPU client for 37 GB at 16 pairs (measured), more
    # than a 2-core, 23 GB machine has, so the CPU profile runs the tiny preset at a batch where packing has
    # texts to pack. Sizes from bilingual.packing.length_report on 2,048 of these texts (framed lengths mean
    # 17-18, p99 62-63, max 123): units of 128 texts in rows of 128 need 20-22 tokens per text and no long
    # row (one kept for texts above 128); units of 4 texts would need 64
    pack_preset: str = "tiny"
    pack_batch: int = 128
    pack_batches: int = 2
    pack_budget: int = 24
    pack_row_length: int = 128
    pack_long_rows: int = 1
    # GradCache chunks of the packed and padded-to-longest variants (packed units = chunks) and of padded to
    # 512 (0: the same); on CPU, base-de padded to 512 fits only in chunks of about 4 pairs (~1.15 GB of
    # XLA:CPU buffers per 512-token text, measured: 37 GB at 16 pairs unchunked)
    pack_chunks: int = 1
    pad512_chunks: int = 0
    attention_lengths: tuple = (2048, 8192)
    attention_impls: str = "dense,chunked"


PROFILES = {
    "cpu": Profile(),
    "gpu": Profile(compute_dtype="bfloat16", matmul_sizes=(4096, 8192), mlm_batch=64, pair_batch=4096,
                   pair_chunks=16, step_repeats=10, infer_repeats=20, pack_preset="base-de",
                   attention_lengths=(8192,), attention_impls="dense,chunked,cudnn,flash"),
    "tpu": Profile(compute_dtype="bfloat16", matmul_sizes=(4096, 8192), mlm_batch=64, pair_batch=4096,
                   pair_chunks=16, step_repeats=10, infer_repeats=20, pack_preset="base-de",
                   attention_lengths=(8192,), attention_impls="dense,chunked,flash"),
}


# ---------------------------------------------------------------- children: one measurement per process

def _child_train(p: Profile) -> dict:
    sys.path.insert(0, str(HERE))
    import train_step

    return train_step.measure_steps(p.preset, p.compute_dtype, p.mlm_batch, p.pair_batch, p.pair_chunks,
                                    p.step_repeats, p.matmul_sizes, p.attention_impl)


def _child_gradcache(p: Profile) -> dict:
    sys.path.insert(0, str(HERE))
    import train_step

    return train_step.measure_gradcache(p.preset, p.compute_dtype, p.gradcache_chunk,
                                        attention_impl=p.attention_impl)


def _child_pipeline(p: Profile) -> dict:
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    import input_pipeline

    from bilingual import tokenizer as bpe
    from tasks import demo

    tok_dir = tempfile.mkdtemp(prefix="bench-tok-")
    bpe.train_and_save({"de": [str(demo.DEMO_TRAIN_DIR / "mlm/de.txt")],
                        "en": [str(demo.DEMO_TRAIN_DIR / "mlm/en.txt")]}, tok_dir, vocab_size=8192,
                       show_progress=False)
    demo.register_demo_tasks(tok_dir)
    mlm = input_pipeline.time_pipeline("mlm_de_en", 32, {"text": 512}, p.pipeline_mlm_batches)
    pairs = input_pipeline.time_pipeline("pairs_mix_de", 32, {"query": 64, "passage": 128},
                                         p.pipeline_pair_batches)
    tiny = input_pipeline.time_model("tiny", 32, 512, bpe.load(tok_dir).get_vocab_size(), 2)
    return {"mlm": mlm, "pairs": pairs, "tiny_mlm_step_tokens_per_s": tiny}


def _child_packing(p: Profile) -> dict:
    """Pair steps on real batches: packed vs padded to 512 vs padded to each batch's longest text."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    import jax
    import numpy as np
    import train_step

    from bilingual import get_config, sharding
    from bilingual import tokenizer as bpe
    from bilingual.training import sharded, steps
    from tasks import batching, demo

    if p.compute_dtype == "float32":
        jax.config.update("jax_default_matmul_precision", "highest")
    tok_dir = tempfile.mkdtemp(prefix="bench-tok-")
    bpe.train_and_save({"de": [str(demo.DEMO_TRAIN_DIR / "mlm/de.txt")],
                        "en": [str(demo.DEMO_TRAIN_DIR / "mlm/en.txt")]}, tok_dir, vocab_size=8192,
                       show_progress=False)
    demo.register_demo_tasks(tok_dir)
    lengths = {"query": 512, "passage": 512}
    sides = ("query", "passage")
    packing = {"tokens_per_text": dict.fromkeys(sides, p.pack_budget), "units": p.pack_chunks}
    if p.pack_row_length < 512:
        packing.update(row_length=dict.fromkeys(sides, p.pack_row_length),
                       long_rows=dict.fromkeys(sides, p.pack_long_rows))

    def batches(**options):
        with batching.make_batch_iterator("pairs_mix_de", batch_size=p.pack_batch, sequence_lengths=lengths,
                                          prefetch=0, **options) as it:
            return [{k: v for k, v in next(it).items() if k not in ("task", "task_type")}
                    for _ in range(p.pack_batches)]

    padded = batches()
    packed = batches(packing=packing)
    longest = []
    for b in padded:  # the same texts, each batch cut to its own longest text
        n = int(max(b["query_mask"].sum(1).max(), b["passage_mask"].sum(1).max()))
        longest.append({k: v[:, :n] for k, v in b.items()})
    real_tokens = sum(int(b["query_mask"].sum() + b["passage_mask"].sum()) for b in padded)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    config = get_config(p.pack_preset, hidden_dropout=0.0, compute_dtype=p.compute_dtype,
                        attention_impl=p.attention_impl)
    chunks_512 = p.pad512_chunks or p.pack_chunks
    setups = {c: train_step.setup("pairs", config, steps.StepConfig(dropout=False, gradcache_chunks=c), mesh)
              for c in {p.pack_chunks, chunks_512}}
    out = {"batch": p.pack_batch, "batches": p.pack_batches, "chunks": p.pack_chunks, "chunks_512": chunks_512,
           "real_tokens": real_tokens, "block": [list(packed[0]["query_ids"].shape), list(packed[0]["query_long_ids"].shape)],
           "longest": [int(b["query_ids"].shape[1]) for b in longest]}
    for name, run in (("packed", packed), ("padded_512", padded), ("padded_longest", longest)):
        model, tx, example, shardings, fn = setups[chunks_512 if name == "padded_512" else p.pack_chunks]
        state, _ = sharded.init_state(model, tx, mesh, jax.random.key(0), example)
        compiled = {}
        for b in run:  # compile every shape first: the timing is of warm steps
            key = tuple(sorted((k, v.shape) for k, v in b.items()))
            if key not in compiled:
                compiled[key] = sharded.compile_step(fn, mesh, shardings, state, b)[0]
        seconds = 0.0
        for i, b in enumerate(run):
            step = compiled[tuple(sorted((k, v.shape) for k, v in b.items()))]
            device_batch = sharded.put_batch(mesh, b)
            start = time.perf_counter()
            state, metrics = step(state, device_batch, jax.random.key(i))
            jax.block_until_ready(metrics)
            seconds += time.perf_counter() - start
        out[name] = {"seconds": seconds, "texts_per_s": 2 * p.pack_batch * p.pack_batches / seconds,
                     "shapes": len(compiled), "tokens_computed": int(sum(v.size for b in run for k, v in b.items()
                                                                           if k.endswith("_ids")))}
    return out


def _run_child(args: list[str], timeout: float | None = None) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode:
        sys.stderr.write(out.stderr[-6000:])
        raise RuntimeError(f"{' '.join(args[:4])} ... failed with exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def apply_overrides(profile: Profile, items: list[str], error) -> Profile:
    """``FIELD=VALUE`` strings applied to ``profile``, each value parsed as the field's type."""
    fields = {f.name: f for f in dataclasses.fields(Profile)}
    changes = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            error(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        current = getattr(profile, name)
        try:
            if isinstance(current, tuple):
                changes[name] = tuple(int(v) for v in value.split(","))
            else:
                changes[name] = type(current)(value)
        except ValueError:
            error(f"--set {item!r}: {value!r} is not a valid {type(current).__name__}")
    return dataclasses.replace(profile, **changes)


def _section(name: str, profile_name: str, p: Profile) -> dict:
    overrides = [f"--set={k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
                 for k, v in dataclasses.asdict(p).items()]
    return _run_child([__file__, "--child", name, "--profile", profile_name, *overrides])


def run_attention(p: Profile, log) -> dict:
    """One child per (implementation, length); a failure (cuDNN refusing a shape, out of memory) is
    recorded for that cell and the others still run."""
    script = str(HERE / "attention_forward.py")
    cells = []
    for length in p.attention_lengths:
        for impl in [i.strip() for i in p.attention_impls.split(",") if i.strip()]:
            start = time.perf_counter()
            try:
                cell = _run_child([script, "--impl", impl, "--length", str(length), "--dtype", p.compute_dtype],
                                  timeout=600)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                cell = {"impl": impl, "length": length, "error": str(e)[:120]}
            cells.append(cell)
            log(f"  attention {impl} {length}: {time.perf_counter() - start:.0f} s")
    return {"cells": cells}


def run_inference(p: Profile, log) -> dict:
    script = str(HERE / "inference.py")
    common = ["--compute_dtype", p.compute_dtype, "--repeats", str(p.infer_repeats),
              "--attention_impl", p.attention_impl]
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        subprocess.run([sys.executable, script, "--child", "prepare", "--workdir", tmp, "--preset", p.preset,
                        "--sentences", "600", "--rows", str(p.infer_rows), "--length", str(p.infer_length)],
                       check=True, capture_output=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        out = {}
        # The batch measurement is short, so a neighbour's job can land on one side only: alternate the two
        # sides twice and keep each one's better run. The long document runs once per side.
        plan = [("jax", "batch"), ("torch", "batch"), ("jax", "batch"), ("torch", "batch"),
                ("jax", "long"), ("torch", "long")]
        for kind, which in plan:
            start = time.perf_counter()
            result = _run_child([script, "--child", kind, "--which", which, "--workdir", tmp, *common])
            key = f"{kind}_{which}"
            if key not in out or result["tokens_per_s"] > out[key]["tokens_per_s"]:
                out[key] = result
            log(f"  inference {kind} {which}: {time.perf_counter() - start:.0f} s "
                f"({result['tokens_per_s']:.0f} tokens/s)")
    return out


# ---------------------------------------------------------------- the table

def _gb(x):
    return f"{x / 2 ** 30:.2f}" if x is not None else "-"


def _mem(r: dict) -> tuple[str, float]:
    if "peak_device_gb" in r:
        return "peak device memory (GB)", r["peak_device_gb"]
    return "peak RSS (GB)", r["peak_rss_gb"]


def table(results: dict, p: Profile) -> list[tuple[str, str, str, str]]:
    """Rows (measurement, this project, baseline, ratio) from the sections that ran."""
    rows = []
    inf = results.get("inference")
    if inf:
        jb, tb = inf["jax_batch"], inf["torch_batch"]
        rows.append((f"inference {jb['rows']} x {p.infer_length} tokens, tokens/s",
                     f"JAX {jb['tokens_per_s']:.0f}", f"PyTorch export {tb['tokens_per_s']:.0f}",
                     f"{jb['tokens_per_s'] / tb['tokens_per_s']:.2f}x"))
        jl, tl = inf["jax_long"], inf["torch_long"]
        rows.append((f"inference one {jl['tokens']}-token doc, warm s", f"JAX {jl['second_s']:.2f}",
                     f"PyTorch export {tl['second_s']:.2f}", f"{tl['second_s'] / jl['second_s']:.2f}x faster"))
        label, jm = _mem(jl)
        _, tm = _mem(tl)
        rows.append((f"inference one {jl['tokens']}-token doc, {label}", f"JAX {jm:.2f}", f"PyTorch export {tm:.2f}",
                     f"{jm / tm:.2f}"))
        rows.append((f"inference one {jl['tokens']}-token doc, first call s", f"JAX {jl['first_s']:.1f} (compiles)",
                     f"PyTorch export {tl['first_s']:.1f}", ""))
    at = results.get("attention")
    if at:
        for length in sorted({c["length"] for c in at["cells"]}):
            cells = [c for c in at["cells"] if c["length"] == length]
            base = next((c for c in cells if c["impl"] == "dense" and "error" not in c), None)
            for c in cells:
                name = f"attention forward, 1 x {length} tokens, 12 x 64 heads, {c['impl']}"
                if "error" in c:
                    rows.append((name, "failed", c["error"], ""))
                    continue
                label, mem = _mem(c)
                ratio = (f"{base['warm_s'] / c['warm_s']:.2f}x dense's speed, "
                         f"{c['temp_bytes'] / max(base['temp_bytes'], 1):.3f}x its temp" if base and c is not base
                         else "")
                rows.append((name, f"{c['warm_s']:.3f} s, temp {_gb(c['temp_bytes'])} GB",
                             f"{label} {mem:.2f}", ratio))
    tr = results.get("train")
    if tr:
        peak = tr["matmul_peak_flops"]
        vendor = tr.get("vendor_peak_flops")
        rows.append((f"matmul peak, {tr['compute_dtype']} (measured this run)", f"{peak / 1e12:.3f} TFLOP/s",
                     f"vendor {vendor / 1e12:.0f} TFLOP/s" if vendor else "", f"{peak / vendor:.0%}" if vendor else ""))
        for key, name in (("mlm", f"MLM step {tr['mlm']['batch']} x {tr['mlm']['length']}"),
                          ("pairs", f"pair step {tr['pairs']['batch']} x 2 x {tr['pairs']['length']}"
                                    + (f", GradCache {tr['pairs']['gradcache_chunks']} chunks"
                                       if tr['pairs']['gradcache_chunks'] > 1 else ""))):
            m = tr[key]
            mfu = f"MFU {m['mfu_measured_peak']:.1%} of measured peak"
            if m.get("mfu_vendor_peak"):
                mfu += f", {m['mfu_vendor_peak']:.1%} of vendor"
            rows.append((f"{name}, tokens/s", f"{m['tokens_per_s']:.0f}", f"{m['flops_per_s'] / 1e12:.3f} TFLOP/s",
                         mfu))
    gc = results.get("gradcache")
    if gc:
        rows.append((f"GradCache pair step memory, {gc['large']} vs {gc['small']} pairs (chunks of {gc['chunk']})",
                     f"{_gb(gc['gradcache_large_bytes'])} GB", f"{_gb(gc['gradcache_small_bytes'])} GB",
                     f"{gc['gradcache_large_bytes'] / gc['gradcache_small_bytes']:.3f} (flat = 1)"))
        rows.append((f"plain pair step memory, {gc['small']} pairs (no GradCache)", f"{_gb(gc['plain_small_bytes'])} GB",
                     f"GradCache {_gb(gc['gradcache_small_bytes'])} GB",
                     f"{gc['plain_small_bytes'] / gc['gradcache_small_bytes']:.1f}x"))
    pk = results.get("packing")
    if pk:
        for base in ("padded_512", "padded_longest"):
            goal = "goal >= 5x" if base == "padded_512" else "goal >= 1.5x"
            chunks = f"{pk['chunks']}" + (f" ({pk['chunks_512']} at 512)" if pk["chunks_512"] != pk["chunks"] else "")
            rows.append((f"{p.pack_preset} pair step, real de-en/de pairs, {pk['batch']} pairs x {pk['batches']} "
                         f"batches, {chunks} GradCache chunk(s), packed rows {pk['block'][0][1:]} + long "
                         f"{pk['block'][1][1:]} per unit, texts/s: packed vs {base.replace('_', ' ')}",
                         f"{pk['packed']['texts_per_s']:.1f}", f"{pk[base]['texts_per_s']:.1f}",
                         f"{pk['packed']['texts_per_s'] / pk[base]['texts_per_s']:.2f}x ({goal})"))
        rows.append(("  tokens computed per run (real tokens " + str(pk["real_tokens"]) + ")",
                     f"packed {pk['packed']['tokens_computed']}", f"512: {pk['padded_512']['tokens_computed']}",
                     f"longest: {pk['padded_longest']['tokens_computed']}"))
    pl = results.get("pipeline")
    if pl:
        tiny = pl["tiny_mlm_step_tokens_per_s"]
        base = tr["mlm"]["tokens_per_s"] if tr else None
        rows.append(("input pipeline MLM (pack + mask, rows of 512), tokens/s", f"{pl['mlm']['tokens_s']:.0f}",
                     f"tiny MLM step {tiny:.0f}", f"{pl['mlm']['tokens_s'] / tiny:.1f}x (goal >= 5x)"))
        if base:
            rows.append((f"input pipeline MLM vs {p.preset} MLM step", f"{pl['mlm']['tokens_s']:.0f}",
                         f"{p.preset} step {base:.0f}", f"{pl['mlm']['tokens_s'] / base:.0f}x"))
        pair_step = tr["pairs"]["tokens_per_s"] if tr else None
        rows.append(("input pipeline pairs (query 64 / passage 128), tokens/s", f"{pl['pairs']['tokens_s']:.0f}",
                     f"{p.preset} pair step {pair_step:.0f}" if pair_step else "",
                     f"{pl['pairs']['tokens_s'] / pair_step:.0f}x" if pair_step else ""))
    for name, error in results.get("skipped", {}).items():
        rows.append((f"{name}", "not run", error, ""))
    return rows


def print_table(rows, header: str) -> None:
    widths = [max(len(r[i]) for r in rows + [("measurement", "bilingual", "baseline", "ratio")]) for i in range(4)]
    print(header)
    line = "  ".join(h.ljust(w) for h, w in zip(("measurement", "bilingual", "baseline", "ratio"), widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def _versions() -> str:
    import importlib.metadata as md

    parts = []
    for name in ("jax", "flax", "torch", "transformers", "sentence-transformers"):
        try:
            parts.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            parts.append(f"{name} missing")
    return ", ".join(parts)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--preset", default=None, help="encoder preset (default: the profile's, base-de)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one profile field, e.g. --set mlm_batch=8 (fields: "
                             + ", ".join(f.name for f in dataclasses.fields(Profile)) + ")")
    parser.add_argument("--child", choices=["train", "gradcache", "pipeline", "packing"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.preset:
        profile = dataclasses.replace(profile, preset=args.preset)
    profile = apply_overrides(profile, args.set, parser.error)

    if args.child:
        result = {"train": _child_train, "gradcache": _child_gradcache, "pipeline": _child_pipeline,
                  "packing": _child_packing}[args.child](
            profile)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        print(json.dumps(result))
        return

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {SECTIONS}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    results: dict = {"profile": args.profile, "config": dataclasses.asdict(profile), "skipped": {}}
    results["notes"] = {}

    def measure(name, p):
        if name == "attention":
            return run_attention(p, log)
        return run_inference(p, log) if name == "inference" else _section(name, args.profile, p)

    for name in sections:
        start = time.perf_counter()
        log(f"[bench] {name} ...")
        if name in ("pipeline", "packing") and not _has("seqio"):
            results["skipped"][name] = "seqio/tensorflow not installed here (the CPU run measures it)"
            continue
        try:
            results[name] = measure(name, profile)
        except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            if profile.attention_impl == "auto" and args.profile != "cpu" and name != "pipeline":
                # one prepared run on a borrowed accelerator: if the platform's attention kernel fails,
                # measure with the portable XLA one and say so, rather than lose the row
                results["notes"][name] = f"attention 'auto' failed ({str(e)[:120]}); measured with 'chunked'"
                try:
                    results[name] = measure(name, dataclasses.replace(profile, attention_impl="chunked"))
                except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e2:
                    results["skipped"][name] = f"failed: {e2}"[:160]
            else:
                results["skipped"][name] = f"failed: {e}"[:160]
        log(f"[bench] {name} done in {time.perf_counter() - start:.0f} s")

    header = (f"bilingual benchmarks: profile {args.profile}, preset {profile.preset}, {profile.compute_dtype} "
              f"compute; {platform.machine()}, {os.cpu_count()} CPUs"
              + (f", {results['train']['device']}" if "train" in results else "")
              + f"; {_versions()}; {time.perf_counter() - started:.0f} s in all")
    print_table(table(results, profile), header)
    for name, note in results["notes"].items():
        print(f"note ({name}): {note}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    if results["skipped"]:
        sys.exit(1 if any(v.startswith("failed") for v in results["skipped"].values()) else 0)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
