"""Rebuild the bundled demo evaluation data from the full sets (``shared/data`` layout).

    python data/demo/eval/make_subsets.py --source /path/to/shared/data

Each subset keeps the upstream file name, header and row order; rows are drawn with a fixed seed
(``random.Random(SEED)``), the same rows for every language of a parallel set, so that de, es, en and
the cross-lingual files stay aligned. Only openly licensed evaluation sets are used (see SOURCE.md).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import shutil

SEED = 0
HERE = pathlib.Path(__file__).resolve().parent

STS_ROWS, BITEXT_ROWS, PAWS_ROWS, QNLI_ROWS = 200, 200, 300, 300
XQUAD_PASSAGES, SIB_TRAIN_ROWS, SIB_TEST_ROWS = 50, 210, 105
LICENCE_FILES = ["stsb_multi_mt/LICENSE.upstream.txt", "flores200_devtest/LICENSE.upstream-CC-BY-SA.txt"]


def read_lines(path: pathlib.Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def pick(n_rows: int, k: int, tag: str) -> list[int]:
    """``k`` sorted row indices out of ``n_rows``; one draw per ``tag`` so sets don't share a stream."""
    return sorted(random.Random(f"{SEED}-{tag}").sample(range(n_rows), min(k, n_rows)))


def subset_tsv(source: pathlib.Path, out: pathlib.Path, names: list[str], k: int, tag: str) -> None:
    """Same data rows (by index) of every file in ``names``; they must have equal row counts."""
    tables = {name: read_lines(source / name) for name in names}
    counts = {len(lines) for lines in tables.values()}
    assert len(counts) == 1, f"{names} differ in row count: {counts}"
    rows = pick(counts.pop() - 1, k, tag)
    for name, lines in tables.items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join([lines[0]] + [lines[1 + i] for i in rows]) + "\n", encoding="utf-8")


def subset_xquad(source: pathlib.Path, out: pathlib.Path) -> None:
    corpus = {lang: [json.loads(l) for l in read_lines(source / f"xquad/corpus-{lang}.jsonl")] for lang in ("de", "es", "en")}
    keep = {corpus["en"][i]["_id"] for i in pick(len(corpus["en"]), XQUAD_PASSAGES, "xquad")}
    qrels = read_lines(source / "xquad/qrels-test.tsv")
    kept_qrels = [line for line in qrels[1:] if line.split("\t")[1] in keep]
    query_ids = {line.split("\t")[0] for line in kept_qrels}
    (out / "xquad").mkdir(parents=True, exist_ok=True)
    (out / "xquad/qrels-test.tsv").write_text("\n".join([qrels[0]] + kept_qrels) + "\n", encoding="utf-8")
    for lang in ("de", "es", "en"):
        docs = [json.dumps(r, ensure_ascii=False) for r in corpus[lang] if r["_id"] in keep]
        (out / f"xquad/corpus-{lang}.jsonl").write_text("\n".join(docs) + "\n", encoding="utf-8")
        queries = [l for l in read_lines(source / f"xquad/queries-{lang}.jsonl") if json.loads(l)["_id"] in query_ids]
        (out / f"xquad/queries-{lang}.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=pathlib.Path, default=pathlib.Path("/work/shared/data"))
    parser.add_argument("--out", type=pathlib.Path, default=HERE)
    args = parser.parse_args()
    src, out = args.source, args.out

    subset_tsv(src, out, [f"stsb_multi_mt/{l}-test.tsv" for l in ("de", "es", "en", "de-en", "es-en")], STS_ROWS, "stsb")
    for pair in ("de-en", "es-en"):
        subset_tsv(src, out, [f"tatoeba_laser/{pair}-test.tsv"], BITEXT_ROWS, f"tatoeba-{pair}")
    subset_tsv(src, out, [f"flores200_devtest/{p}-devtest.tsv" for p in ("de-en", "es-en")], BITEXT_ROWS, "flores")
    subset_xquad(src, out)
    subset_tsv(src, out, ["pawsx_de/de-test.tsv"], PAWS_ROWS, "pawsx")
    subset_tsv(src, out, ["sqac_qnli_es/es-test.tsv"], QNLI_ROWS, "sqac")
    for split, k in (("train", SIB_TRAIN_ROWS), ("test", SIB_TEST_ROWS)):
        subset_tsv(src, out, [f"sib200/{l}-{split}.tsv" for l in ("de", "es", "en")], k, f"sib200-{split}")
    for name in LICENCE_FILES:
        shutil.copyfile(src / name, out / name)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.suffix in (".tsv", ".jsonl"))
    print(f"wrote demo eval data under {out}: {total / 1e6:.2f} MB of data files")


if __name__ == "__main__":
    main()
