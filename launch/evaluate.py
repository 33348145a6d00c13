"""Evaluate an embedding model on an MTEB-style suite, or compare two result files.

    python -m launch.evaluate --model runs/de/checkpoints --suite de --out results.json
    python -m launch.evaluate --model runs/de/checkpoints --suite de --data /path/to/shared/data
    python -m launch.evaluate --compare before.json after.json
    python -m launch.evaluate --model runs/demo/multitask/checkpoints --suite long-de --untrained
    python -m launch.evaluate --model runs/demo/mlm/checkpoints --mlm-by-length
    python -m launch.evaluate --model runs/de/checkpoints --suite de --dims 768,256,64

``--model`` is an orbax checkpoint (root or step directory; tokenizer from ``--tokenizer``, the checkpoint
meta or a ``tokenizer/`` folder) or a Hugging Face export directory. Suites (``bilingual/evaluation/
suites.json``): de, es, en, de-en, es-en, or one task by name. ``--data`` defaults to the bundled demo data
(small subsets); point it at a directory with the same layout to run the full sets. The JSON output holds
the model path, the sha256 of every data file, all metrics and timings.

Long-document suites (long-de, long-es, long-en; ``-full`` variants read the raw novels of ``--data
shared/data``) generate passkey, needle and literature retrieval problems at 256 ... 8192 tokens
(``--lengths``, ``--documents`` per length, ``--seed``) sized with the model's tokenizer, and print one row per
task with a column per length. ``--untrained`` also scores a randomly initialised model of the same shape
and tokenizer, for reference. The runner says when it truncates: the first truncation at each length is
logged, all are counted in the result's ``truncation``, and encoding above the trained length warns once.

``--dims 768,256,64`` (Matryoshka models) scores the suite with the embeddings cut to each size: the first d
components of the un-normalised embedding, L2-normalised (``bilingual.evaluation.matryoshka``; each text is
encoded once). It prints one column per size (rows: tasks, their main metric); the JSON keeps the full
embedding's result in ``tasks`` / ``average`` as without ``--dims`` and adds ``dims`` (the sizes as given) and
``by_dim`` (``{"<d>": {"average", "tasks", "timings"}}``, ``tasks`` as in the top level), plus
``timings.dims_seconds``. Each size must be a positive integer at most the model's hidden size, none repeated.
Without ``--dims`` nothing changes, also for an export whose config.json lists ``matryoshka_dimensions``.
``--untrained``'s reference is scored at the full size only.

``--mlm-by-length`` (a masked-LM checkpoint) prints the extrapolation check instead: MLM loss and accuracy on
held-out literature (the bundled ``long_literature`` sections, never a training split) at each of
``--lengths`` (default 128 512 1024 2048 4096 8192), the same masked tokens at every length.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from launch import cli  # noqa: E402


def format_results_table(result: dict) -> str:
    rows = [("task", "type", "languages", "metric", "score", "seconds")]
    for name, task in result["tasks"].items():
        rows.append((name, task["type"], "-".join(task["languages"]), task["main_metric"],
                     f"{task['main_score']:.2f}", f"{task['seconds']:.1f}"))
    rows.append(("average", "", "", "", f"{result['average']:.2f}", f"{result['timings']['total_seconds']:.1f}"))
    return _table(rows)


def format_dims_table(result: dict) -> str:
    """One row per task, its main metric at each of ``result["dims"]`` (one column per size), then the average."""
    dims = [str(d) for d in result["dims"]]
    by_dim = result["by_dim"]
    rows = [("task", "type", "metric", *dims)]
    for name, task in result["tasks"].items():
        rows.append((name, task["type"], task["main_metric"],
                     *[f"{by_dim[d]['tasks'][name]['main_score']:.2f}" for d in dims]))
    rows.append(("average", "", "", *[f"{by_dim[d]['average']:.2f}" for d in dims]))
    return _table(rows)


def format_long_table(runs) -> str:
    """Long-document tasks, one row per (model, task): the main metric per length, the mean over lengths,
    chance (at the first length's document count) and seconds. ``runs``: a result document, or a list of
    ``(label, result document)`` (e.g. the trained model and its untrained reference)."""
    if isinstance(runs, dict):
        runs = [("", runs)]
    long = [(label, name, t) for label, run in runs for name, t in run["tasks"].items() if "lengths" in t]
    if not long:
        return ""
    labelled = any(label for label, _, _ in long)
    lengths = sorted({int(L) for _, _, t in long for L in t["lengths"]})
    rows = [(("model",) if labelled else ()) + ("task", "metric", *[str(L) for L in lengths], "mean", "chance",
                                                 "seconds")]
    for label, name, task in long:
        metric = task["main_metric"]
        cells = [f"{task['lengths'][str(L)][metric]:.1f}" if str(L) in task["lengths"] else "-" for L in lengths]
        first = next(iter(task["lengths"].values()))
        chance = first["chance_accuracy" if metric == "accuracy" else "chance_ndcg_at_10"]
        rows.append(((label,) if labelled else ()) + (name, metric, *cells, f"{task['main_score']:.1f}",
                                                       f"{chance:.1f}", f"{task['seconds']:.1f}"))
    return _table(rows)


def format_comparison(a: dict, b: dict) -> str:
    names = list(a["tasks"]) + [n for n in b["tasks"] if n not in a["tasks"]]
    rows = [("task", "metric", "A", "B", "B - A")]
    for name in names:
        ta, tb = a["tasks"].get(name), b["tasks"].get(name)
        metric = (ta or tb)["main_metric"]
        sa = ta["metrics"].get(metric) if ta else None
        sb = tb["metrics"].get(metric) if tb else None
        delta = f"{sb - sa:+.2f}" if sa is not None and sb is not None else "-"
        rows.append((name, metric, "-" if sa is None else f"{sa:.2f}", "-" if sb is None else f"{sb:.2f}", delta))
    rows.append(("average", "", f"{a['average']:.2f}", f"{b['average']:.2f}", f"{b['average'] - a['average']:+.2f}"))
    header = [f"A: {a['model']} (suite {a['suite']}, data {a['data_root']})",
              f"B: {b['model']} (suite {b['suite']}, data {b['data_root']})"]
    changed = sorted(k for k in set(a["data_files"]) & set(b["data_files"]) if a["data_files"][k] != b["data_files"][k])
    if changed:
        header.append(f"warning: data files differ between the runs: {', '.join(changed)}")
    return "\n".join(header) + "\n" + _table(rows)


def _table(rows) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def untrained_like(encoder, seed: int = 0):
    """A randomly initialised encoder of ``encoder``'s shape, with its tokenizer (the reference row)."""
    import flax.linen as nn
    import jax
    import numpy as np

    from bilingual import JinaBert
    from bilingual.encoder_api import Encoder

    params = nn.meta.unbox(JinaBert(encoder.config).init(jax.random.key(seed), np.ones((1, 8), np.int32))["params"])
    return Encoder(encoder.config, params, encoder.tokenizer, name=f"untrained (seed {seed})")


def parse_dims(value, hidden_size=None) -> list:
    """``--dims`` (a comma-separated string or a list of ints) as a list of sizes, checked against
    ``hidden_size`` when given; a ``UsageError`` naming ``--dims`` otherwise."""
    from bilingual.export.hf_config import matryoshka_dims

    try:
        return matryoshka_dims(value, "--dims", hidden_size)
    except ValueError as err:
        raise cli.UsageError(str(err)) from None


def evaluate(model, suite: str, data=None, tokenizer=None, batch_size: int = 32, max_length=None,
             limit=None, suites_file=None, compute_dtype=None, log=print, long_options=None,
             untrained: bool = False, trained_length=None, dims=None) -> dict:
    """Load ``model``, run ``suite`` and return the result document (what ``--out`` writes).

    With ``untrained`` the document also holds ``"untrained"``: the same suite on a randomly initialised
    model of the same shape and tokenizer. With ``dims`` (sizes, a list or ``"768,256,64"``) it also holds
    ``dims`` and ``by_dim``: the suite at each size (see the module docstring).
    """
    from bilingual.encoder_api import Encoder
    from bilingual.evaluation import suites
    from bilingual.evaluation.configured import ConfiguredEncoder

    if dims is not None:
        dims = parse_dims(dims)  # the syntax before the (slow) model load; the sizes after it
    tasks = suites.get_suite(suite, suites_file or suites.SUITES_FILE)
    suites.check_files(tasks, data)  # before the (slow) model load
    start = time.perf_counter()
    encoder = Encoder.from_checkpoint(model, tokenizer=tokenizer, compute_dtype=compute_dtype)
    load_seconds = time.perf_counter() - start
    configured = ConfiguredEncoder(encoder, batch_size, max_length, log=log, trained_length=trained_length)
    max_length = configured.max_length
    matryoshka = {}
    if dims is None:
        result = suites.run_suite(configured, tasks, data, limit=limit, log=log, long_options=long_options)
    else:
        from bilingual.evaluation.matryoshka import run_suite_at_dims

        hidden = encoder.config.hidden_size
        dims = parse_dims(dims, hidden)
        dims_start = time.perf_counter()
        result, by_dim = run_suite_at_dims(configured, tasks, dims, hidden, data, limit=limit, log=log,
                                           long_options=long_options)
        dims_seconds = time.perf_counter() - dims_start - result["timings"]["total_seconds"]
        matryoshka = {"dims": dims, "by_dim": {str(d): {"average": suites.average_main_score(run),
                                                        "tasks": run["tasks"], "timings": run["timings"]}
                                               for d, run in by_dim.items()}}
        result["timings"]["dims_seconds"] = dims_seconds
    data_files = {}
    for task in result["tasks"].values():
        data_files.update({f["path"]: f["sha256"] for f in task["files"].values()})
    return {"model": str(model), "suite": suite, "created": datetime.datetime.now(datetime.UTC).isoformat(),
            "data_root": result["data_root"], "limit": limit, "batch_size": batch_size, "max_length": max_length,
            "encoder_config": encoder.config.to_dict(), "average": suites.average_main_score(result),
            "data_files": data_files, "tasks": result["tasks"], "truncation": configured.truncation_summary(),
            "trained_length": configured.trained_length,
            "timings": {**result["timings"], "load_seconds": load_seconds,
                        "compilations": len(encoder.compiled_shapes),
                        "batch_shapes": sorted(map(list, encoder.used_shapes))},
            **matryoshka,
            **({"untrained": _untrained_run(encoder, tasks, data, batch_size, max_length, limit, log, long_options,
                                            suites, configured.trained_length)} if untrained else {})}


def _untrained_run(encoder, tasks, data, batch_size, max_length, limit, log, long_options, suites,
                   trained_length) -> dict:
    from bilingual.evaluation.configured import ConfiguredEncoder

    log("untrained model of the same shape:")
    reference = ConfiguredEncoder(untrained_like(encoder), batch_size, max_length, log=log,
                                  trained_length=trained_length)
    run = suites.run_suite(reference, tasks, data, limit=limit, log=log, long_options=long_options)
    return {"model": "untrained (seed 0)", "average": suites.average_main_score(run), "tasks": run["tasks"],
            "timings": run["timings"], "truncation": reference.truncation_summary()}


MLM_LENGTHS = (128, 512, 1024, 2048, 4096, 8192)


def mlm_by_length(model, tokenizer=None, data=None, language: str = "de", lengths=MLM_LENGTHS, rows: int = 4,
                  seed: int = 0, log=print) -> dict:
    """The extrapolation check on a masked-LM checkpoint (see the module docstring)."""
    import numpy as np

    from bilingual import artifacts
    from bilingual.encoder_api import load_tokenizer
    from bilingual.evaluation import extrapolation, long_documents, suites
    from bilingual.tokenizer import MASK_ID, SPECIAL_TOKENS, word_start_table
    from tasks.mlm import whole_word_mask

    start = time.perf_counter()
    config, meta, tree = artifacts.load_model_tree(model)
    if meta.get("model") != "masked_lm":
        raise cli.UsageError(f"--mlm-by-length needs a masked-LM checkpoint; {model} holds a {meta.get('model')!r} "
                             "model")
    tok = load_tokenizer(tokenizer or artifacts.find_tokenizer(model))
    root = pathlib.Path(data) if data else suites.DEMO_DATA_ROOT
    path = root / "long_literature" / f"{language}-sections.jsonl"
    if not path.is_file():
        raise cli.UsageError(f"held-out text {path} not found (--data DIR with long_literature/, --language de|es)")
    need = max(lengths) - 2
    content = []
    for section in long_documents.read_sections(path):
        ids = tok("\n".join(section["paragraphs"]), add_special_tokens=False)["input_ids"]
        if len(ids) >= need:
            content.append(ids[:need])
        if len(content) == rows:
            break
    if not content:
        raise cli.UsageError(f"no section of {path} has {need} tokens")
    content = np.asarray(content, np.int32)
    masked = whole_word_mask(content, word_start_table(tok.backend_tokenizer), np.random.default_rng(seed),
                             rate=0.3, mask_id=MASK_ID, num_special=len(SPECIAL_TOKENS), vocab_size=len(tok))
    log(f"{len(content)} held-out sections x {need} tokens of {path.name}, {int(masked['loss_weights'].sum())} "
        f"masked tokens (30% whole-word, seed {seed}), scored at {', '.join(map(str, lengths))} tokens")
    table = extrapolation.mlm_by_length(config, tree, masked["input_ids"], masked["targets"], masked["loss_weights"],
                                        lengths)
    return {"model": str(model), "text": str(path), "sha256": suites.sha256(path), "rows": table, "seed": seed,
            "seconds": time.perf_counter() - start}


@cli.entry_point
def main(argv=None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--model", help="orbax checkpoint or Hugging Face export directory")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: from the checkpoint)")
    parser.add_argument("--suite", default="de", help="de, es, en, de-en, es-en, or one task name")
    parser.add_argument("--data", type=pathlib.Path, help="data root (default: bundled demo data)")
    parser.add_argument("--out", type=pathlib.Path, help="write the result JSON here")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, help="tokens per text (default 512, or the model's limit if smaller)")
    parser.add_argument("--limit", type=int, help="use only the first N rows/queries of each task (smoke runs)")
    parser.add_argument("--suites-file", type=pathlib.Path, help="suite definitions (default: the bundled suites.json)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="override the compute dtype")
    parser.add_argument("--compare", nargs=2, type=pathlib.Path, metavar=("A.json", "B.json"),
                        help="print two result files side by side and exit")
    parser.add_argument("--lengths", type=int, nargs="+", help="long-document lengths in tokens (default 256 ... 8192)")
    parser.add_argument("--documents", type=int, help="long-document tasks: documents (= queries) per length")
    parser.add_argument("--seed", type=int, help="long-document generator seed (default 0) / masking seed")
    parser.add_argument("--untrained", action="store_true",
                        help="also score an untrained model of the same shape and tokenizer (reference row)")
    parser.add_argument("--mlm-by-length", action="store_true",
                        help="extrapolation check: MLM loss by length of a masked-LM checkpoint")
    parser.add_argument("--language", default="de", choices=("de", "es"), help="--mlm-by-length held-out text")
    parser.add_argument("--rows", type=int, default=4, help="--mlm-by-length: held-out sections scored")
    parser.add_argument("--trained-length", type=int,
                        help="the length the model was trained at, for the extrapolation warning (default 512)")
    parser.add_argument("--dims", metavar="D1,D2,...",
                        help="Matryoshka: also score the embeddings cut to these sizes, e.g. 768,256,64 (one "
                             "column each)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bilingual").setLevel(logging.INFO)  # compilations; other libraries stay at WARNING

    if args.dims is not None and (args.compare or args.mlm_by_length):
        raise cli.UsageError("--dims applies to a suite evaluation, not to --compare or --mlm-by-length")
    if args.dims is not None:
        parse_dims(args.dims)  # a bad value fails before anything is loaded
    if args.compare:
        runs = []
        for path in args.compare:
            try:
                runs.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError) as err:
                parser.error(f"cannot read result file {path}: {err}")
        print(format_comparison(*runs))
        return 0
    if not args.model:
        parser.error("--model is required (or use --compare A.json B.json)")
    if args.tokenizer and not os.path.isdir(args.tokenizer):
        raise cli.UsageError(f"--tokenizer {args.tokenizer} is not a directory")
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.mlm_by_length:
        from bilingual.evaluation.extrapolation import format_table
        result = mlm_by_length(args.model, args.tokenizer, args.data, args.language, args.lengths or MLM_LENGTHS,
                               args.rows, args.seed or 0, log=log)
        print(f"MLM loss by length ({result['model']}; held-out {result['text']})")
        print(format_table(result["rows"]))
        print(f"total {result['seconds']:.1f}s")
    else:
        long_options = {"lengths": args.lengths, "documents": args.documents, "seed": args.seed}
        result = evaluate(args.model, args.suite, args.data, args.tokenizer, args.batch_size, args.max_length,
                          args.limit, args.suites_file, args.dtype, log=log, long_options=long_options,
                          untrained=args.untrained, trained_length=args.trained_length, dims=args.dims)
        if args.dims is None:
            print(format_results_table(result))
        else:
            print(f"Main metric by embedding size (the first d components, re-normalised; hidden size "
                  f"{result['encoder_config']['hidden_size']})")
            print(format_dims_table(result))
        long_table = format_long_table([("trained", result), ("untrained", result["untrained"])]
                                       if args.untrained else result)
        if long_table:
            print(f"\nLong documents (passkey/needle: accuracy x100, literature: nDCG@10 x100, by length in tokens; "
                  f"trained at {result['trained_length']})")
            print(long_table)
        for length, t in result["truncation"].items():
            if t["truncated"]:
                print(f"truncated {t['truncated']} of {t['texts']} texts to {length} tokens (longest {t['longest']})")
        seconds = result["timings"]["total_seconds"] + result.get("untrained", {}).get("timings", {}).get(
            "total_seconds", 0.0) + result["timings"].get("dims_seconds", 0.0)
        print(f"evaluation took {seconds:.1f}s (model load {result['timings']['load_seconds']:.1f}s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.exit_status(main()))
