"""Validate TSV / JSONL / text / parquet / Arrow rows once and write them as ArrayRecord shards, for very
large corpora (constant-time random reads, whatever the order).

    python -m launch.prepare_data --kind pairs --out /data/pairs-ar --shards 4 data/pairs/*.tsv
    python -m launch.prepare_data --kind retrieval --num_negatives 3 --out gs://bucket/retrieval-ar \\
        --on_error skip gs://bucket/retrieval/*.jsonl
    python -m launch.prepare_data --kind sts --columns a=s1 b=s2 score=label --out /data/sts-ar sts.tsv
    python -m launch.prepare_data --kind text --out gs://bucket/culturax-de-ar --shards 64 \\
        "gs://bucket/culturax/de/*.parquet"          # or a datasets save_to_disk directory

The files are read as a task over them reads them (``tasks.records.open_records``: parquet and Arrow files
and ``datasets.Dataset.save_to_disk`` directories, whose columns ``--columns`` names, or text files). Every
row is checked by ``tasks.row_parser.RowParser`` exactly as such a task would check it (``bilingual.rows``: a
malformed row stops with ``error: <file>:<line>: <reason>`` (``<file> (row <r>)`` in a columnar file), or
with ``--on_error skip`` is dropped and counted), before anything is written. Row ``i`` of the files (in the
order given, globs sorted) goes to shard ``i % K``, written by ``tasks.records.write_array_records`` to
``OUT/<name>-<k>-of-<K>.array_record`` (5 digits each; ``--name`` defaults to the kind). ``--columns`` takes
items up to the next option (give FILES before it or after another option). Retrieval rows keep their first
``--num_negatives`` negatives and STS scores are checked against ``--score_range`` (0 5 by default, as
``register_sts_task``): a task over the shards reads the rows as written, so register it with the same
``num_negatives``. Memory stays small: one validating pass keeps each text row's byte offset
(``tasks.records.LineRecords``; a columnar file's rows are addressed by their row group), then each shard
reads its rows in file order (a parquet row group is decoded once per shard).
A remote ``--out`` (``gs://``) is written locally, then copied with ``tf.io.gfile``.

A run then reads the shards without any pass over the text (``tasks.sources.FileSource``: every file ends in
``.array_record``), e.g. in gin::

    register_pairs_task.name = "pairs_de_custom"
    register_pairs_task.files = ["/data/pairs-ar/*.array_record"]
    register_pairs_task.tokenizer = "/path/to/tokenizer"
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile

from launch import cli


def glob_files(pattern: str) -> list[str]:
    """The files matching ``pattern``, sorted (``tf.io.gfile`` for URLs such as ``gs://``)."""
    if "://" in pattern:
        import tensorflow as tf

        return sorted(tf.io.gfile.glob(pattern))
    return sorted(glob.glob(pattern))


def remove(path: str) -> None:
    if "://" in path:
        import tensorflow as tf

        tf.io.gfile.remove(path)
    else:
        os.remove(path)


def expand(patterns: list[str]) -> list[str]:
    """Each pattern's files, sorted; a path without wildcards is kept as given (a missing one is reported
    by the reader, with its name)."""
    files = []
    for pattern in patterns:
        if not glob.has_magic(pattern):
            files.append(pattern)
            continue
        matched = glob_files(pattern)
        if not matched:
            raise cli.UsageError(f"no file matches {pattern!r}")
        files.extend(matched)
    return files


def parse_columns(items: list[str]) -> dict[str, str | int]:
    """``feature=column`` items -> mapping; a column of digits is a 0-based TSV index."""
    out = {}
    for item in items:
        feature, sep, column = item.partition("=")
        if not sep or not feature or not column:
            raise cli.UsageError(f"--columns takes feature=column items, got {item!r}")
        out[feature] = int(column) if column.isdigit() else column
    return out


def shard_path(out: str, name: str, k: int, shards: int) -> str:
    return os.path.join(out, f"{name}-{k:05d}-of-{shards:05d}.array_record")


@cli.entry_point
def main(argv=None) -> list[str]:
    from bilingual.rows import SKIPPED_ROWS, DataError
    from tasks.records import open_records, resolve_files, write_array_records
    from tasks.row_parser import KINDS, RowParser

    parser = cli.parser(__doc__)
    parser.add_argument("files", nargs="+", help="TSV / JSONL / text / parquet / Arrow files, globs or datasets "
                                                 "save_to_disk directories (local or gs://)")
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--shards", type=int, default=1, help="number of ArrayRecord files")
    parser.add_argument("--name", help="file name prefix (default: the kind)")
    parser.add_argument("--on_error", choices=("raise", "skip"), default="raise")
    parser.add_argument("--columns", nargs="+", default=[], metavar="FEATURE=COLUMN",
                        help="feature -> TSV header name or 0-based index, JSON key or parquet/Arrow column")
    parser.add_argument("--file_format", choices=("tsv", "jsonl", "text"), help="default: from the extension")
    parser.add_argument("--no_header", action="store_true", help="TSV files have no header line")
    parser.add_argument("--num_negatives", type=int, help="retrieval: negatives kept per row (required)")
    parser.add_argument("--score_range", type=float, nargs=2, metavar=("LOW", "HIGH"), help="STS (default 0 5)")
    parser.add_argument("--overwrite", action="store_true", help="replace shards of this name already in --out")
    args = parser.parse_args(argv)
    if args.shards < 1:
        raise cli.UsageError(f"--shards must be >= 1, got {args.shards}")
    name = args.name or args.kind
    kwargs = {"score_range": tuple(args.score_range or (0.0, 5.0))} if args.kind == "sts" else {}
    try:
        row_parser = RowParser(args.kind, file_format=args.file_format, columns=parse_columns(args.columns) or None,
                               header=not args.no_header, num_negatives=args.num_negatives, **kwargs)
    except ValueError as err:
        raise cli.UsageError(str(err)) from None
    remote = "://" in args.out
    existing = glob_files(f"{args.out.rstrip('/')}/{name}-*-of-*.array_record")
    if existing and not args.overwrite:
        raise cli.UsageError(f"--out {args.out} already holds {len(existing)} shard(s) {name}-*.array_record; "
                             "give --overwrite to replace them (or another --out / --name)")

    files = resolve_files(expand(args.files))  # a save_to_disk directory: its Arrow files
    skipped_before = {f: SKIPPED_ROWS.get(f, 0) for f in files}
    try:
        records = open_records(files, row_parser, args.on_error, validate=True)  # the one validating pass
    except DataError:
        raise
    except ValueError as err:  # bad --columns for these files (a negatives column not last, ...)
        raise cli.UsageError(str(err)) from None
    per_file = dict.fromkeys(files, 0)
    per_file.update(records.file_counts())
    for f in files:
        skipped = SKIPPED_ROWS.get(f, 0) - skipped_before[f]
        print(f"{f}: {per_file[f]} rows" + (f", {skipped} malformed row(s) skipped" if skipped else ""))
    n = len(records)
    if n == 0:
        raise DataError(None, f"no valid rows in {files}")

    for path in existing:  # --overwrite: only now that the new rows are valid
        remove(path)
    local = tempfile.mkdtemp(prefix="prepare-data-") if remote else args.out
    os.makedirs(local, exist_ok=True)
    written = []
    for k in range(args.shards):
        path = shard_path(local, name, k, args.shards)
        count = write_array_records((records[i] for i in range(k, n, args.shards)), path)
        written.append(shard_path(args.out, name, k, args.shards))
        print(f"{written[-1]}: {count} rows")
    if remote:
        import tensorflow as tf

        tf.io.gfile.makedirs(args.out)
        for k, target in enumerate(written):
            tf.io.gfile.copy(shard_path(local, name, k, args.shards), target, overwrite=True)
        shutil.rmtree(local)
    print(f"{n} {args.kind} rows in {args.shards} ArrayRecord file(s); register them with "
          f"files = [\"{os.path.join(args.out, name)}-*.array_record\"]")
    return written


if __name__ == "__main__":
    sys.exit(cli.exit_status(main()))
