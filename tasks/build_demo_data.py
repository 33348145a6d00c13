"""Builds the bundled demo TRAINING data under ``data/demo/train/`` from the shared data folder.

    python -m tasks.build_demo_data [--shared /work/shared/data] [--out data/demo/train]

Only openly licensed TRAINING splits are read (see ``data/demo/train/SOURCE.md`` for licences and what each
file holds); no dev/test split is opened. Every sample uses a fixed seed, so re-running reproduces the files
byte for byte. The output is committed; tests and the demo never need the shared folder.

Hard negatives are mined with scikit-learn TF-IDF (word 1-2-grams, sublinear tf, cosine similarity): for
each query the highest-scoring candidate passages that are not its positive (nor a duplicate of it) and score
below 95% of the positive's score (a relative margin against false negatives, as sentence-transformers'
``mine_hard_negatives(relative_margin=0.05)`` does).
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import re

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

SEED = 20240229
NUM_NEGATIVES = 3
RELATIVE_MARGIN = 0.05
ROOT = pathlib.Path(__file__).resolve().parent.parent


def read_tsv(path: pathlib.Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[1:]


def write_tsv(path: pathlib.Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        for row in [header] + rows:
            assert len(row) == len(header), (path, row)
            assert all("\t" not in c and "\n" not in c and c.strip() for c in row), row
            f.write("\t".join(row) + "\n")


def write_lines(path: pathlib.Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def sample_to_chars(lines: list[str], budget: int, rng: np.random.Generator) -> list[str]:
    out, total = [], 0
    for i in rng.permutation(len(lines)):
        if total + len(lines[i]) > budget:
            continue
        out.append(lines[i])
        total += len(lines[i])
    return out


def mine_negatives(queries: list[str], passages: list[str], positives: list[int], m: int,
                   extra_exclude: list[set[int]] | None = None) -> list[list[int]]:
    """For each query, the ``m`` passages with the highest TF-IDF cosine that are not its positive."""
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    p = vectorizer.fit_transform(passages)
    q = vectorizer.transform(queries)
    scores = (q @ p.T).toarray()
    out = []
    for i, pos in enumerate(positives):
        exclude = {pos} | (extra_exclude[i] if extra_exclude else set())
        ceiling = (1 - RELATIVE_MARGIN) * scores[i, pos]
        order = np.argsort(-scores[i], kind="stable")
        picked = []
        for j in order:
            if j in exclude or scores[i, j] >= ceiling or passages[j] == passages[pos] \
                    or passages[j] in (passages[k] for k in picked):
                continue
            picked.append(int(j))
            if len(picked) == m:
                break
        out.append(picked)
    return out


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-ZÄÖÜ»„])")


def build(shared: pathlib.Path, out: pathlib.Path) -> dict[str, int]:
    rng = np.random.default_rng(SEED)
    counts = {}
    lit = shared / "mono_literature_pd"

    # --- MLM text ------------------------------------------------------------------------------------
    de_paragraphs = [line.strip() for f in sorted(lit.glob("de-*.txt"))
                     for line in f.read_text(encoding="utf-8").splitlines() if len(line.strip()) >= 40]
    order = rng.permutation(len(de_paragraphs))
    mlm_pool, ict_pool = order[: len(order) // 2], order[len(order) // 2:]  # disjoint halves
    de_text = sample_to_chars([de_paragraphs[i] for i in mlm_pool], 800_000, rng)
    es_lines = [line.strip() for line in (lit / "es-cervantes-don-quijote.txt").read_text(encoding="utf-8")
                .splitlines() if len(line.strip()) >= 40]
    es_text = sample_to_chars(es_lines, 500_000, rng)
    en_lines = sorted({r[1] for r in read_tsv(shared / "tatoeba_pairs/es-en.tsv")}
                      | {s for r in read_tsv(shared / "stsb_multi_mt/en-train.tsv") for s in r[:2]})
    en_text = sample_to_chars(en_lines, 800_000, rng)
    for lang, lines in (("de", de_text), ("en", en_text), ("es", es_text)):
        write_lines(out / f"mlm/{lang}.txt", lines)
        counts[f"mlm/{lang}.txt"] = len(lines)

    # --- pairs ---------------------------------------------------------------------------------------
    for pair, n in (("de-en", 5000), ("es-en", 3000)):
        rows = read_tsv(shared / f"tatoeba_pairs/{pair}.tsv")
        rows = [rows[i][:2] for i in rng.permutation(len(rows))[:n]]
        write_tsv(out / f"pairs/{pair}.tsv", pair.split("-"), rows)
        counts[f"pairs/{pair}.tsv"] = len(rows)
    sts_de = read_tsv(shared / "stsb_multi_mt/de-train.tsv")
    de_pairs = [[a, b] for a, b, s in sts_de if float(s) >= 4.0 and a != b]
    de_pairs = [de_pairs[i] for i in rng.permutation(len(de_pairs))]
    write_tsv(out / "pairs/de.tsv", ["sentence1", "sentence2"], de_pairs)
    counts["pairs/de.tsv"] = len(de_pairs)

    # --- retrieval, German: inverse cloze task on literature paragraphs not used for MLM -----------------
    candidates = []
    for i in ict_pool:
        sentences = SENTENCE_END.split(de_paragraphs[i])
        if 3 <= len(sentences) <= 8 and 250 <= len(de_paragraphs[i]) <= 700:
            candidates.append(sentences)
    queries, positives_text = [], []
    for sentences in candidates:
        k = int(rng.integers(len(sentences)))
        if len(sentences[k]) < 30:
            continue
        queries.append(sentences[k])
        positives_text.append(" ".join(s for j, s in enumerate(sentences) if j != k))
    passages = [" ".join(s) for s in candidates]  # negatives are whole paragraphs
    keep = rng.permutation(len(queries))[:600]
    queries = [queries[i] for i in keep]
    positives_text = [positives_text[i] for i in keep]
    all_passages = positives_text + passages
    # the query's own full paragraph must not come back as a negative: exclude passages containing the query
    exclude = [{j for j, p in enumerate(all_passages) if q in p} for q in queries]
    negs = mine_negatives(queries, all_passages, list(range(len(queries))), NUM_NEGATIVES, exclude)
    rows = [[q, p] + [all_passages[j] for j in n] for q, p, n in zip(queries, positives_text, negs)
            if len(n) == NUM_NEGATIVES]  # a query sharing no word with its positive has no negative under the margin
    counts["retrieval/de.tsv dropped (no negatives under the margin)"] = len(queries) - len(rows)
    header = ["query", "positive"] + [f"negative_{i + 1}" for i in range(NUM_NEGATIVES)]
    write_tsv(out / "retrieval/de.tsv", header, rows)
    counts["retrieval/de.tsv"] = len(rows)

    # --- retrieval, Spanish: SQuAD-es questions -> paragraphs, and SQAC question -> answer sentence -------
    corpus = [json.loads(line) for line in (shared / "squad_es_dev_small/corpus-es.jsonl").open(encoding="utf-8")]
    query_text = {q["_id"]: q["text"] for q in
                  map(json.loads, (shared / "squad_es_dev_small/queries-es.jsonl").open(encoding="utf-8"))}
    index = {c["_id"]: i for i, c in enumerate(corpus)}
    qrels = [r for r in read_tsv(shared / "squad_es_dev_small/qrels-train.tsv") if int(r[2]) > 0]
    qrels = [qrels[i] for i in rng.permutation(len(qrels))[:250]]
    texts = [c["text"] for c in corpus]
    squad_q = [query_text[r[0]] for r in qrels]
    n_squad_queries = len(squad_q)
    squad_pos = [index[r[1]] for r in qrels]
    negs = mine_negatives(squad_q, texts, squad_pos, NUM_NEGATIVES)
    rows = [[q, texts[p]] + [texts[j] for j in n] for q, p, n in zip(squad_q, squad_pos, negs)
            if len(n) == NUM_NEGATIVES]
    n_squad = len(rows)
    # SQAC dev (QNLI form; the test split stays for evaluation): the entailment sentence is the positive, the
    # upstream not_entailment sentences of the same question (lexically close, same context) come first
    # among the negatives, TF-IDF-mined sentences from the whole dev pool fill up to NUM_NEGATIVES.
    sqac = read_tsv(shared / "sqac_qnli_es/es-dev.tsv")
    sentences = sorted({r[1] for r in sqac})
    sent_index = {s: i for i, s in enumerate(sentences)}
    by_question: dict[str, dict[str, list[str]]] = {}
    for q, s, label in sqac:
        by_question.setdefault(q, {"entailment": [], "not_entailment": []})[label].append(s)
    sqac_items = [(q, d["entailment"][0], d["not_entailment"]) for q, d in sorted(by_question.items())
                  if d["entailment"]]
    sqac_items = [sqac_items[i] for i in rng.permutation(len(sqac_items))[:800]]
    mined = mine_negatives([q for q, _, _ in sqac_items], sentences, [sent_index[p] for _, p, _ in sqac_items],
                           NUM_NEGATIVES)
    for (q, pos, upstream), extra in zip(sqac_items, mined):
        negatives = [s for s in upstream if s != pos][:NUM_NEGATIVES]
        negatives += [sentences[j] for j in extra if sentences[j] not in negatives][: NUM_NEGATIVES - len(negatives)]
        if len(negatives) == NUM_NEGATIVES:
            rows.append([q, pos] + negatives)
    counts["retrieval/es.tsv dropped (no negatives under the margin)"] = n_squad_queries + len(sqac_items) - len(rows)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    write_tsv(out / "retrieval/es.tsv", header, rows)
    counts["retrieval/es.tsv"] = len(rows)
    counts["retrieval/es.tsv (squad_es)"] = n_squad

    # --- STS train ------------------------------------------------------------------------------------
    keep = np.sort(rng.permutation(5749)[:1500])  # the same rows in every language (they are translations)
    for lang in ("de", "en", "es"):
        rows = read_tsv(shared / f"stsb_multi_mt/{lang}-train.tsv")
        assert len(rows) == 5749, (lang, len(rows))
        write_tsv(out / f"sts/{lang}.tsv", ["sentence1", "sentence2", "score"], [rows[i] for i in keep])
        counts[f"sts/{lang}.tsv"] = len(keep)
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="/work/shared/data", type=pathlib.Path)
    parser.add_argument("--out", default=ROOT / "data/demo/train", type=pathlib.Path)
    args = parser.parse_args(argv)
    counts = build(args.shared, args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file() and p.name != "SOURCE.md")
    for name, n in counts.items():
        print(f"{name:32s} {n:7d} rows")
    print(f"total {total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
