"""Builds the bundled fine-tuning probe subsets under ``data/finetune/`` (the ``shared/data`` layout).

    python -m tasks.build_finetune_data [--shared /path/to/shared/data] [--out data/finetune]

Rows the demo data already bundles are reused, so the two stay consistent: the SIB-200 train/test rows,
the STSb/PAWS-X/SQAC-QNLI test rows of ``data/demo/eval`` and the first STSb train rows of
``data/demo/train/sts`` (the same rows in de/es/en). Dev rows, which the demo does not hold, are drawn
from the full files with a fixed seed (``numpy.random.default_rng(SEED)``), in upstream order, the same
rows in every language of a parallel set. Only openly licensed sets are read (see ``data/finetune/SOURCE.md``).
Re-running reproduces the files byte for byte.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEMO_EVAL = ROOT / "data" / "demo" / "eval"
DEMO_TRAIN = ROOT / "data" / "demo" / "train"
SEED = 8
LANGS = ("de", "es", "en")
SIB_DEV_ROWS, STS_TRAIN_ROWS, STS_DEV_ROWS, PAWS_DEV_ROWS, QNLI_DEV_ROWS = 60, 600, 200, 400, 400


def read_lines(path: pathlib.Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def write_lines(path: pathlib.Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def sample_rows(lines: list[str], k: int, tag: str) -> list[int]:
    """``k`` body-row indices (1-based line numbers; line 0 is the header), sorted: upstream order."""
    rng = np.random.default_rng([SEED, sum(tag.encode())])
    return sorted(int(i) + 1 for i in rng.choice(len(lines) - 1, size=k, replace=False))


def build(shared: pathlib.Path, out: pathlib.Path) -> dict[str, int]:
    counts = {}

    def emit(rel: str, lines: list[str]) -> None:
        write_lines(out / rel, lines)
        counts[rel] = len(lines) - 1

    for lang in LANGS:  # SIB-200: demo train/test rows + a fixed dev sample
        for split in ("train", "test"):
            emit(f"sib200/{lang}-{split}.tsv", read_lines(DEMO_EVAL / "sib200" / f"{lang}-{split}.tsv"))
    sib_dev = {lang: read_lines(shared / "sib200" / f"{lang}-dev.tsv") for lang in LANGS}
    rows = sample_rows(sib_dev["en"], SIB_DEV_ROWS, "sib200-dev")
    for lang in LANGS:
        emit(f"sib200/{lang}-dev.tsv", [sib_dev[lang][0]] + [sib_dev[lang][i] for i in rows])

    sts_dev = {lang: read_lines(shared / "stsb_multi_mt" / f"{lang}-dev.tsv") for lang in LANGS}
    rows = sample_rows(sts_dev["en"], STS_DEV_ROWS, "stsb-dev")
    for lang in LANGS:  # STSb: demo train rows (aligned across languages), demo test rows, a dev sample
        emit(f"stsb_multi_mt/{lang}-train.tsv", read_lines(DEMO_TRAIN / "sts" / f"{lang}.tsv")[:STS_TRAIN_ROWS + 1])
        emit(f"stsb_multi_mt/{lang}-test.tsv", read_lines(DEMO_EVAL / "stsb_multi_mt" / f"{lang}-test.tsv"))
        emit(f"stsb_multi_mt/{lang}-dev.tsv", [sts_dev[lang][0]] + [sts_dev[lang][i] for i in rows])

    for folder, lang, k in (("pawsx_de", "de", PAWS_DEV_ROWS), ("sqac_qnli_es", "es", QNLI_DEV_ROWS)):
        dev = read_lines(shared / folder / f"{lang}-dev.tsv")
        emit(f"{folder}/{lang}-dev.tsv", [dev[0]] + [dev[i] for i in sample_rows(dev, k, folder)])
        emit(f"{folder}/{lang}-test.tsv", read_lines(DEMO_EVAL / folder / f"{lang}-test.tsv"))
    # the STSb licence file travels with the rows, as in data/demo/eval
    (out / "stsb_multi_mt" / "LICENSE.upstream.txt").write_bytes(
        (DEMO_EVAL / "stsb_multi_mt" / "LICENSE.upstream.txt").read_bytes())
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=pathlib.Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "data" / "finetune")
    args = parser.parse_args(argv)
    for rel, n in build(args.shared, args.out).items():
        print(f"{rel}: {n} rows")


if __name__ == "__main__":
    main()
