"""The paper's STS-loss ablation at CPU scale: multi-task from one pairs checkpoint with the STS loss set to
negative Pearson, MSE on cosine, or no STS data at all, over several seeds.

    python -m launch.ablation --pairs runs/demo/pairs/checkpoints --tokenizer runs/demo/tokenizer \
        [--seeds 0 1 2] [--workdir runs/ablation] [--variants pearson mse "no STS" matryoshka]
        [--retrieval_data DIR]

``--variants`` picks among ``VARIANTS`` (default: the paper's three). ``matryoshka`` is the Pearson run with
``StepConfig.matryoshka_dims = (128, 64, 32, 16)`` (score it per size with ``launch.evaluate --dims``).
``--retrieval_data DIR`` adds the variant ``mined``: the Pearson run with the demo's training data read from
``DIR`` (``register_demo_tasks.data_dir``), e.g. a copy of ``data/demo/train`` whose ``retrieval/de.tsv`` is
the output of ``launch.mine_negatives``; the bundled file's negatives are TF-IDF-mined.

Prints STS Spearman x100 (STSb de, de-en, en; bundled test subsets) per variant: mean, standard deviation and
every seed. The paper reports Pearson > MSE > none; this prints what this code measures, whichever way it goes.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

from launch import cli, demo

VARIANTS = {
    "pearson": ["StepConfig.sts_loss = 'pearson'"],
    "mse": ["StepConfig.sts_loss = 'mse'"],
    # Retrieval only: the mixture's STS tasks get rate 0.
    "no STS": ["data.options = {'sequence_lengths': {'query': 64, 'passage': 96, 'negatives': 96, 'a': 64, 'b': 64},"
               " 'rates': {'retrieval_de': 1.0}}"],
    "matryoshka": ["StepConfig.sts_loss = 'pearson'", "StepConfig.matryoshka_dims = (128, 64, 32, 16)"],
}
DEFAULT_VARIANTS = ("pearson", "mse", "no STS")
STS_TASKS = ("STSb-de", "STSb-de-en", "STSb-en")


@cli.entry_point
def main(argv=None) -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--pairs", type=pathlib.Path, required=True, help="the pairs stage's checkpoints")
    parser.add_argument("--tokenizer", type=pathlib.Path, required=True)
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/ablation"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        help=f"among {sorted(VARIANTS)} (and 'mined' with --retrieval_data)")
    parser.add_argument("--retrieval_data", type=pathlib.Path,
                        help="a demo training-data directory with other retrieval negatives: adds variant 'mined'")
    args = parser.parse_args(argv)
    variants = dict(VARIANTS)
    if args.retrieval_data is not None:
        if not (args.retrieval_data / "retrieval" / "de.tsv").is_file():
            raise cli.UsageError(f"--retrieval_data {args.retrieval_data} has no retrieval/de.tsv")
        variants["mined"] = ["StepConfig.sts_loss = 'pearson'",
                             f"register_demo_tasks.data_dir = '{args.retrieval_data.absolute()}'"]
        if "mined" not in args.variants:
            args.variants.append("mined")
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        raise cli.UsageError(f"--variants {unknown} unknown; expected among {sorted(variants)}")
    if not args.pairs.exists():
        raise cli.UsageError(f"--pairs {args.pairs} does not exist (run the demo's pairs stage first)")

    scores: dict[str, list[dict[str, float]]] = {}
    for name, bindings in ((v, variants[v]) for v in args.variants):
        for seed in args.seeds:
            workdir = args.workdir / name.replace(" ", "_") / f"seed{seed}"
            extra = bindings + [f"TrainConfig.seed = {seed}", f"data.seed = {seed}"] + args.gin_bindings
            checkpoint = demo.run_stage("multitask", workdir, args.tokenizer, args.pairs, extra)
            result = demo.evaluate(checkpoint, args.tokenizer, STS_TASKS)
            scores.setdefault(name, []).append(result)
            print(f"[{name} seed {seed}] " + "  ".join(f"{k} {v:.1f}" for k, v in result.items()), flush=True)

    print(f"\nSTS Spearman x100 after multi-task from the same pairs checkpoint; mean +- std over seeds {args.seeds}")
    print(f"{'variant':10s}" + "".join(f"{t:>20s}" for t in STS_TASKS) + f"{'average':>16s}")
    summary = {}
    for name, runs in scores.items():
        cells = []
        for task in STS_TASKS:
            values = np.array([r[task] for r in runs])
            cells.append(f"{values.mean():12.1f} +- {values.std(ddof=1) if len(values) > 1 else 0.0:4.1f}")
        average = np.array([np.mean([r[t] for t in STS_TASKS]) for r in runs])
        summary[name] = {"runs": runs, "average_mean": float(average.mean())}
        print(f"{name:10s}" + "".join(f"{c:>20s}" for c in cells) + f"{average.mean():16.1f}")
    (args.workdir / "ablation.json").write_text(json.dumps(summary, indent=2))
    print(f"\nper-seed scores: {args.workdir / 'ablation.json'}")


if __name__ == "__main__":
    sys.exit(cli.exit_status(main()))
