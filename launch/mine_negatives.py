"""Mine hard negatives for (query, positive) pairs with an embedding model, written as a retrieval TSV.

    python -m launch.mine_negatives --model runs/demo/pairs/checkpoints --pairs data/demo/train/pairs/de.tsv \\
        --out retrieval-de.tsv
    python -m launch.mine_negatives --model exports/base-de --pairs "gs://bucket/pairs/*.jsonl" \\
        --corpus passages.txt --num_negatives 7 --range_min 10 --range_max 100 --relative_margin 0.05 \\
        --sampling random --seed 1 --out mined.tsv

``--model`` is an orbax checkpoint (root or step directory, any stage) or a Hugging Face export, embedded
with ``bilingual.Encoder`` (normalised; progress bar with ETA). ``--pairs`` are read as a pairs task reads
them (``tasks.row_parser``: TSV with a header, columns 0 and 1 unless ``--columns query=.. passage=..``;
JSONL keys ``query``/``passage``; parquet, Arrow, ``save_to_disk``), ``--corpus`` as a text task (one passage
per line; TSV column 0 or ``--corpus_column``; JSONL key ``text``). The corpus searched is every distinct
passage (compared after ``bilingual.negative_mining.normalize_text``) of the pairs and of ``--corpus``.

Which candidates are kept (ranks, margins, maximum score, sampling, seed) and which index searches (exact up
to ``--exact_limit`` passages, IVF above) is ``bilingual.negative_mining``. Queries that end with fewer than
``--num_negatives`` negatives are left out of the output (a retrieval task needs them all) and counted.

The output is ``query  positive  negative_1 .. negative_m`` with a header, the layout of
``data/demo/train/retrieval``: register it with ``register_retrieval_task.files`` and the same
``num_negatives``. Tabs and line breaks inside a text (possible in JSONL) become spaces, and are counted.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

from launch import cli

_TSV_BREAKS = re.compile(r"[\t\r\n]+")


def read_rows(files: list[str], kind: str, columns: dict | None) -> list[dict]:
    from bilingual.rows import DataError
    from launch.prepare_data import expand
    from tasks.records import open_records, resolve_files
    from tasks.row_parser import RowParser

    try:
        parser = RowParser(kind, columns=columns)
        records = open_records(resolve_files(expand(files)), parser, "raise", validate=True)
    except DataError:
        raise
    except ValueError as err:  # columns these files do not have
        raise cli.UsageError(str(err)) from None
    return [records[i] for i in range(len(records))]


def tsv_cell(text: str, cleaned: list[int]) -> str:
    out = _TSV_BREAKS.sub(" ", text)
    if out != text:
        cleaned[0] += 1
    return out


@cli.entry_point
def main(argv=None) -> dict:
    from bilingual.encoder_api import Encoder
    from bilingual.negative_mining import SAMPLING, MiningConfig, mine, normalize_text
    from launch.prepare_data import parse_columns

    parser = cli.parser(__doc__)
    parser.add_argument("--model", required=True, help="orbax checkpoint or Hugging Face export directory")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: from the checkpoint)")
    parser.add_argument("--pairs", nargs="+", required=True, help="(query, positive) files or globs")
    parser.add_argument("--columns", nargs="+", default=[], metavar="FEATURE=COLUMN",
                        help="pairs: query=<column> passage=<column> (TSV header name or index, JSON key)")
    parser.add_argument("--corpus", nargs="+", default=[], help="more passages (text, TSV, JSONL files)")
    parser.add_argument("--corpus_column", help="TSV column / JSON key of the corpus passages")
    parser.add_argument("--out", required=True, help="retrieval TSV to write")
    parser.add_argument("--num_negatives", type=int, default=3)
    parser.add_argument("--range_min", type=int, default=0, help="skip the first ranks (likely positives)")
    parser.add_argument("--range_max", type=int, default=50, help="consider ranks below this")
    parser.add_argument("--absolute_margin", type=float, help="negative score <= positive score - margin")
    parser.add_argument("--relative_margin", type=float, help="negative score <= positive score * (1 - m)")
    parser.add_argument("--max_score", type=float)
    parser.add_argument("--min_score", type=float)
    parser.add_argument("--sampling", choices=SAMPLING, default="top")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exact_limit", type=int, default=MiningConfig.exact_limit,
                        help="exact search up to this many passages, IVF above")
    parser.add_argument("--nprobe", type=int, default=MiningConfig.nprobe, help="IVF lists searched per query")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, help="tokens per text (default: the encoder's)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    try:
        config = MiningConfig(
            num_negatives=args.num_negatives, range_min=args.range_min, range_max=args.range_max,
            absolute_margin=args.absolute_margin, relative_margin=args.relative_margin,
            max_score=args.max_score, min_score=args.min_score, sampling=args.sampling, seed=args.seed,
            exact_limit=args.exact_limit, nprobe=args.nprobe)
    except ValueError as err:
        raise cli.UsageError(str(err)) from None
    if os.path.exists(args.out) and not args.overwrite:
        raise cli.UsageError(f"--out {args.out} exists; give --overwrite to replace it")
    started = time.perf_counter()
    pairs = read_rows(args.pairs, "pairs", parse_columns(args.columns) or None)
    corpus_columns = parse_columns([f"text={args.corpus_column}"]) if args.corpus_column else None
    extra = read_rows(args.corpus, "text", corpus_columns) if args.corpus else []

    corpus, keys, row_of = [], [], {}
    for text in [p["passage"] for p in pairs] + [r["text"] for r in extra]:
        key = normalize_text(text)
        if key not in row_of:
            row_of[key] = len(corpus)
            corpus.append(text)
            keys.append(key)
    queries = [p["query"] for p in pairs]
    positives = [row_of[normalize_text(p["passage"])] for p in pairs]

    encoder = Encoder.from_checkpoint(args.model, tokenizer=args.tokenizer)
    options = {"batch_size": args.batch_size, "show_progress": True}
    if args.max_length:
        options["max_length"] = args.max_length
    print(f"embedding {len(queries)} queries and {len(corpus)} distinct passages with {args.model}", flush=True)
    query_emb = encoder.encode(queries, **options)
    corpus_emb = encoder.encode(corpus, **options)
    mined = mine(query_emb, corpus_emb, positives, config, [normalize_text(q) for q in queries], keys)

    cleaned = [0]
    m = config.num_negatives
    kept = [i for i, n in enumerate(mined.negatives) if len(n) == m]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(["query", "positive"] + [f"negative_{k + 1}" for k in range(m)]) + "\n")
        for i in kept:
            cells = [queries[i], corpus[positives[i]]] + [corpus[j] for j in mined.negatives[i]]
            f.write("\t".join(tsv_cell(c, cleaned) for c in cells) + "\n")
    os.replace(tmp, args.out)

    report = {"queries": len(queries), "passages": len(corpus), "written": len(kept),
              "dropped_fewer_negatives": len(queries) - len(kept),
              "queries_by_negatives_found": mined.counts(), "index": "exact" if mined.exact else "ivf",
              "texts_with_tabs_or_newlines_replaced": cleaned[0],
              "seconds": round(time.perf_counter() - started, 1)}
    print("negatives found per query: " + ", ".join(f"{k}: {v}" for k, v in report["queries_by_negatives_found"].items()))
    print(f"{args.out}: {len(kept)} retrieval rows with {m} negatives each "
          f"({report['dropped_fewer_negatives']} queries had fewer and are left out); "
          f"{report['index']} search over {len(corpus)} passages, {report['seconds']} s")
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    sys.exit(cli.exit_status(main()))
