"""Dense retrieval (BEIR layout): nDCG@10, MRR@10 and Recall@100 (x100, mean over queries).

Documents are ranked by cosine similarity; ``pytrec_eval`` (the trec_eval implementation BEIR and MTEB
use) scores the ranking. trec_eval's nDCG uses the relevance grade as linear gain; ``recip_rank`` has no
cut-off, so MRR@10 is computed on the run truncated to its top 10. Queries and corpus may be in
different languages (XQuAD shares ids across languages).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytrec_eval

from bilingual.evaluation.common import TextEncoder, embed, l2_normalize, query_chunks
from bilingual.evaluation.data_files import RetrievalData


def top_k(query_emb: np.ndarray, doc_emb: np.ndarray, k: int, *, budget: int = 1 << 26) -> tuple[np.ndarray, np.ndarray]:
    """``(indices [q, k'], scores [q, k'])`` of the ``k' = min(k, m)`` best documents per query, best first.

    Scores are computed in query chunks so that memory stays bounded for large corpora.
    """
    k = min(k, len(doc_emb))
    queries, docs = l2_normalize(query_emb), l2_normalize(doc_emb)
    indices = np.empty((len(queries), k), np.int64)
    scores = np.empty((len(queries), k), queries.dtype)
    for rows in query_chunks(len(queries), len(docs), budget):
        sims = queries[rows] @ docs.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        indices[rows] = np.take_along_axis(part, order, axis=1)
        scores[rows] = np.take_along_axis(part_scores, order, axis=1)
    return indices, scores


def make_run(query_ids: Sequence[str], doc_ids: Sequence[str], indices: np.ndarray,
             scores: np.ndarray) -> dict[str, dict[str, float]]:
    return {q: {doc_ids[j]: float(s) for j, s in zip(row_idx, row_scores)}
            for q, row_idx, row_scores in zip(query_ids, indices, scores)}


def ranking_scores(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@100 (x100) averaged over the queries of ``qrels``."""
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in run.items()}
    mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    n = len(qrels)
    # A query absent from the run scores 0 (pytrec_eval leaves it out).
    return {"ndcg_at_10": 100.0 * sum(full[q]["ndcg_cut_10"] for q in full) / n,
            "mrr_at_10": 100.0 * sum(mrr[q]["recip_rank"] for q in mrr) / n,
            "recall_at_100": 100.0 * sum(full[q]["recall_100"] for q in full) / n}


def evaluate_retrieval(encoder: TextEncoder, data: RetrievalData, depth: int = 100) -> dict[str, float]:
    query_ids, doc_ids = list(data.queries), list(data.corpus)
    query_emb = embed(encoder, [data.queries[q] for q in query_ids])
    doc_emb = embed(encoder, [data.corpus[d] for d in doc_ids])
    indices, scores = top_k(query_emb, doc_emb, depth)
    return ranking_scores(data.qrels, make_run(query_ids, doc_ids, indices, scores))
