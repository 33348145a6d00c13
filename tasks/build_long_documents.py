"""Builds the bundled long-document literature sections ``data/demo/eval/long_literature/{de,es}-sections.jsonl``.

    python -m tasks.build_long_documents [--shared ../shared/data] [--out data/demo/eval/long_literature]
    python -m tasks.build_long_documents --full --out /tmp/long_literature   # every section of every work

Source: the public-domain novels of ``shared/data/mono_literature_pd`` (one paragraph per line). The demo
trains its MLM and retrieval stages on paragraphs of the same works (``data/demo/train``), so the sections are
made **held out** first: every paragraph that shares a sentence (>= 30 characters) with any demo training
file is removed, and the remaining paragraphs of each work, in book order, are cut into consecutive sections
of at least 40,000 characters (``long_documents.sections_from_paragraphs``; enough for 8192 tokens with the
project's tokenizers). The bundled build keeps ``--sections`` of them per language, chosen with a fixed seed
and spread over the works; ``--full`` keeps all. Re-running reproduces the files byte for byte.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from bilingual.evaluation.long_documents import held_out_paragraphs, sections_from_paragraphs, sentences_of_files

SEED = 20261202
ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SHARED = ROOT.parent / "shared" / "data"
TRAIN = ROOT / "data" / "demo" / "train"


def training_sentences(train_root: pathlib.Path = TRAIN) -> set[str]:
    """Every sentence (>= 30 chars) of every demo training file (text lines and TSV cells)."""
    return sentences_of_files(p for p in train_root.rglob("*") if p.suffix in (".txt", ".tsv"))


def held_out_sections(files: list[pathlib.Path], seen: set[str]) -> tuple[list[dict], dict]:
    sections, stats = [], {}
    for path in files:
        paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").splitlines() if p.strip()]
        kept = held_out_paragraphs(paragraphs, seen)
        work = path.stem
        made = sections_from_paragraphs(kept, work)
        stats[work] = {"paragraphs": len(paragraphs), "held_out": len(kept), "sections": len(made)}
        sections += made
    return sections, stats


def pick(sections: list[dict], n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` sections, round-robin over the works (seeded order within each), sorted by id."""
    by_work: dict[str, list[dict]] = {}
    for s in sections:
        by_work.setdefault(s["work"], []).append(s)
    queues = {w: [items[i] for i in rng.permutation(len(items))] for w, items in sorted(by_work.items())}
    out = []
    while len(out) < n and any(queues.values()):
        for w in sorted(queues):
            if queues[w] and len(out) < n:
                out.append(queues[w].pop(0))
    return sorted(out, key=lambda s: s["_id"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=pathlib.Path, default=DEFAULT_SHARED)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "data" / "demo" / "eval" / "long_literature")
    parser.add_argument("--sections", type=int, default=12, help="sections per language in the bundled build")
    parser.add_argument("--full", action="store_true", help="keep every held-out section")
    args = parser.parse_args(argv)
    source = args.shared / "mono_literature_pd"
    if not source.is_dir():
        raise SystemExit(f"{source} not found: the literature build needs shared/data/mono_literature_pd")
    seen = training_sentences()
    args.out.mkdir(parents=True, exist_ok=True)
    for language in ("de", "es"):
        files = sorted(source.glob(f"{language}-*.txt"))
        sections, stats = held_out_sections(files, seen)
        chosen = sections if args.full else pick(sections, args.sections, np.random.default_rng([SEED, len(language)]))
        path = args.out / f"{language}-sections.jsonl"
        path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in chosen), encoding="utf-8")
        chars = sum(len(p) for s in chosen for p in s["paragraphs"])
        print(f"{path}: {len(chosen)} sections, {chars} characters; per work {json.dumps(stats)}")


if __name__ == "__main__":
    main()
