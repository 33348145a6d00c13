"""Evaluate an embedding model on an MTEB-style suite, or compare two result files.

    python -m launch.evaluate --model runs/de/checkpoints --suite de --out results.json
    python -m launch.evaluate --model runs/de/checkpoints --suite de --data /path/to/shared/data
    python -m launch.evaluate --compare before.json after.json

``--model`` is an orbax checkpoint (root or step directory; tokenizer from ``--tokenizer``, the checkpoint
meta or a ``tokenizer/`` folder) or a Hugging Face export directory. Suites (``bilingual/evaluation/
suites.json``): de, es, en, de-en, es-en, or one task by name. ``--data`` defaults to the bundled demo data
(small subsets); point it at a directory with the same layout to run the full sets. The JSON output holds
the model path, the sha256 of every data file, all metrics and timings.
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


def evaluate(model, suite: str, data=None, tokenizer=None, batch_size: int = 32, max_length=None,
             limit=None, suites_file=None, compute_dtype=None, log=print) -> dict:
    """Load ``model``, run ``suite`` and return the result document (what ``--out`` writes)."""
    from bilingual.encoder_api import Encoder
    from bilingual.evaluation import suites

    tasks = suites.get_suite(suite, suites_file or suites.SUITES_FILE)
    suites.check_files(tasks, data)  # before the (slow) model load
    start = time.perf_counter()
    encoder = Encoder.from_checkpoint(model, tokenizer=tokenizer, compute_dtype=compute_dtype)
    load_seconds = time.perf_counter() - start
    if max_length is None:
        max_length = min(512, encoder.config.max_length)

    class Configured:  # fixes batch size and length for the evaluators' plain encode(texts)
        def encode(self, texts):
            return encoder.encode(texts, batch_size=batch_size, max_length=max_length)

    result = suites.run_suite(Configured(), tasks, data, limit=limit, log=log)
    data_files = {}
    for task in result["tasks"].values():
        data_files.update({f["path"]: f["sha256"] for f in task["files"].values()})
    return {"model": str(model), "suite": suite, "created": datetime.datetime.now(datetime.UTC).isoformat(),
            "data_root": result["data_root"], "limit": limit, "batch_size": batch_size, "max_length": max_length,
            "encoder_config": encoder.config.to_dict(), "average": suites.average_main_score(result),
            "data_files": data_files, "tasks": result["tasks"],
            "timings": {**result["timings"], "load_seconds": load_seconds,
                        "compilations": len(encoder.compiled_shapes),
                        "batch_shapes": sorted(map(list, encoder.used_shapes))}}


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bilingual").setLevel(logging.INFO)  # compilations; other libraries stay at WARNING

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
    result = evaluate(args.model, args.suite, args.data, args.tokenizer, args.batch_size, args.max_length,
                      args.limit, args.suites_file, args.dtype, log=lambda m: print(m, file=sys.stderr))
    print(format_results_table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.exit_status(main()))
