"""Long-document retrieval at 256 ... 8192 tokens, measured the way LongEmbed (Zhu et al. 2024) does.

Three generators, all seeded and language-aware (en, de, es), each making one retrieval problem per target
length: ``n`` queries, ``n`` documents, query ``i``'s only relevant document is document ``i``.

* ``passkey``: a key sentence ("The pass key is 73914. Remember it. 73914 is the pass key.") hidden at a
  seeded position in filler text; the query asks for the text holding that key. At one length all documents
  share the same filler and the same insertion point and **differ only in the key** (distinct 5-digit keys,
  none of which occurs in the filler), so anything above chance is the key seen through the embedding.
* ``needle``: a content sentence (the sentence of an XQuAD passage that holds a question's answer) hidden in
  the same kind of unrelated filler; the query is the question it answers. Documents again differ only in
  the needle (one needle per XQuAD passage, distinct passages).
* ``literature``: real long text. Documents are windows of held-out sections of public-domain novels
  (``data/demo/eval/long_literature``, built by ``tasks/build_long_documents.py``); the query is an excerpt
  of consecutive sentences of its window, **removed from the document**. One window per section.

Filler is real, openly licensed evaluation text (FLORES-200 devtest sentences, CC BY-SA 4.0), not gibberish;
when the pool is shorter than a document it is reused in a fresh seeded order (stated in the result).

Lengths are counted with the model's tokenizer (``count_tokens(texts) -> [n_tokens]`` without special
tokens): a document of target length ``L`` has at most ``L - 2`` tokens, so with ``<s> ... </s>`` it fits
``L``, and is filled up to the last whole filler sentence that fits. Without a tokenizer a deterministic
word-and-punctuation count (:func:`simple_token_count`) stands in (tests use it for the fixed hashes).

Scores (x100, per length): ``accuracy`` (top-1, LongEmbed's nDCG@1 for the synthetic tasks; chance ``1/n``),
``ndcg_at_10`` (LongEmbed's metric for the real tasks; with one relevant document per query chance is
``(1/n) * sum_{r<=min(10,n)} 1/log2(r+1)``) and ``mrr_at_10``. Ranking is by cosine similarity, ties broken
by document order, so a constant encoder scores exactly chance (each document is the answer to one query).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import json
import math
import pathlib
import re
import time
import zlib
from typing import Any, Callable, Optional, Sequence

import numpy as np

from bilingual.evaluation.common import l2_normalize

LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
KINDS = ("passkey", "needle", "literature")
MAIN_METRIC = {"passkey": "accuracy", "needle": "accuracy", "literature": "ndcg_at_10"}
DEFAULT_DOCUMENTS = {"passkey": 16, "needle": 16, "literature": 12}
SPECIAL_TOKENS = 2  # <s> ... </s>

TokenCounter = Callable[[Sequence[str]], list]

PASSKEY = {
    "en": ("The pass key is {key}. Remember it. {key} is the pass key.",
           "Which text holds the pass key {key}?"),
    "de": ("Der Passschlüssel ist {key}. Merke ihn dir. {key} ist der Passschlüssel.",
           "Welcher Text enthält den Passschlüssel {key}?"),
    "es": ("La clave de acceso es {key}. Recuérdala. {key} es la clave de acceso.",
           "¿Qué texto contiene la clave de acceso {key}?"),
}

_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?;])[\"'»«“”’)]*\s+(?=[\"'»«“„¿¡(]*[A-ZÄÖÜÁÉÍÓÚÑ0-9])")


class LongDocumentError(ValueError):
    """A long-document source that cannot make the requested task (too little text, a bad file)."""


def simple_token_count(texts: Sequence[str]) -> list[int]:
    """Words and punctuation marks: a tokenizer-free, deterministic stand-in for a token count."""
    return [len(_WORDS.findall(t)) for t in texts]


def tokenizer_counter(tokenizer) -> TokenCounter:
    """``count_tokens`` for a ``transformers`` tokenizer: tokens per text without special tokens."""

    def count(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = tokenizer(list(texts), add_special_tokens=False, truncation=False, padding=False,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        return [len(x) for x in ids]

    return count


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def rng_for(kind: str, language: str, length: int, seed: int) -> np.random.Generator:
    """One independent stream per (generator, language, length, seed)."""
    return np.random.default_rng([seed, zlib.crc32(f"{kind}|{language}|{length}".encode())])


@dataclasses.dataclass
class LongTask:
    """One retrieval problem at one target length: query ``i`` -> document ``positives[i]``."""

    kind: str
    language: str
    length: int
    queries: list[str]
    documents: list[str]
    positives: list[int]
    answers: list[str]          # what makes document i the answer (key sentence, needle, removed excerpt)
    doc_tokens: list[int]       # tokens per document (without specials), by the counter used
    insert_at: list[float]      # where the answer sits (fraction of the document's sentences)
    notes: list[str] = dataclasses.field(default_factory=list)

    def digest_payload(self) -> dict:
        return {"kind": self.kind, "language": self.language, "length": self.length, "queries": self.queries,
                "documents": self.documents, "positives": self.positives}


def digest(tasks: Sequence[LongTask]) -> str:
    """sha256 of the generated queries, documents and answers: what the tests pin."""
    blob = json.dumps([t.digest_payload() for t in tasks], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- sources
@dataclasses.dataclass
class Source:
    """Raw material of one long-document task: filler sentences, needles, or literature sections."""

    kind: str
    language: str
    filler: list[str] = dataclasses.field(default_factory=list)
    needles: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (question, sentence)
    sections: list[dict] = dataclasses.field(default_factory=list)            # {"_id", "paragraphs"}


def read_filler(path, language: str) -> list[str]:
    """Sentences of a TSV column named ``language`` (FLORES layout), or of a text file (one per line)."""
    path = pathlib.Path(path)
    if path.suffix == ".tsv":
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        if not rows or language not in rows[0]:
            raise LongDocumentError(f"{path}: no column {language!r} in header {rows[0] if rows else []}")
        col = rows[0].index(language)
        lines = [r[col] for r in rows[1:] if len(r) > col]
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
    sentences = [s for line in lines for s in split_sentences(line)]
    sentences = [s for s in dict.fromkeys(sentences) if len(s) >= 20]
    if not sentences:
        raise LongDocumentError(f"{path}: no filler sentences for {language}")
    return sentences


def read_needles(queries_path, corpus_path) -> list[tuple[str, str]]:
    """(question, sentence) pairs from a BEIR corpus + queries with ``answers`` (XQuAD): per passage, the
    first question (in file order) whose answer occurs in exactly one sentence of its passage, that
    sentence being 30-400 characters. At most one needle per passage."""
    corpus = {}
    for line in pathlib.Path(corpus_path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            doc = json.loads(line)
            corpus[doc["_id"]] = split_sentences(doc["text"])
    qrels = pathlib.Path(queries_path).with_name("qrels-test.tsv")
    passage_of = {}
    if qrels.is_file():
        for row in qrels.read_text(encoding="utf-8").splitlines()[1:]:
            q, d, *_ = row.split("\t")
            passage_of[q] = d
    needles, used = [], set()
    for line in pathlib.Path(queries_path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        q = json.loads(line)
        passage = passage_of.get(q["_id"])
        if passage is None or passage in used or passage not in corpus:
            continue
        for answer in q.get("answers", []):
            hits = [s for s in corpus[passage] if answer and answer in s]
            if len(hits) == 1 and 30 <= len(hits[0]) <= 400:
                needles.append((q["text"], hits[0]))
                used.add(passage)
                break
    if not needles:
        raise LongDocumentError(f"{queries_path}: no usable needles (queries need 'answers' and qrels-test.tsv)")
    return needles


MIN_SHARED_SENTENCE = 30


def sentences_of_files(paths) -> set[str]:
    """Every sentence (>= 30 characters) of text files (one text per line) and TSV files (every cell)."""
    sentences: set[str] = set()
    for path in sorted(pathlib.Path(p) for p in paths):
        if path.suffix == ".tsv":
            with path.open(encoding="utf-8", newline="") as f:
                cells = [c for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) for c in row]
        else:
            cells = path.read_text(encoding="utf-8").splitlines()
        for cell in cells:
            sentences.update(s for s in split_sentences(cell) if len(s) >= MIN_SHARED_SENTENCE)
    return sentences


def held_out_paragraphs(paragraphs: Sequence[str], seen: set[str]) -> list[str]:
    """The paragraphs that share no sentence with ``seen`` (see :func:`sentences_of_files`)."""
    return [p for p in paragraphs if not any(s in seen for s in split_sentences(p))]


def read_sections(path, exclude: Optional[set[str]] = None) -> list[dict]:
    """Literature sections: a JSONL file ``{"_id", "work", "paragraphs": [...]}``, or a glob of raw
    one-paragraph-per-line text files (the full build: paragraphs sharing a sentence with ``exclude`` are
    dropped, the rest of each file cut into sections by :func:`sections_from_paragraphs`)."""
    text = str(path)
    if any(c in text for c in "*?["):
        sections = []
        for file in sorted(glob.glob(text)):
            paragraphs = [p.strip() for p in pathlib.Path(file).read_text(encoding="utf-8").splitlines() if p.strip()]
            if exclude:
                paragraphs = held_out_paragraphs(paragraphs, exclude)
            sections += sections_from_paragraphs(paragraphs, pathlib.Path(file).stem)
        return sections
    return [json.loads(line) for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


SECTION_CHARS = 40_000


def sections_from_paragraphs(paragraphs: Sequence[str], work: str, chars: int = SECTION_CHARS) -> list[dict]:
    """Consecutive paragraphs cut into sections of at least ``chars`` characters (the tail is dropped)."""
    sections, current, size = [], [], 0
    for p in paragraphs:
        current.append(p)
        size += len(p) + 1
        if size >= chars:
            sections.append({"_id": f"{work}-{len(sections):03d}", "work": work, "paragraphs": current})
            current, size = [], 0
    return sections


def load_source(kind: str, language: str, paths: dict, exclude: Optional[set[str]] = None) -> Source:
    """The task's raw material from its files (roles: passkey ``filler``; needle ``filler``, ``queries``,
    ``corpus``; literature ``data``; ``exclude``: sentences whose paragraphs a raw-text build drops)."""
    if kind == "passkey":
        return Source(kind, language, filler=read_filler(paths["filler"], language))
    if kind == "needle":
        return Source(kind, language, filler=read_filler(paths["filler"], language),
                      needles=read_needles(paths["queries"], paths["corpus"]))
    if kind == "literature":
        return Source(kind, language, sections=read_sections(paths["data"], exclude))
    raise LongDocumentError(f"unknown long-document kind {kind!r}; expected one of {KINDS}")


# ------------------------------------------------------------------------------------------- generators
def _filler(pool: list[str], counts: dict, budget: int, rng: np.random.Generator) -> tuple[list[str], bool]:
    """Sentences of ``pool`` in seeded order, each taken if it still fits ``budget`` tokens (first fit), until
    not even the shortest fits; the pool is reshuffled and reused when one pass is not enough."""
    out, used, passes = [], 0, 0
    smallest = min(counts.values())
    while budget - used >= smallest:
        added = False
        for i in rng.permutation(len(pool)):
            n = counts[pool[i]]
            if used + n <= budget:
                out.append(pool[i])
                used += n
                added = True
            if budget - used < smallest:
                break
        passes += 1
        if not added:
            break
    return out, passes > 1


def _fit(make: Callable[[list[str]], list[str]], filler: list[str], limit: int,
         count: TokenCounter) -> tuple[list[str], list[int]]:
    """Documents ``make(filler)``; drop trailing filler sentences until every document has <= limit tokens
    (token counts of joined text can differ from the sum of the parts)."""
    while True:
        docs = make(filler)
        tokens = count(docs)
        if max(tokens) <= limit or not filler:
            return docs, tokens
        filler = filler[:-1]


def _synthetic(kind: str, source: Source, length: int, n: int, seed: int,
               count: TokenCounter) -> LongTask:
    rng = rng_for(kind, source.language, length, seed)
    filler_text = " ".join(source.filler)
    if kind == "passkey":
        key_t, query_t = PASSKEY[source.language]
        keys = []
        for key in (rng.permutation(90000) + 10000):
            if str(key) not in filler_text:
                keys.append(str(key))
            if len(keys) == n:
                break
        answers = [key_t.format(key=k) for k in keys]
        queries = [query_t.format(key=k) for k in keys]
    else:
        if len(source.needles) < n:
            raise LongDocumentError(f"needle-{source.language}: {n} documents asked for, {len(source.needles)} "
                                    "needles available")
        picked = sorted(rng.choice(len(source.needles), n, replace=False))
        queries = [source.needles[i][0] for i in picked]
        answers = [source.needles[i][1] for i in picked]
    # counted as they appear inside the joined document (after a space: byte-level BPE merges it in)
    counts = dict(zip(source.filler, count([" " + s for s in source.filler])))
    budget = length - SPECIAL_TOKENS - max(count(answers)) - 1
    if budget < 1:
        raise LongDocumentError(f"{kind}-{source.language}: the inserted sentence alone exceeds {length} tokens")
    filler, reused = _filler(source.filler, counts, budget, rng)
    fraction = float(rng.uniform(0.0, 1.0))

    def make(fill):
        at = int(round(fraction * len(fill)))
        return [" ".join(fill[:at] + [a] + fill[at:]) for a in answers]

    docs, tokens = _fit(make, filler, length - SPECIAL_TOKENS, count)
    notes = ["filler pool reused (shorter than the document)"] if reused else []
    return LongTask(kind, source.language, length, queries, docs, list(range(n)), answers, tokens,
                    [fraction] * n, notes)


EXCERPT_TOKENS = (24, 64)  # an excerpt is whole consecutive sentences, at least 24 tokens, cut at 64 at most


def _literature(source: Source, length: int, n: int, seed: int, count: TokenCounter) -> LongTask:
    rng = rng_for("literature", source.language, length, seed)
    limit = length - SPECIAL_TOKENS
    candidates = []  # (section id, sentences, paragraph index per sentence, counts)
    for section in sorted(source.sections, key=lambda s: s["_id"]):
        sents, para = [], []
        for p_i, p in enumerate(section["paragraphs"]):
            for s in split_sentences(p):
                sents.append(s)
                para.append(p_i)
        candidates.append((section["_id"], sents, para))
    order = rng.permutation(len(candidates))
    queries, docs, answers, positions, notes = [], [], [], [], []
    all_counts: dict[str, int] = {}
    for idx in order:
        if len(docs) == n:
            break
        sid, sents, para = candidates[idx]
        missing = [s for s in dict.fromkeys(sents) if s not in all_counts]
        all_counts.update(zip(missing, count(missing)))
        c = [all_counts[s] + 1 for s in sents]
        total = sum(c)
        lo_ex, hi_ex = EXCERPT_TOKENS
        if total < limit + hi_ex:
            continue  # section too short for this length
        # window: consecutive sentences from a seeded start, long enough for the document plus an excerpt
        cum = np.concatenate([[0], np.cumsum(c)])
        last_start = int(np.searchsorted(cum, total - limit - hi_ex, side="right")) - 1
        start = int(rng.integers(0, max(last_start, 0) + 1))
        # excerpt: from a seeded sentence among those starting in the window's first limit - hi_ex tokens, so
        # that it ends inside the limit tokens the document spans (the excerpt is cut from the middle of it)
        last_ex = int(np.searchsorted(cum, cum[start] + limit - hi_ex, side="right")) - 1
        span = max(1, last_ex - start)
        first = int(rng.integers(0, span))
        found = None
        for k in range(span):  # the first sentence run from a seeded start that makes a 24-64 token excerpt
            ex_start = start + (first + k) % span
            ex_end, ex_tokens = ex_start, 0
            while ex_end < len(sents) and ex_tokens < lo_ex:
                ex_tokens += c[ex_end]
                ex_end += 1
            if lo_ex <= ex_tokens <= hi_ex:
                found = (ex_start, ex_end)
                break
        if found is None:
            continue
        ex_start, ex_end = found
        excerpt = " ".join(sents[ex_start:ex_end])
        if sum(excerpt == s or excerpt in s for s in sents) > 1:
            continue
        kept = [i for i in range(start, len(sents)) if not ex_start <= i < ex_end]
        body, used = [], 0
        for i in kept:
            if used + c[i] > limit:
                break
            body.append(i)
            used += c[i]

        def join(indices):
            out = []
            for j, i in enumerate(indices):
                sep = "" if j == 0 else ("\n" if para[i] != para[indices[j - 1]] else " ")
                out.append(sep + sents[i])
            return "".join(out)

        doc = join(body)
        while count([doc])[0] > limit and len(body) > 1:
            body = body[:-1]
            doc = join(body)
        before = sum(1 for i in body if i < ex_start)
        queries.append(excerpt)
        docs.append(doc)
        answers.append(excerpt)
        positions.append(before / max(len(body), 1))
        notes_id = sid
        notes.append(notes_id)
    if len(docs) < 2:
        raise LongDocumentError(f"literature-{source.language}: only {len(docs)} section(s) long enough for "
                                f"{length} tokens")
    task = LongTask("literature", source.language, length, queries, docs, list(range(len(docs))), answers,
                    count(docs), positions, [f"sections: {', '.join(notes)}"])
    if len(docs) < n:
        task.notes.append(f"{len(docs)} of {n} documents: the other sections are too short for this length "
                          "or gave no 24-64-token excerpt")
    return task


def generate(source: Source, lengths: Sequence[int] = LENGTHS, n_documents: Optional[int] = None, seed: int = 0,
             count_tokens: Optional[TokenCounter] = None) -> list[LongTask]:
    """One :class:`LongTask` per length; deterministic for (source, lengths, n, seed, counter)."""
    count = count_tokens or simple_token_count
    n = n_documents or DEFAULT_DOCUMENTS[source.kind]
    if n < 2:
        raise LongDocumentError(f"n_documents must be >= 2, got {n}")
    out = []
    for length in lengths:
        if source.kind == "literature":
            out.append(_literature(source, int(length), n, seed, count))
        else:
            out.append(_synthetic(source.kind, source, int(length), n, seed, count))
    return out


# ------------------------------------------------------------------------------------------- evaluation
def chance(metric: str, n: int) -> float:
    """Expected score (x100) of a random (or constant) ranking of ``n`` documents, one relevant."""
    if metric == "accuracy":
        return 100.0 / n
    if metric == "ndcg_at_10":
        return 100.0 * sum(1.0 / math.log2(r + 1) for r in range(1, min(10, n) + 1)) / n
    if metric == "mrr_at_10":
        return 100.0 * sum(1.0 / r for r in range(1, min(10, n) + 1)) / n
    raise ValueError(metric)


def rank_scores(query_emb: np.ndarray, doc_emb: np.ndarray, positives: Sequence[int]) -> dict[str, float]:
    """accuracy, nDCG@10, MRR@10 (x100) of cosine ranking; ties broken by document order."""
    sims = l2_normalize(np.asarray(query_emb, np.float64)) @ l2_normalize(np.asarray(doc_emb, np.float64)).T
    ranks = []
    for i, pos in enumerate(positives):
        order = np.lexsort((np.arange(sims.shape[1]), -sims[i]))
        ranks.append(int(np.nonzero(order == pos)[0][0]) + 1)
    ranks = np.asarray(ranks)
    return {"accuracy": 100.0 * float(np.mean(ranks == 1)),
            "ndcg_at_10": 100.0 * float(np.mean(np.where(ranks <= 10, 1.0 / np.log2(ranks + 1), 0.0))),
            "mrr_at_10": 100.0 * float(np.mean(np.where(ranks <= 10, 1.0 / ranks, 0.0)))}


def encode_at(encoder, texts: Sequence[str], length: Optional[int]) -> np.ndarray:
    """``encoder.encode_at(texts, length)`` where the encoder has it (it then keeps ``length`` tokens),
    else ``encoder.encode(texts)`` (the encoder's own truncation applies)."""
    texts = list(texts)
    if length is not None and hasattr(encoder, "encode_at"):
        out = encoder.encode_at(texts, length)
    else:
        out = encoder.encode(texts)
    out = np.asarray(out, np.float32)
    if out.ndim != 2 or out.shape[0] != len(texts):
        raise ValueError(f"encoder returned shape {out.shape} for {len(texts)} texts; expected [n, d]")
    if not np.all(np.isfinite(out)):
        raise ValueError("encoder returned non-finite embeddings")
    return out


def query_length(task: LongTask) -> int:
    return 512 if task.kind != "literature" else 128


def evaluate_long(encoder, tasks: Sequence[LongTask], log: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Scores per length and their mean over lengths: ``{"metrics": {...}, "lengths": {L: {...}}}``.

    ``metrics`` holds the mean of each metric over the lengths and ``<metric>@<L>`` per length.
    """
    per_length, metrics = {}, {}
    for task in tasks:
        start = time.perf_counter()
        q = encode_at(encoder, task.queries, query_length(task))
        d = encode_at(encoder, task.documents, task.length)
        scores = rank_scores(q, d, task.positives)
        n = len(task.documents)
        per_length[str(task.length)] = {
            **scores, "documents": n, "chance_accuracy": chance("accuracy", n),
            "chance_ndcg_at_10": chance("ndcg_at_10", n),
            "tokens_mean": float(np.mean(task.doc_tokens)), "tokens_max": int(max(task.doc_tokens)),
            "seconds": time.perf_counter() - start, "notes": list(task.notes)}
        for k, v in scores.items():
            metrics[f"{k}@{task.length}"] = v
        if log:
            log(f"  {task.kind}-{task.language} @ {task.length}: accuracy {scores['accuracy']:.1f}, "
                f"nDCG@10 {scores['ndcg_at_10']:.1f} ({n} docs, {per_length[str(task.length)]['seconds']:.1f}s)")
    for k in ("accuracy", "ndcg_at_10", "mrr_at_10"):
        metrics[k] = float(np.mean([v[k] for v in per_length.values()]))
    return {"metrics": metrics, "lengths": per_length}
