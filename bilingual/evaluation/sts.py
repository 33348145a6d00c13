"""Semantic textual similarity: Spearman (x100) between cosine similarity and the gold scores."""

from __future__ import annotations

import numpy as np
from scipy import stats

from bilingual.evaluation.common import TextEncoder, cosine_pairs, embed_unique
from bilingual.evaluation.data_files import PairScores


def sts_scores(emb1: np.ndarray, emb2: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """``emb1, emb2 [n, d]`` (row i is pair i), ``gold [n]`` -> Spearman and Pearson x100."""
    if len(gold) < 2:
        raise ValueError("STS needs at least two pairs")
    cosine = cosine_pairs(emb1, emb2)
    return {"spearman": 100.0 * float(stats.spearmanr(cosine, gold).statistic),
            "pearson": 100.0 * float(stats.pearsonr(cosine, gold).statistic)}


def evaluate_sts(encoder: TextEncoder, data: PairScores) -> dict[str, float]:
    emb1, emb2 = embed_unique(encoder, data.sentences1, data.sentences2)
    return sts_scores(emb1, emb2, data.values)
