"""Bitext mining: for each sentence, the nearest candidate (cosine) on the other side.

Row ``i`` of the source translates row ``i`` of the target, so the gold match of ``i`` is ``i``.
Accuracy and F1 follow MTEB's ``AbsTaskBitextMining``: scikit-learn ``accuracy_score`` and
``f1_score(average="weighted", zero_division=0)`` of predicted vs gold indices. Both directions are
scored; ``accuracy``/``f1`` are their means.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics

from bilingual.evaluation.common import TextEncoder, embed_unique, l2_normalize, query_chunks
from bilingual.evaluation.data_files import Bitext


def nearest_neighbours(queries: np.ndarray, candidates: np.ndarray, *, budget: int = 1 << 26) -> np.ndarray:
    """Index ``[n]`` of the most cosine-similar row of ``candidates [m, d]`` for each of ``queries [n, d]``."""
    queries, candidates = l2_normalize(queries), l2_normalize(candidates)
    out = np.empty(len(queries), np.int64)
    for rows in query_chunks(len(queries), len(candidates), budget):
        out[rows] = np.argmax(queries[rows] @ candidates.T, axis=1)
    return out


def mining_scores(predictions: np.ndarray) -> dict[str, float]:
    """Accuracy, F1, precision and recall (x100) of ``predictions [n]`` against gold ``arange(n)``."""
    gold = np.arange(len(predictions))
    kwargs = dict(average="weighted", zero_division=0)
    return {"accuracy": 100.0 * metrics.accuracy_score(gold, predictions),
            "f1": 100.0 * metrics.f1_score(gold, predictions, **kwargs),
            "precision": 100.0 * metrics.precision_score(gold, predictions, **kwargs),
            "recall": 100.0 * metrics.recall_score(gold, predictions, **kwargs)}


def bitext_scores(source: np.ndarray, target: np.ndarray, source_name: str = "src",
                  target_name: str = "tgt") -> dict[str, float]:
    """``source, target [n, d]`` aligned row by row -> per-direction and mean accuracy/F1."""
    if len(source) != len(target):
        raise ValueError(f"bitext sides differ in length: {len(source)} vs {len(target)}")
    out: dict[str, float] = {}
    for name, queries, candidates in ((f"{source_name}->{target_name}", source, target),
                                      (f"{target_name}->{source_name}", target, source)):
        for metric, value in mining_scores(nearest_neighbours(queries, candidates)).items():
            out[f"{metric}_{name}"] = value
    for metric in ("accuracy", "f1"):
        out[metric] = float(np.mean([v for k, v in out.items() if k.startswith(metric + "_")]))
    return out


def evaluate_bitext(encoder: TextEncoder, data: Bitext) -> dict[str, float]:
    source, target = embed_unique(encoder, data.source, data.target)
    return bitext_scores(source, target, data.source_name, data.target_name)
