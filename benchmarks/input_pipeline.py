"""Input-pipeline throughput per worker process, its scaling with workers, and the cost of a resume.

    python benchmarks/input_pipeline.py                  # full run (a few minutes on 2 cores)
    python benchmarks/input_pipeline.py --quick          # under 2 minutes
    python benchmarks/input_pipeline.py --tokenizer DIR --models tiny

Prints (nothing here is a test; it prints numbers):

1. Throughput, steady state, for the bundled demo data and a freshly trained 8,192-token tokenizer:
   MLM (``mlm_de`` by default: tokenising in the workers, packing + whole-word masking in this process, rows
   of 512) and pairs (``pairs_de_en``, query 64 / passage 128), batch 32, with ``num_workers`` 1 and 2 per task
   (``prefetch`` default). Start-up (construction to the first batch, and to the first batch of every task
   of the mixture, whose workers start when it is first drawn) is reported apart; then ``--repeats``
   windows of K batches are timed and the medians printed: tokens/s (every position of the batch arrays) and
   real tokens/s (mask 1), the rate per worker process, the CPU this process (``main``: receiving the
   workers' output, packing, masking, batch checks) and the workers used (cores busy during the window, from
   ``psutil``), tokens per worker CPU-second (what one fully busy worker core makes), and the scaling
   2 workers / 1 worker. A mixture has one set of workers per task, so ``num_workers=1`` on a two-task
   mixture already runs two worker processes.
2. Cores per host to feed one H200 at 530k MLM tokens/s: ceil(530000 / MLM tokens per worker core-second)
   input workers plus one core for the consuming (training) process.
3. Resume cost: a text task over ~1.1M generated one-line documents; the one-off indexing pass (proportional
   to the corpus) is timed apart, then ``set_state`` + the first batch at positions 10, 10^4 and 10^6 of the
   epoch (``num_workers=0``, ``prefetch=0``: the work itself), median of ``--resume_repeats``.
4. Optionally (``--models tiny,base-de``) a jitted JinaBertForMaskedLM forward+backward at the MLM batch,
   against the MLM pipeline rate.

grain's worker processes are spawned and re-import this file, so the heavy imports (TensorFlow via
``tasks``) are inside functions, not at the top.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

H200_MLM_TOKENS_S = 530_000  # MLM tokens/s one H200 trains (README)
MLM_LENGTHS = {"text": 512}
PAIR_LENGTHS = {"query": 64, "passage": 128}
RESUME_TASK = "bench_resume_text"


# ----------------------------------------------------------------------------------------------- helpers

def _count(batch: dict) -> tuple[int, int, int]:
    """(examples, token positions, real tokens) of a batch: over every ``*mask`` array."""
    masks = [v for k, v in batch.items() if k.endswith("mask")]
    return len(masks[0]), sum(m.size for m in masks), sum(int(m.sum()) for m in masks)


def _cpu_seconds(processes) -> dict[int, float]:
    out = {}
    for p in processes:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except Exception:  # a process that exited
            pass
    return out


def _load() -> str:
    try:
        return "load average %.1f / %.1f / %.1f (1/5/15 min)" % os.getloadavg()
    except OSError:
        return "load average unknown"


def time_pipeline(name: str, batch_size: int, lengths: dict, batches: int, **kwargs) -> dict:
    """End-to-end rates over ``batches`` batches counted from the iterator's construction (start-up included).
    Kept for ``benchmarks/suite.py``; ``kwargs`` go to ``make_batch_iterator`` (e.g. ``num_workers``)."""
    from tasks import batching

    start = time.perf_counter()
    first = 0.0
    rows = tokens = real = 0
    with batching.make_batch_iterator(name, batch_size=batch_size, seed=0, sequence_lengths=lengths,
                                      **kwargs) as it:
        for i in range(batches):
            n, t, r = _count(next(it))
            if i == 0:
                first = time.perf_counter() - start
            rows, tokens, real = rows + n, tokens + t, real + r
        seconds = time.perf_counter() - start
        epochs = {t: s["epoch"] for t, s in it.get_state()["tasks"].items()}
    return {"first_s": first, "examples_s": rows / seconds, "tokens_s": tokens / seconds,
            "real_tokens_s": real / seconds, "epochs": epochs}


# ---------------------------------------------------------------------------------------- 1. throughput

def steady_state(name: str, lengths: dict, batch_size: int, num_workers: int, batches: int,
                 repeats: int) -> dict:
    """Start-up, then ``repeats`` windows of ``batches`` batches each; medians over the windows."""
    from tasks import batching

    try:
        import psutil
        me = psutil.Process()
    except ImportError:  # CPU columns left empty
        psutil = me = None

    start = time.perf_counter()
    it = batching.make_batch_iterator(name, batch_size=batch_size, seed=0, sequence_lengths=lengths,
                                      num_workers=num_workers)
    try:
        seen = {next(it)["task"]}
        first_s = time.perf_counter() - start
        names = {t.name for t in it.tasks}
        while seen != names:  # every task's workers started (a task's stream opens when it is first drawn)
            seen.add(next(it)["task"])
        warm_s = time.perf_counter() - start
        windows = []
        for _ in range(repeats):
            workers = me.children(recursive=True) if me else []
            cpu0 = _cpu_seconds([me, *workers]) if me else {}
            t0 = time.perf_counter()
            examples = tokens = real = 0
            for _ in range(batches):
                n, t, r = _count(next(it))
                examples, tokens, real = examples + n, tokens + t, real + r
            dt = time.perf_counter() - t0
            cpu1 = _cpu_seconds([me, *workers]) if me else {}
            used = {pid: cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1}
            main_cpu = used.pop(me.pid, float("nan")) if me else float("nan")
            worker_cpu = sum(used.values()) if me else float("nan")
            windows.append({"seconds": dt, "tokens_s": tokens / dt, "real_tokens_s": real / dt,
                            "examples_s": examples / dt, "main_cores": main_cpu / dt,
                            "worker_cores": worker_cpu / dt,
                            "tokens_per_worker_cpu_s": tokens / worker_cpu if worker_cpu else float("nan"),
                            "tokens_per_main_cpu_s": tokens / main_cpu if main_cpu else float("nan")})
        epochs = {t: s["epoch"] for t, s in it.get_state()["tasks"].items()}
    finally:
        it.close()
    result = {k: statistics.median(w[k] for w in windows) for k in windows[0]}
    processes = num_workers * len(names)
    result.update(first_s=first_s, warm_s=warm_s, processes=processes, tasks=len(names), epochs=epochs,
                  tokens_s_per_worker=result["tokens_s"] / processes, windows=[w["tokens_s"] for w in windows])
    return result


def print_throughput(results: dict) -> None:
    print(f"{'workload':<34}{'wk/task':>7}{'procs':>6}{'1st s':>7}{'warm s':>7}{'tokens/s':>10}"
          f"{'real tok/s':>11}{'ex/s':>7}{'tok/s/proc':>11}{'main cores':>11}{'wk cores':>9}"
          f"{'tok/wk-cpu-s':>13}{'tok/main-cpu-s':>15}  window tokens/s")
    for (label, workers), r in results.items():
        print(f"{label:<34}{workers:>7}{r['processes']:>6}{r['first_s']:>7.1f}{r['warm_s']:>7.1f}"
              f"{r['tokens_s']:>10.0f}{r['real_tokens_s']:>11.0f}{r['examples_s']:>7.0f}"
              f"{r['tokens_s_per_worker']:>11.0f}{r['main_cores']:>11.2f}{r['worker_cores']:>9.2f}"
              f"{r['tokens_per_worker_cpu_s']:>13.0f}{r['tokens_per_main_cpu_s']:>15.0f}  "
              f"{' '.join(f'{w:.0f}' for w in r['windows'])}")


# ------------------------------------------------------------------------------------------ 3. resume

def write_corpus(path: str, lines: int, seed: int = 0) -> int:
    """``lines`` one-line documents of 3-8 seeded pseudo-words from a 400-word vocabulary; returns bytes."""
    rng = np.random.default_rng(seed)
    syllables = ["ka", "ne", "ro", "ti", "sa", "lu", "men", "der", "ing", "bo", "va", "ste", "ul", "ach", "or",
                 "pi", "en", "wa", "gen", "is"]
    vocab = sorted({"".join(rng.choice(syllables, int(rng.integers(1, 4)))) for _ in range(600)})[:400]
    counts = rng.integers(3, 9, lines)
    words = np.asarray(vocab, dtype=object)[rng.integers(0, len(vocab), int(counts.sum()))]
    ends = np.cumsum(counts)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(0, lines, 100_000):
            chunk = range(i, min(i + 100_000, lines))
            f.write("".join(" ".join(words[ends[j] - counts[j]:ends[j]]) + "\n" for j in chunk))
    return os.path.getsize(path)


def resume_cost(tok_dir: str, lines: int, positions: list[int], repeats: int, workdir: str) -> dict:
    """Indexing pass, then ``set_state`` + first batch at each position (rows of 128, batch 8, no workers)."""
    import seqio

    from tasks import batching, registry

    path = os.path.join(workdir, "resume_corpus.txt")
    t0 = time.perf_counter()
    size = write_corpus(path, lines)
    write_s = time.perf_counter() - t0
    registry.register_text_task(RESUME_TASK, [path], tok_dir)
    task = seqio.get_mixture_or_task(RESUME_TASK)
    t0 = time.perf_counter()
    records = batching.records_of(task, "train")  # the one-off indexing pass (cached on the task object)
    index_s = time.perf_counter() - t0

    def fresh():
        return batching.make_batch_iterator(RESUME_TASK, batch_size=8, seed=0, sequence_lengths={"text": 128},
                                            num_workers=0, prefetch=0)

    with fresh() as it:
        t0 = time.perf_counter()
        next(it)
        first_s = time.perf_counter() - t0
        base = copy.deepcopy(it.get_state())
        t0 = time.perf_counter()
        for _ in range(20):  # sequential reading from here: the cost a replaying resume would pay per example
            next(it)
        sequential_s = time.perf_counter() - t0
        docs = it.get_state()["tasks"][RESUME_TASK]["position"] - base["tasks"][RESUME_TASK]["position"]
    times = {}
    with fresh() as it:
        for p in positions:
            runs = []
            for _ in range(repeats):
                state = copy.deepcopy(base)
                state["tasks"][RESUME_TASK].update(position=p, offset=0)
                t0 = time.perf_counter()
                it.set_state(state)
                next(it)
                runs.append(time.perf_counter() - t0)
            times[p] = {"median_s": statistics.median(runs), "runs": runs,
                        "epoch": it.get_state()["tasks"][RESUME_TASK]["epoch"]}
    if batching.records_of(task, "train") is not records:
        raise RuntimeError("the corpus was indexed again")
    return {"lines": len(records), "bytes": size, "write_s": write_s, "index_s": index_s, "first_s": first_s,
            "docs_per_s": docs / sequential_s, "times": times}


# ------------------------------------------------------------------------------------ 4. model step

def time_model(preset: str, batch_size: int, length: int, vocab_size: int, steps: int) -> float:
    """Tokens/s of a jitted MLM forward+backward (cross-entropy over 30% of positions) at [batch, length]."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from bilingual import JinaBertForMaskedLM, get_config

    config = get_config(preset, vocab_size=max(vocab_size, 8192), hidden_dropout=0.0)
    model = JinaBertForMaskedLM(config)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, vocab_size, (batch_size, length)), jnp.int32)
    mask = jnp.ones_like(ids)
    # as a trainer does: MLM logits only at the selected 30% of positions (``logits_at``), not [B, L, V]
    positions = jnp.asarray(np.stack([rng.permutation(length)[: int(0.3 * length)] for _ in range(batch_size)]))
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids[:1, :8], mask[:1, :8])["params"])

    @jax.jit
    def step(p):
        def loss_fn(p):
            out = model.apply({"params": p}, ids, mask, method=lambda m, i, a: m.bert(i, a))
            hidden = jnp.take_along_axis(out.last_hidden_state, positions[..., None], axis=1)
            logits = model.apply({"params": p}, hidden, method=JinaBertForMaskedLM.logits_at)
            labels = jnp.take_along_axis(ids, positions, axis=1)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return jax.value_and_grad(loss_fn)(p)

    jax.block_until_ready(step(params))  # compile
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(step(params))
    return batch_size * length * steps / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ main

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer batches and one window (under 2 minutes); explicit flags still win")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--length", type=int, default=512, help="MLM row length")
    parser.add_argument("--workers", default="1,2", help="num_workers values to compare (per task)")
    parser.add_argument("--mlm_task", default="mlm_de", help="a single task: 1 worker = 1 process (a mixture runs one set of workers per task)")
    parser.add_argument("--pair_task", default="pairs_de_en", help="as --mlm_task, for pairs")
    parser.add_argument("--mlm_batches", type=int, default=None, help="MLM batches per timed window (12)")
    parser.add_argument("--pair_batches", type=int, default=None, help="pair batches per timed window (60)")
    parser.add_argument("--repeats", type=int, default=None, help="timed windows per configuration (3)")
    parser.add_argument("--resume_lines", type=int, default=1_100_000, help="documents in the resume corpus")
    parser.add_argument("--resume_repeats", type=int, default=None, help="set_state + batch timings (3)")
    parser.add_argument("--skip_resume", action="store_true")
    parser.add_argument("--models", default="", help="comma-separated presets for the model step ('' skips)")
    parser.add_argument("--large_model_batch", type=int, default=2,
                        help="batch for presets other than tiny (a base-size step at 32x512 takes minutes here)")
    parser.add_argument("--model_steps", type=int, default=2)
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir (default: train one on the demo data)")
    args = parser.parse_args(argv)
    quick = {"mlm_batches": 4, "pair_batches": 20, "repeats": 1, "resume_repeats": 1}
    full = {"mlm_batches": 12, "pair_batches": 60, "repeats": 3, "resume_repeats": 3}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    from bilingual import tokenizer as bpe
    from tasks import demo

    begin = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix="bench-pipeline-")
    try:
        tok_dir = args.tokenizer
        if tok_dir is None:
            tok_dir = os.path.join(scratch, "tokenizer")
            t0 = time.perf_counter()
            bpe.train_and_save({"de": [str(demo.DEMO_TRAIN_DIR / "mlm/de.txt")],
                                "en": [str(demo.DEMO_TRAIN_DIR / "mlm/en.txt")]}, tok_dir, vocab_size=8192,
                               show_progress=False)
            print(f"tokenizer: trained 8192 tokens on the demo de/en text in {time.perf_counter() - t0:.1f} s")
        demo.register_demo_tasks(tok_dir)
        print(f"machine: {os.cpu_count()} CPU cores, {_load()} at start")

        # 1. throughput -----------------------------------------------------------------------------------
        workers = [int(w) for w in args.workers.split(",") if w]
        mlm_label = f"MLM {args.mlm_task} (rows of {args.length})"
        pair_label = f"pairs {args.pair_task} (q 64 / p 128)"
        results = {}
        if workers:
            print(f"\n1. steady-state throughput, batch {args.batch_size}; medians of {args.repeats} window(s) "
                  f"of {args.mlm_batches} MLM / {args.pair_batches} pair batches after start-up (prefetch 2)")
            for label, name, lengths, batches in (
                    (mlm_label, args.mlm_task, {"text": args.length}, args.mlm_batches),
                    (pair_label, args.pair_task, PAIR_LENGTHS, args.pair_batches)):
                for w in workers:
                    results[(label, w)] = steady_state(name, lengths, args.batch_size, w, batches, args.repeats)
            print_throughput(results)
            print("  columns: wk/task = num_workers; procs = worker processes (per task x tasks); 1st s / warm s ="
                  " seconds to the first batch / to the first batch of every task; tokens/s = batch positions, "
                  "real = mask 1; tok/s/proc = tokens/s / procs; main / wk cores = CPU busy in this process / in "
                  "the workers; tok/wk-cpu-s = tokens per worker CPU-second (the rate of one fully busy worker "
                  "core); tok/main-cpu-s = the same for this process")
            for label in (mlm_label, pair_label):
                if (label, 1) in results and (label, 2) in results:
                    ratio = results[(label, 2)]["tokens_s"] / results[(label, 1)]["tokens_s"]
                    print(f"  scaling {label}: 2 workers / 1 worker = {ratio:.2f}x (goal >= 1.7x on 2 cores)")
            epochs = {f"{label} x{w}": r["epochs"] for (label, w), r in results.items()}
            print(f"  epochs reached (per task, at the end): {epochs}")

        # 2. cores per H200 -------------------------------------------------------------------------------
        one_workers = 1 if (mlm_label, 1) in results else (workers[0] if workers else None)
        one = results.get((mlm_label, one_workers))
        if one:
            per_core = one["tokens_per_worker_cpu_s"]
            print(f"\n2. cores to feed one H200 at {H200_MLM_TOKENS_S:,} MLM tokens/s (MLM rows of {args.length}, "
                  f"measured above with num_workers={one_workers})")
            if math.isfinite(per_core) and per_core > 0:
                cores = math.ceil(H200_MLM_TOKENS_S / per_core)
                print(f"  README: one input worker core makes {per_core:,.0f} MLM tokens/s (tokenising, rows of "
                      f"{args.length}; {one['tokens_s_per_worker']:,.0f} tokens/s per worker process by wall "
                      f"clock here), so one H200 at {H200_MLM_TOKENS_S // 1000}k MLM tokens/s needs "
                      f"ceil({H200_MLM_TOKENS_S} / {per_core:,.0f}) = {cores} worker cores + 1 for the consuming "
                      f"process = {cores + 1} CPU cores per H200.")
                main_rate = one["tokens_per_main_cpu_s"]
                note = ("enough" if main_rate >= H200_MLM_TOKENS_S else
                        f"NOT enough at this cost: it would need {H200_MLM_TOKENS_S / main_rate:.1f} cores' worth")
                print(f"  the consuming process (receiving the workers' output, packing, masking, batch checks) "
                      f"makes {main_rate:,.0f} MLM tokens per CPU-second: one core for it is {note}.")
            else:
                print("  (no per-core figure: psutil is missing)")

        # 3. resume ---------------------------------------------------------------------------------------
        if not args.skip_resume:
            positions = [p for p in (10, 10 ** 4, 10 ** 6) if p < args.resume_lines]
            r = resume_cost(tok_dir, args.resume_lines, positions, args.resume_repeats, scratch)
            print(f"\n3. resume cost: text task over {r['lines']:,} generated one-line documents "
                  f"({r['bytes'] / 1e6:.1f} MB, written in {r['write_s']:.1f} s); MLM rows of 128, batch 8, "
                  f"num_workers=0, prefetch=0")
            print(f"  one-off indexing pass (validating read of the corpus, cached per task object): "
                  f"{r['index_s']:.1f} s = {r['lines'] / r['index_s']:,.0f} rows/s (proportional to the corpus, "
                  f"paid at every start wherever the run resumes)")
            print(f"  first batch of a fresh iterator after indexing: {r['first_s'] * 1000:.0f} ms; reading on "
                  f"sequentially: {r['docs_per_s']:,.0f} documents/s")
            print(f"  {'position':>10}{'epoch':>7}{'set_state + next (median)':>28}   runs (ms)   "
                  f"reading sequentially to it instead")
            for p, t in r["times"].items():
                print(f"  {p:>10,}{t['epoch']:>7}{t['median_s'] * 1000:>25.0f} ms   "
                      f"{' '.join(f'{x * 1000:.0f}' for x in t['runs']):<11} {p / r['docs_per_s']:>8.1f} s")
            medians = [t["median_s"] for t in r["times"].values()]
            print(f"  max / min = {max(medians) / min(medians):.2f}x (goal: flat within 2x)")

        # 4. model step -----------------------------------------------------------------------------------
        models = [p for p in args.models.split(",") if p]
        if models and results:
            vocab_size = bpe.load(tok_dir).get_vocab_size()
            best = max(r["tokens_s"] for (label, _), r in results.items() if label == mlm_label)
            print(f"\n4. model step vs the MLM pipeline ({best:,.0f} tokens/s, best worker count above)")
            for preset in models:
                batch = args.batch_size if preset == "tiny" else min(args.batch_size, args.large_model_batch)
                tokens_s = time_model(preset, batch, args.length, vocab_size, args.model_steps)
                print(f"  model step {preset:<8} MLM forward+backward (jit, f32), batch {batch}x{args.length}: "
                      f"{tokens_s:>10.0f} tokens/s | MLM pipeline / model = {best / tokens_s:6.1f}x (goal >= 5x)")
        print(f"\n{_load()} at the end; {time.perf_counter() - begin:.0f} s in all")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
