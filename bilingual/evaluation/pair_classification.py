"""Pair classification: average precision (x100) of cosine similarity against binary labels."""

from __future__ import annotations

import numpy as np
from sklearn import metrics

from bilingual.evaluation.common import TextEncoder, cosine_pairs, embed_unique
from bilingual.evaluation.data_files import PairScores


def pair_classification_scores(emb1: np.ndarray, emb2: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``emb1, emb2 [n, d]``, ``labels [n]`` in {0, 1} (1 = positive pair)."""
    cosine = cosine_pairs(emb1, emb2)
    return {"ap": 100.0 * float(metrics.average_precision_score(labels, cosine))}


def evaluate_pair_classification(encoder: TextEncoder, data: PairScores) -> dict[str, float]:
    emb1, emb2 = embed_unique(encoder, data.sentences1, data.sentences2)
    return pair_classification_scores(emb1, emb2, data.values)
