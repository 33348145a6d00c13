"""Backbone probe suite: fine-tune a backbone on small GLUE/XTREME-style tasks and print one table.

    python -m launch.finetune_bench --backbone runs/demo/mlm/checkpoints --tokenizer runs/demo/tokenizer \\
        [--compare untrained:tiny] [--tasks sib200-de stsb-de ...] [--epochs 3] [--learning_rates 1e-4,3e-4,1e-3] \\
        [--data_root /path/to/shared/data] \\
        [--max_train_rows 700] [--max_dev_rows 500] [--workdir runs/finetune_bench] [--json results.json] [--export]

``--backbone`` / ``--compare``: an orbax checkpoint of any stage (MLM, pairs, multitask), a Hugging Face
export directory (its tokenizer is used), or ``untrained:<preset>`` (a fresh initialisation of that
encoder preset: the baseline that shows what pre-training bought). Every task is a full fine-tuning run of
the ``finetune`` stage (``gin/stages/finetune.gin`` plus ``gin/runs/finetune_bench_tiny.gin`` or
``--gin_file``): AdamW with warmup and linear decay, dev after every epoch, the best dev epoch's
checkpoint scored on test; with ``--learning_rates`` once per rate, the run with the best dev metric scored
(one fixed rate favours one backbone: a rate high enough for a random model to learn from scratch
overwrites what a pre-trained one knows). Tasks (``tasks.finetune_data.BENCHMARK_TASKS``): SIB-200 topic classification
en/de/es in-language and zero-shot en->de, en->es (train and dev English, checked on the data); PAWS-X de
and SQAC-QNLI es pair classification (no train split: fit on 80% of dev, select on the other 20%); STSb
regression de/es/en (Spearman). Scores are x100. Data: ``--data_root``, else ``../shared/data`` next to
the repository when present, else the bundled subsets in ``data/finetune``.

Fine-tuned classifiers are throwaway probes: nothing here feeds embedding training. Each probe lives in
``<workdir>/<backbone>/<task>`` (best checkpoint, ``result.json``, the export) and is replaced on a rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from launch import cli  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
GIN_DIR = ROOT / "gin"
DEFAULT_GIN = GIN_DIR / "runs" / "finetune_bench_tiny.gin"
UNTRAINED = "untrained:"


@dataclasses.dataclass
class Backbone:
    label: str
    config: object  # EncoderConfig
    init_from: str | None
    tokenizer_dir: str | None


def resolve_backbone(spec: str, tokenizer_dir: str | None) -> Backbone:
    """``untrained:<preset>``, an HF export directory (config.json) or an orbax checkpoint."""
    from bilingual import artifacts
    from bilingual.config import get_config

    if spec.startswith(UNTRAINED):
        return Backbone(spec, get_config(spec[len(UNTRAINED):]), None, tokenizer_dir)
    path = pathlib.Path(spec)
    if not path.exists():
        raise cli.UsageError(f"--backbone/--compare {spec!r}: no such checkpoint or export directory "
                         f"(or use 'untrained:<preset>', e.g. untrained:tiny)")
    if artifacts.is_hf_directory(path):
        from bilingual.export.hf_import import import_hf

        config, _, _ = import_hf(path)
        has_tokenizer = (path / "tokenizer.json").exists()
        return Backbone(_label(path), config, str(path), tokenizer_dir or (str(path) if has_tokenizer else None))
    return Backbone(_label(path), artifacts.encoder_config_of(artifacts.load_meta(path)), str(path), tokenizer_dir)


def _label(path: pathlib.Path) -> str:
    parts = path.resolve().parts
    return "/".join(parts[-2:]) if parts[-1] == "checkpoints" or parts[-1].isdigit() else parts[-1]


def run_backbone(backbone: Backbone, tokenizer, specs, args, workdir: pathlib.Path) -> dict[str, dict]:
    """Fine-tune ``backbone`` on every task; ``{task: {"test": ..., "dev": ..., "best_epoch", ...}}``."""
    from bilingual.training.finetune import finetune
    from launch import configurables
    from tasks import finetune_data

    results = {}
    for spec in specs:
        data = finetune_data.load_task(spec, args.data_root)
        data = finetune_data.limit_rows(data, args.max_train_rows, args.max_dev_rows, args.max_test_rows)
        config = configurables.build_finetune(spec, init_from=backbone.init_from)
        model = dataclasses.replace(backbone.config, hidden_dropout=config.model.hidden_dropout,
                                    attention_dropout=config.model.attention_dropout)
        overrides = {"model": model}
        if args.epochs:
            overrides["num_epochs"] = args.epochs
        config = dataclasses.replace(config, **overrides)
        start = time.perf_counter()
        task_dir = workdir / _slug(backbone.label) / spec.name
        if task_dir.exists():  # a probe from an earlier run of the bench: throwaway, replaced
            shutil.rmtree(task_dir)
        # one run per learning rate; the run with the best dev metric is the one scored (ties: the first)
        rates = args.learning_rates or [config.optimizer.learning_rate]
        sweep, best = {}, None
        for rate in rates:
            run_config = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer,
                                                                                 learning_rate=rate))
            run_dir = task_dir if len(rates) == 1 else task_dir / f"lr_{rate:g}"
            result = finetune(run_config, run_dir, data, tokenizer,
                              report=(lambda line: print("  " + line, flush=True)) if args.verbose
                              else (lambda line: None))
            sweep[f"{rate:g}"] = {"dev": 100 * result.dev[spec.metric], "test": 100 * result.test[spec.metric],
                                  "best_epoch": result.best_epoch}
            if best is None or result.dev[spec.metric] > best[1].dev[spec.metric]:
                best = (rate, result, run_config, run_dir)
        rate, result, config, run_dir = best
        seconds = time.perf_counter() - start
        results[spec.name] = {"language": spec.language, "train_language": spec.source_language,
                              "metric": spec.metric, "score": 100 * result.test[spec.metric],
                              "learning_rate": rate, "sweep": sweep,
                              "best_epoch": result.best_epoch, "dev": result.dev, "test": result.test,
                              "rows": {"train": len(data.train), "dev": len(data.dev), "test": len(data.test)},
                              "dev_source": data.dev_source, "dropped_test_duplicates": data.dropped,
                              "note": spec.note, "seconds": round(seconds, 1),
                              "history": result.history, "checkpoint": str(run_dir / "checkpoints")}
        chosen = f", learning rate {rate:g} of {len(rates)} by dev" if len(rates) > 1 else ""
        print(f"[{backbone.label}] {spec.name}: test {spec.metric} {100 * result.test[spec.metric]:.1f} "
              f"(best dev epoch {result.best_epoch}{chosen}, {seconds:.0f}s)", flush=True)
        if args.export:
            _export(result, config, data, backbone, run_dir / "export")
    return results


def _export(result, config, data, backbone, out: pathlib.Path) -> None:
    import jax

    from bilingual.export.hf_classifier import export_classifier

    head = result.head
    export_classifier(config.model, head, jax.device_get(result.params), out, labels=data.labels,
                      tokenizer_dir=backbone.tokenizer_dir, overwrite=True)
    print(f"  exported to {out}", flush=True)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def format_table(specs, results: dict[str, dict], labels: list[str]) -> str:
    """One row per task: task, language (train->test), metric, score per backbone (x100), delta."""
    head = f"{'task':14s} {'lang':7s} {'metric':9s}" + "".join(f" {label[:22]:>22s}" for label in labels)
    if len(labels) == 2:
        head += f" {'delta':>7s}"
    lines = [head, "-" * len(head)]
    for spec in specs:
        lang = spec.language if not spec.transfer else f"{spec.source_language}->{spec.language}"
        scores = [results[label][spec.name]["score"] for label in labels]
        line = f"{spec.name:14s} {lang:7s} {spec.metric:9s}" + "".join(f" {s:22.1f}" for s in scores)
        if len(labels) == 2:
            line += f" {scores[0] - scores[1]:+7.1f}"
        lines.append(line)
    means = [sum(results[label][s.name]["score"] for s in specs) / len(specs) for label in labels]
    line = f"{'mean':14s} {'':7s} {'':9s}" + "".join(f" {m:22.1f}" for m in means)
    if len(labels) == 2:
        line += f" {means[0] - means[1]:+7.1f}"
    lines += ["-" * len(head), line]
    return "\n".join(lines)


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated learning rates such as 1e-4,3e-4, got {text!r}")
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"learning rates must be positive, got {text!r}")
    return rates


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.parser(__doc__)
    parser.add_argument("--backbone", required=True, help="checkpoint, HF export directory, or untrained:<preset>")
    parser.add_argument("--compare", help="a second backbone, scored side by side (delta = backbone - compare)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the HF export's own)")
    parser.add_argument("--tasks", nargs="+", help="task names (default: the whole suite)")
    parser.add_argument("--epochs", type=int, help="override FinetuneConfig.num_epochs")
    parser.add_argument("--learning_rates", type=_rates, metavar="LR,LR,...",
                        help="fine-tune each task once per learning rate and keep the run with the best dev "
                             "metric (as GLUE/XTREME baselines do); default: the gin OptimizerConfig's one")
    parser.add_argument("--data_root", help="default: ../shared/data when present, else data/finetune")
    parser.add_argument("--max_train_rows", type=int, default=700,
                        help="fixed-seed subset of each train split (0: all); keeps the CPU suite short")
    parser.add_argument("--max_dev_rows", type=int, default=500,
                        help="fixed-seed subset of each dev split, scored after every epoch (0: all)")
    parser.add_argument("--max_test_rows", type=int, default=0, help="fixed-seed subset of each test split (0: all)")
    parser.add_argument("--workdir", type=pathlib.Path, default=ROOT / "runs" / "finetune_bench")
    parser.add_argument("--json", type=pathlib.Path, help="results file (default: <workdir>/results.json)")
    parser.add_argument("--gin_file", action="append", help=f"default: {DEFAULT_GIN.relative_to(ROOT)}")
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--export", action="store_true", help="also export each fine-tuned classifier (HF layout)")
    parser.add_argument("--verbose", action="store_true", help="print every epoch's train loss and dev metrics")
    return parser.parse_args(argv)


@cli.entry_point
def main(argv=None) -> dict:
    args = parse_args(argv)
    args.gin_file = args.gin_file or [str(DEFAULT_GIN)]
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's per-restore chatter

    import gin
    import jax

    from bilingual import tokenizer as tokenizer_lib
    from launch import configurables
    from tasks import finetune_data

    if not jax.config.jax_compilation_cache_dir:  # the same shapes recur across tasks and backbones
        jax.config.update("jax_compilation_cache_dir", str(args.workdir / "jax_cache"))
    gin.add_config_file_search_path(str(GIN_DIR))
    configurables.parse(args.gin_file, args.gin_bindings)
    specs = finetune_data.get_tasks(args.tasks)
    if args.data_root is None:
        args.data_root = str(finetune_data.default_data_root(specs))
    backbones = [resolve_backbone(args.backbone, args.tokenizer)]
    if args.compare:
        backbones.append(resolve_backbone(args.compare, args.tokenizer or backbones[0].tokenizer_dir))
    if len({b.label for b in backbones}) < len(backbones):
        backbones[1].label += " (compare)"
    tokenizer_dir = backbones[0].tokenizer_dir
    if tokenizer_dir is None:
        raise cli.UsageError("--tokenizer is required for an orbax checkpoint or untrained backbone")
    for b in backbones[1:]:
        if b.tokenizer_dir and b.tokenizer_dir != tokenizer_dir:
            print(f"note: {b.label} has its own tokenizer {b.tokenizer_dir}; both backbones use {tokenizer_dir}")
    tokenizer = tokenizer_lib.load(tokenizer_dir)
    for b in backbones:
        b.tokenizer_dir = tokenizer_dir  # what the probes were tokenised with (exports carry it)
    for b in backbones:
        if tokenizer.get_vocab_size() > b.config.vocab_size:
            raise cli.UsageError(f"{b.label}: the tokenizer has {tokenizer.get_vocab_size()} tokens but the encoder's "
                             f"vocab_size is {b.config.vocab_size}")

    print(f"data root {args.data_root}; tasks {', '.join(s.name for s in specs)}; rows at most: train "
          f"{args.max_train_rows or 'all'}, dev {args.max_dev_rows or 'all'}, test {args.max_test_rows or 'all'}",
          flush=True)
    start = time.perf_counter()
    results = {b.label: run_backbone(b, tokenizer, specs, args, args.workdir) for b in backbones}
    labels = [b.label for b in backbones]
    table = format_table(specs, results, labels)
    selection = (f"of the best dev epoch and learning rate ({', '.join(f'{r:g}' for r in args.learning_rates)})"
                 if args.learning_rates else "of the best dev epoch")
    print(f"\nTest scores x100 {selection} (accuracy; STSb: Spearman). PAWS-X/SQAC-QNLI: trained on "
          "80% of dev, selected on 20%.\n" + table)
    report = {"backbones": {b.label: {"spec": (args.backbone, args.compare)[i], "init_from": b.init_from}
                            for i, b in enumerate(backbones)},
              "tokenizer": tokenizer_dir, "data_root": args.data_root, "max_train_rows": args.max_train_rows,
              "max_dev_rows": args.max_dev_rows, "learning_rates": args.learning_rates,
              "max_test_rows": args.max_test_rows, "gin": gin.config_str(), "results": results,
              "table": table, "seconds": round(time.perf_counter() - start, 1)}
    out = args.json or args.workdir / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['seconds']:.0f}s; results in {out}")
    return report


if __name__ == "__main__":
    sys.exit(cli.exit_status(main()))
