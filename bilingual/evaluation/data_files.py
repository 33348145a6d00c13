"""Loaders for the uniform evaluation formats of ``shared/data`` (see its README).

Every loader validates while it reads and raises :class:`EvalDataError` naming the file, and the line
where one applies (lines are 1-based and count the header). Formats:

- STS: TSV ``sentence1  sentence2  score`` with a header; score within ``score_range`` (0-5).
- Pair classification: TSV with a header whose first two columns are the pair and which has a
  ``label`` column: ``0``/``1`` or ``not_entailment``/``entailment`` (SQAC-QNLI).
- Bitext: TSV whose first two columns are row-aligned translations (extra columns are ignored),
  or two line-aligned TXT files.
- Retrieval (BEIR): ``corpus-<lang>.jsonl`` ``{"_id","title","text"}``, ``queries-<lang>.jsonl``
  ``{"_id","text"}``, ``qrels-<split>.tsv`` ``query-id  corpus-id  score`` with a header.
- Classification / clustering: TSV with a header holding ``label`` and ``text`` columns.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
from typing import Sequence

import numpy as np

POSITIVE_LABELS = {"1": 1, "0": 0, "entailment": 1, "not_entailment": 0}


class EvalDataError(ValueError):
    """Malformed or missing evaluation data; the message names the file (and line)."""


def _existing(path) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_file():
        raise EvalDataError(f"evaluation file {path} does not exist")
    return path


def read_tsv(path, required: Sequence[str] = (), min_columns: int = 0) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """``(header, [(line_number, cells), ...])`` of a headed TSV; every row has the header's width.

    Quotes are not special (``QUOTE_NONE``): the files hold raw text with literal quote characters.
    """
    path = _existing(path)
    with path.open(encoding="utf-8", newline="") as f:
        try:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        except UnicodeDecodeError as err:
            raise EvalDataError(f"{path}: not valid UTF-8 ({err})") from err
    if not rows:
        raise EvalDataError(f"{path}: empty file, expected a header line")
    header = rows[0]
    missing = [name for name in required if name not in header]
    if missing:
        raise EvalDataError(f"{path}:1: header {header} lacks column(s) {missing}")
    if len(header) < min_columns:
        raise EvalDataError(f"{path}:1: header {header} has fewer than {min_columns} columns")
    body = []
    for number, cells in enumerate(rows[1:], start=2):
        if not cells:  # a trailing blank line
            continue
        if len(cells) != len(header):
            raise EvalDataError(f"{path}:{number}: expected {len(header)} tab-separated columns {header}, "
                                f"got {len(cells)}")
        body.append((number, cells))
    if not body:
        raise EvalDataError(f"{path}: no data rows after the header")
    return header, body


@dataclasses.dataclass
class PairScores:
    """Sentence pairs with one number each: STS gold scores or binary pair labels."""
    sentences1: list[str]
    sentences2: list[str]
    values: np.ndarray  # [n] float64 (STS) or int64 (labels)


def load_sts(path, score_range: tuple[float, float] = (0.0, 5.0)) -> PairScores:
    header, body = read_tsv(path, required=("sentence1", "sentence2", "score"))
    i1, i2, iscore = (header.index(c) for c in ("sentence1", "sentence2", "score"))
    low, high = score_range
    s1, s2, scores = [], [], []
    for number, cells in body:
        try:
            score = float(cells[iscore])
        except ValueError:
            raise EvalDataError(f"{path}:{number}: score {cells[iscore]!r} is not a number") from None
        if not low <= score <= high:
            raise EvalDataError(f"{path}:{number}: score {score} outside the range [{low}, {high}]")
        s1.append(cells[i1])
        s2.append(cells[i2])
        scores.append(score)
    return PairScores(s1, s2, np.asarray(scores, np.float64))


PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"))


def load_pair_labels(path) -> PairScores:
    """Pairs from the columns named in ``PAIR_COLUMNS`` (else the first two columns other than
    ``label``/``id``) with binary labels."""
    header, body = read_tsv(path, required=("label",), min_columns=3)
    ilabel = header.index("label")
    named = [(header.index(a), header.index(b)) for a, b in PAIR_COLUMNS if a in header and b in header]
    if named:
        i1, i2 = named[0]
    else:
        text_columns = [i for i, name in enumerate(header) if name not in ("label", "id")]
        if len(text_columns) < 2:
            raise EvalDataError(f"{path}:1: header {header} has no two text columns besides label/id")
        i1, i2 = text_columns[:2]
    s1, s2, labels = [], [], []
    for number, cells in body:
        label = POSITIVE_LABELS.get(cells[ilabel].strip())
        if label is None:
            raise EvalDataError(f"{path}:{number}: label {cells[ilabel]!r} is not one of {sorted(POSITIVE_LABELS)}")
        s1.append(cells[i1])
        s2.append(cells[i2])
        labels.append(label)
    if len(set(labels)) < 2:
        raise EvalDataError(f"{path}: all pairs have label {labels[0]}; average precision needs both classes")
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
        source_path, target_path = _existing(path), _existing(target_path)
        source = source_path.read_text(encoding="utf-8").splitlines()
        target = target_path.read_text(encoding="utf-8").splitlines()
        if len(source) != len(target):
            raise EvalDataError(f"bitext line counts differ: {source_path} has {len(source)} lines, "
                                f"{target_path} has {len(target)}")
        if not source:
            raise EvalDataError(f"{source_path}: empty bitext file")
        for number, (a, b) in enumerate(zip(source, target), start=1):
            if not a.strip() or not b.strip():
                raise EvalDataError(f"{source_path if not a.strip() else target_path}:{number}: empty line "
                                    "in a line-aligned bitext")
        return Bitext(source, target, source_path.name, target_path.name)
    header, body = read_tsv(path, min_columns=2)
    source, target = [], []
    for number, cells in body:
        if not cells[0].strip() or not cells[1].strip():
            raise EvalDataError(f"{path}:{number}: empty sentence in bitext row")
        source.append(cells[0])
        target.append(cells[1])
    return Bitext(source, target, header[0], header[1])


@dataclasses.dataclass
class Labelled:
    labels: list[str]
    texts: list[str]


def load_labelled(path) -> Labelled:
    header, body = read_tsv(path, required=("label", "text"))
    ilabel, itext = header.index("label"), header.index("text")
    labels, texts = [], []
    for number, cells in body:
        if not cells[itext].strip() or not cells[ilabel].strip():
            raise EvalDataError(f"{path}:{number}: empty label or text")
        labels.append(cells[ilabel])
        texts.append(cells[itext])
    return Labelled(labels, texts)


def read_jsonl(path, required: Sequence[str]) -> list[dict]:
    path = _existing(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalDataError(f"{path}:{number}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise EvalDataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            missing = [k for k in required if k not in record]
            if missing:
                raise EvalDataError(f"{path}:{number}: record lacks field(s) {missing}")
            records.append({**record, "_line": number})
    return records


@dataclasses.dataclass
class RetrievalData:
    corpus: dict[str, str]      # doc id -> text ("title text" when a title is present)
    queries: dict[str, str]     # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance > 0}


def load_retrieval(corpus_path, queries_path, qrels_path) -> RetrievalData:
    """BEIR files. Queries without any relevant document are dropped (BEIR/MTEB do the same)."""
    corpus: dict[str, str] = {}
    for record in read_jsonl(corpus_path, required=("_id", "text")):
        doc_id = str(record["_id"])
        if doc_id in corpus:
            raise EvalDataError(f"{corpus_path}:{record['_line']}: duplicate corpus id {doc_id!r}")
        title = (record.get("title") or "").strip()
        corpus[doc_id] = f"{title} {record['text']}" if title else record["text"]
    if not corpus:
        raise EvalDataError(f"{corpus_path}: empty corpus")
    queries: dict[str, str] = {}
    for record in read_jsonl(queries_path, required=("_id", "text")):
        query_id = str(record["_id"])
        if query_id in queries:
            raise EvalDataError(f"{queries_path}:{record['_line']}: duplicate query id {query_id!r}")
        queries[query_id] = record["text"]
    if not queries:
        raise EvalDataError(f"{queries_path}: no queries")
    header, body = read_tsv(qrels_path, min_columns=3)
    if header[0] in queries or header[2].strip().lstrip("-").isdigit():
        raise EvalDataError(f"{qrels_path}:1: expected a header line 'query-id<TAB>corpus-id<TAB>score', "
                            f"got a data row {header}")
    qrels: dict[str, dict[str, int]] = {}
    for number, cells in body:
        query_id, doc_id = cells[0], cells[1]
        try:
            relevance = int(cells[2])
        except ValueError:
            raise EvalDataError(f"{qrels_path}:{number}: relevance {cells[2]!r} is not an integer") from None
        if query_id not in queries:
            raise EvalDataError(f"{qrels_path}:{number}: query id {query_id!r} is not in {queries_path}")
        if doc_id not in corpus:
            raise EvalDataError(f"{qrels_path}:{number}: corpus id {doc_id!r} is not in {corpus_path}")
        if relevance > 0:
            qrels.setdefault(query_id, {})[doc_id] = relevance
    if not qrels:
        raise EvalDataError(f"{qrels_path}: no positive relevance judgements")
    queries = {q: text for q, text in queries.items() if q in qrels}
    return RetrievalData(corpus, queries, qrels)
