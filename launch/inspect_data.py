"""Print a few batches of a task or mixture, decoded, to see what the trainer will get.

    python -m launch.inspect_data --tokenizer=/tmp/tok --name=multitask_de --batches=3
    python -m launch.inspect_data --gin_file=gin/datasets/user_data.gin --gin_bindings='TOKENIZER = "/tmp/tok"' \
        --name=multitask_de_mine

    python -m launch.inspect_data --tokenizer=/tmp/tok --name=pairs_mix_de --packing_report --length=512 \
        --batch_size=256 --batches=8 --texts_per_unit=64      # sizes for data.options['packing']

Without ``--gin_file`` the bundled demo tasks are registered with ``--tokenizer``. MLM rows show the corrupted
input with every selected position in brackets: ``[<mask>|Haus]`` (masked), ``[Baum|Haus]`` (replaced),
``[=Haus]`` (kept but predicted).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gin  # noqa: E402
import numpy as np  # noqa: E402

from launch import cli  # noqa: E402
from tasks import batching, demo, mixtures, run_data  # noqa: E402
from tasks import preprocessors as pp  # noqa: E402


def _text(vocab, ids, mask) -> str:
    return vocab.decode(np.asarray(ids)[np.asarray(mask) == 1].tolist())


def describe(batch: dict, vocab, rows: int = 2, width: int = 160) -> list[str]:
    """Human-readable lines for the first ``rows`` examples of a batch."""
    lines = [f"task {batch['task']} ({batch['task_type']}), "
             + ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items() if isinstance(v, np.ndarray))]
    tok = vocab.tokenizer
    for i in range(min(rows, len(next(v for v in batch.values() if isinstance(v, np.ndarray))))):
        if batch["task_type"] == "mlm":
            out = []
            for j in np.flatnonzero(batch["attention_mask"][i]):
                target = tok.decode([int(batch["targets"][i, j])])
                shown = tok.decode([int(batch["input_ids"][i, j])]) if batch["input_ids"][i, j] != 4 else "<mask>"
                if batch["loss_weights"][i, j]:
                    out.append(f"[={target}]" if shown == target else f"[{shown}|{target}]")
                else:
                    out.append(shown)
            selected = batch["loss_weights"][i].sum() / max(1, (batch["targets"][i] > 4).sum())
            lines.append(f"  row {i} ({int(batch['segment_ids'][i].max())} pieces, {selected:.0%} selected): "
                         + "".join(out)[:width])
        elif batch["task_type"] in ("pairs", "retrieval"):
            lines.append(f"  query   {_text(vocab, batch['query_ids'][i], batch['query_mask'][i])[:width]}")
            lines.append(f"  passage {_text(vocab, batch['passage_ids'][i], batch['passage_mask'][i])[:width]}")
            if batch["task_type"] == "retrieval":
                for k in range(batch["negative_ids"].shape[1]):
                    text = _text(vocab, batch["negative_ids"][i, k], batch["negative_mask"][i, k])
                    lines.append(f"  neg {k}   {text[:width]}")
        else:
            lines.append(f"  {batch['score'][i]:.2f}  {_text(vocab, batch['a_ids'][i], batch['a_mask'][i])[:width]}"
                         f"  ||  {_text(vocab, batch['b_ids'][i], batch['b_mask'][i])[:width]}")
    return lines


def count_false_negatives(name: str, batch_size: int, seed: int, lengths: dict, dedup_window: int = 1) -> str:
    """One epoch of each pairs / retrieval task of ``name`` in batches of ``batch_size``: how many in-batch
    pairs the losses mask (``bilingual.losses.false_negative_masks`` on the batches' text keys), per task."""
    from bilingual import losses

    counts = {}
    for task in mixtures.resolve(name, "train")[0]:
        if pp.task_type_of(task.output_features) not in ("pairs", "retrieval"):
            continue
        masked = batches = 0
        with batching.make_batch_iterator(name, batch_size=batch_size, seed=seed, sequence_lengths=lengths,
                                          rates={task.name: 1.0}, num_epochs=1, prefetch=0,
                                          dedup_window=dedup_window) as it:
            for batch in it:
                pair_mask, negative_mask = losses.false_negative_masks(
                    batch["query_key"], batch["passage_key"], batch.get("negative_key"))
                masked += int(np.sum(pair_mask)) + (0 if negative_mask is None else int(np.sum(negative_mask)))
                batches += 1
        counts[task.name] = (masked, batches)
    return (f"masked in-batch false negatives of {name!r} (batch {batch_size}, dedup_window {dedup_window}, one "
            "epoch): " + ", ".join(f"{t} {m} in {b} batches" for t, (m, b) in counts.items()))


def packing_report(name: str, batch_size: int, batches: int, seed: int, length: int, texts_per_unit: int,
                   row_lengths: list[int], model: str = "base-de") -> list[str]:
    """Sizes for packed batches (``data.options['packing']``) from the framed lengths of ``batches`` padded
    batches of ``name`` truncated at ``length``: per side and candidate row length, the budget and long rows
    that ``bilingual.packing.length_report`` finds for units of ``texts_per_unit`` texts (99.9% of 1,000
    simulated units fit: a quantile, not a bound, so leave room for data the sample did not show), and the
    encoder forward FLOPs per text of ``model`` for that block; the last line is the gin value of the
    cheapest candidate of every side."""
    from bilingual import flops, get_config, packing, task_types

    seen: dict[str, list[int]] = {}
    with batching.make_batch_iterator(name, batch_size=batch_size, seed=seed, prefetch=0,
                                      sequence_lengths=dict.fromkeys(("text", *SIDES), length)) as it:
        for _ in range(batches):
            batch = next(it)
            if batch["task_type"] == "mlm":
                continue
            spec = task_types.get(batch["task_type"])
            for view, (side, _) in spec.view_sides().items():
                mask = batch[spec.views[view][1]]
                seen.setdefault(side, []).extend(mask.reshape(-1, mask.shape[-1]).sum(1).tolist())
    config = get_config(model)
    lines, best = [], {}
    for side, lengths in seen.items():
        lengths = np.asarray(lengths)
        lines.append(f"{side}: {len(lengths)} texts, framed length mean {lengths.mean():.1f}, p50 "
                     f"{np.percentile(lengths, 50):.0f}, p95 {np.percentile(lengths, 95):.0f}, max {lengths.max()} "
                     f"(truncated at {length})")
        for row_length in sorted({min(r, length) for r in row_lengths}):
            report = packing.length_report(lengths, texts_per_unit, row_length, long_length=length, seed=seed,
                                           trials=1000)
            rows = -(-texts_per_unit * report["tokens_per_text"] // row_length)
            cost = (flops.encoder_forward_flops(config, rows, row_length)
                    + flops.encoder_forward_flops(config, report["long_rows"], length)) / texts_per_unit
            lines.append(f"  rows of {row_length}: tokens_per_text {report['tokens_per_text']}, long_rows "
                         f"{report['long_rows']} -> {rows} x {row_length} + {report['long_rows']} x {length} tokens "
                         f"per {texts_per_unit} texts, {cost / 1e9:.2f} GFLOP per text ({model} forward)")
            if side not in best or cost < best[side][0]:
                best[side] = (cost, row_length, report)
    gin_value = {"tokens_per_text": {s: b[2]["tokens_per_text"] for s, b in best.items()}}
    short = {s: b for s, b in best.items() if b[1] < length}
    if short:
        gin_value.update(row_length={s: b[1] for s, b in short.items()},
                         long_rows={s: b[2]["long_rows"] for s, b in short.items()})
    lines.append(f"data.options['packing'] = {gin_value!r}")
    return lines


SIDES = ("query", "passage", "negatives", "a", "b")


@cli.entry_point
def main(argv=None) -> list[str]:
    parser = cli.parser(__doc__)
    parser.add_argument("--name", required=True, help="task or mixture")
    parser.add_argument("--tokenizer", help="tokenizer directory (registers the demo tasks)")
    parser.add_argument("--gin_file", action="append", default=[])
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--length", type=int, default=128, help="every sequence length (MLM row, query, ...)")
    parser.add_argument("--false_negatives", action="store_true",
                        help="instead: one pass over each pairs / retrieval task, counting the in-batch pairs the "
                             "losses mask (texts equal to the positive) at --batch_size")
    parser.add_argument("--dedup_window", type=int, default=1, help="the sampler's data.options['dedup_window']")
    parser.add_argument("--packing_report", action="store_true",
                        help="instead: sizes for packed batches from --batches batches of --batch_size truncated at "
                             "--length (units of --texts_per_unit texts, rows of each --row_lengths)")
    parser.add_argument("--texts_per_unit", type=int, default=64,
                        help="texts of a side per pack unit: global batch / (batch shards x GradCache chunks)")
    parser.add_argument("--row_lengths", default="64,128,256,512", help="candidate row lengths, comma-separated")
    args = parser.parse_args(argv)
    if args.gin_file:
        with gin.unlock_config():
            gin.clear_config()
            cli.parse_gin(args.gin_file, args.gin_bindings)
        run_data.register_data()
    elif args.tokenizer:
        demo.register_demo_tasks(args.tokenizer)
    else:
        parser.error("give --tokenizer (demo tasks) or --gin_file")
    lengths = {k: args.length for k in ("text", *SIDES)}
    if args.packing_report:
        lines = packing_report(args.name, args.batch_size, args.batches, args.seed, args.length, args.texts_per_unit,
                               [int(r) for r in args.row_lengths.split(",")])
        print("\n".join(lines))
        return lines
    if args.false_negatives:
        lines = [count_false_negatives(args.name, args.batch_size, args.seed, lengths, args.dedup_window)]
        print(lines[0])
        return lines
    it = batching.make_batch_iterator(args.name, batch_size=args.batch_size, seed=args.seed, sequence_lengths=lengths,
                                      dedup_window=args.dedup_window)
    lines = []
    for _ in range(args.batches):
        batch = next(it)
        vocab = next(t for t in it.tasks if t.name == batch["task"]).output_features
        lines += describe(batch, next(iter(vocab.values())).vocabulary)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    sys.exit(cli.exit_status(main()))
