"""Loaders for the uniform evaluation formats of ``shared/data`` (see its README).

Every loader validates while it reads (through :mod:`bilingual.rows`: UTF-8 lines, a leading BOM dropped,
tab-separated cells with literal quotes, exactly as many cells per row as the header names) and raises
:class:`bilingual.rows.DataError` naming the file, and the line where one applies (lines are 1-based and
count the header). Formats:

- STS: TSV ``sentence1  sentence2  score`` with a header; score within ``score_range`` (0-5).
- Pair classification: TSV with a header whose first two columns are the pair and which has a
  ``label`` column: ``0``/``1`` or ``not_entailment``/``entailment`` (SQAC-QNLI).
- Bitext: TSV whose first two columns are row-aligned translations (further header columns are ignored),
  or two line-aligned TXT files.
- Retrieval (BEIR): ``corpus-<lang>.jsonl`` ``{"_id","title","text"}``, ``queries-<lang>.jsonl``
  ``{"_id","text"}``, ``qrels-<split>.tsv`` ``query-id  corpus-id  score`` with a header.
- Classification / clustering: TSV with a header holding ``label`` and ``text`` columns.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from bilingual.rows import DataError, read_headed_tsv, read_jsonl, read_lines, valid_number, valid_text

POSITIVE_LABELS = {"1": 1, "0": 0, "entailment": 1, "not_entailment": 0}


@dataclasses.dataclass
class PairScores:
    """Sentence pairs with one number each: STS gold scores or binary pair labels."""
    sentences1: list[str]
    sentences2: list[str]
    values: np.ndarray  # [n] float64 (STS) or int64 (labels)


def load_sts(path, score_range: tuple[float, float] = (0.0, 5.0)) -> PairScores:
    header, body = read_headed_tsv(path, required=("sentence1", "sentence2", "score"))
    i1, i2, iscore = (header.index(c) for c in ("sentence1", "sentence2", "score"))
    s1, s2, scores = [], [], []
    for number, cells in body:
        scores.append(valid_number(cells[iscore], path, number, "score", score_range))
        s1.append(cells[i1])
        s2.append(cells[i2])
    return PairScores(s1, s2, np.asarray(scores, np.float64))


PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"))


def load_pair_labels(path) -> PairScores:
    """Pairs from the columns named in ``PAIR_COLUMNS`` (else the first two columns other than
    ``label``/``id``) with binary labels."""
    header, body = read_headed_tsv(path, required=("label",), min_columns=3)
    ilabel = header.index("label")
    named = [(header.index(a), header.index(b)) for a, b in PAIR_COLUMNS if a in header and b in header]
    if named:
        i1, i2 = named[0]
    else:
        text_columns = [i for i, name in enumerate(header) if name not in ("label", "id")]
        if len(text_columns) < 2:
            raise DataError(path, f"header {header} has no two text columns besides label/id", 1)
        i1, i2 = text_columns[:2]
    s1, s2, labels = [], [], []
    for number, cells in body:
        label = POSITIVE_LABELS.get(cells[ilabel].strip())
        if label is None:
            raise DataError(path, f"label {cells[ilabel]!r} is not one of {sorted(POSITIVE_LABELS)}", number)
        s1.append(cells[i1])
        s2.append(cells[i2])
        labels.append(label)
    if len(set(labels)) < 2:
        raise DataError(path, f"all pairs have label {labels[0]}; average precision needs both classes")
    return PairScores(s1, s2, np.asarray(labels, np.int64))


@dataclasses.dataclass
class Bitext:
    source: list[str]  # row i of source translates row i of target
    target: list[str]
    source_name: str
    target_name: str


def load_bitext(path, target_path=None) -> Bitext:
    """A TSV (first two columns aligned) or, with ``target_path``, two line-aligned text files."""
    if target_path is not None:
        source_path, target_path = pathlib.Path(path), pathlib.Path(target_path)
        source = [text for _, text in read_lines(source_path)]
        target = [text for _, text in read_lines(target_path)]
        if len(source) != len(target):
            raise DataError(None, f"bitext line counts differ: {source_path} has {len(source)} lines, "
                                  f"{target_path} has {len(target)}")
        if not source:
            raise DataError(source_path, "empty bitext file")
        for number, (a, b) in enumerate(zip(source, target), start=1):
            if not a.strip() or not b.strip():
                raise DataError(source_path if not a.strip() else target_path,
                                "empty line in a line-aligned bitext", number)
        return Bitext(source, target, source_path.name, target_path.name)
    header, body = read_headed_tsv(path, min_columns=2)
    source, target = [], []
    for number, cells in body:
        source.append(valid_text(cells[0], path, number, header[0]))
        target.append(valid_text(cells[1], path, number, header[1]))
    return Bitext(source, target, header[0], header[1])


@dataclasses.dataclass
class Labelled:
    labels: list[str]
    texts: list[str]


def load_labelled(path) -> Labelled:
    header, body = read_headed_tsv(path, required=("label", "text"))
    ilabel, itext = header.index("label"), header.index("text")
    labels, texts = [], []
    for number, cells in body:
        texts.append(valid_text(cells[itext], path, number, "text"))
        labels.append(valid_text(cells[ilabel], path, number, "label"))
    return Labelled(labels, texts)


@dataclasses.dataclass
class RetrievalData:
    corpus: dict[str, str]      # doc id -> text ("title text" when a title is present)
    queries: dict[str, str]     # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance > 0}


def load_retrieval(corpus_path, queries_path, qrels_path) -> RetrievalData:
    """BEIR files. Queries without any relevant document are dropped (BEIR/MTEB do the same)."""
    corpus: dict[str, str] = {}
    for number, record in read_jsonl(corpus_path, required=("_id", "text"), skip_blank=True):
        doc_id = str(record["_id"])
        if doc_id in corpus:
            raise DataError(corpus_path, f"duplicate corpus id {doc_id!r}", number)
        title = (record.get("title") or "").strip()
        corpus[doc_id] = f"{title} {record['text']}" if title else record["text"]
    if not corpus:
        raise DataError(corpus_path, "empty corpus")
    queries: dict[str, str] = {}
    for number, record in read_jsonl(queries_path, required=("_id", "text"), skip_blank=True):
        query_id = str(record["_id"])
        if query_id in queries:
            raise DataError(queries_path, f"duplicate query id {query_id!r}", number)
        queries[query_id] = record["text"]
    if not queries:
        raise DataError(queries_path, "no queries")
    header, body = read_headed_tsv(qrels_path, min_columns=3)
    if header[0] in queries or header[2].strip().lstrip("-").isdigit():
        raise DataError(qrels_path, f"expected a header line 'query-id<TAB>corpus-id<TAB>score', got a data row "
                                    f"{header}", 1)
    qrels: dict[str, dict[str, int]] = {}
    for number, cells in body:
        query_id, doc_id = cells[0], cells[1]
        try:
            relevance = int(cells[2])
        except ValueError:
            raise DataError(qrels_path, f"relevance {cells[2]!r} is not an integer", number) from None
        if query_id not in queries:
            raise DataError(qrels_path, f"query id {query_id!r} is not in {queries_path}", number)
        if doc_id not in corpus:
            raise DataError(qrels_path, f"corpus id {doc_id!r} is not in {corpus_path}", number)
        if relevance > 0:
            qrels.setdefault(query_id, {})[doc_id] = relevance
    if not qrels:
        raise DataError(qrels_path, "no positive relevance judgements")
    queries = {q: text for q, text in queries.items() if q in qrels}
    return RetrievalData(corpus, queries, qrels)
