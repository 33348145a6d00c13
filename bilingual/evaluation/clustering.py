"""Clustering: V-measure (x100) of k-means with k = number of gold labels, averaged over seeds."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn import cluster, metrics

from bilingual.evaluation.common import TextEncoder, embed
from bilingual.evaluation.data_files import Labelled

DEFAULT_SEEDS = (0, 1, 2, 3, 4)


def kmeans_assignments(embeddings: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster id ``[n]`` of each row of ``embeddings [n, d]`` (k-means++ init, one run per seed)."""
    return cluster.KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(embeddings)


def clustering_scores(embeddings: np.ndarray, labels: Sequence[str],
                      seeds: Sequence[int] = DEFAULT_SEEDS) -> dict[str, float]:
    """Mean and standard deviation over ``seeds`` of the V-measure of k-means clusters vs ``labels``."""
    k = len(set(labels))
    if k < 2:
        raise ValueError("clustering needs at least two distinct labels")
    if len(labels) < k:
        raise ValueError(f"clustering needs at least k={k} texts, got {len(labels)}")
    scores = [100.0 * metrics.v_measure_score(labels, kmeans_assignments(embeddings, k, seed)) for seed in seeds]
    return {"v_measure": float(np.mean(scores)), "v_measure_std": float(np.std(scores))}


def evaluate_clustering(encoder: TextEncoder, data: Labelled, seeds: Sequence[int] = DEFAULT_SEEDS) -> dict[str, float]:
    return clustering_scores(embed(encoder, data.texts), data.labels, seeds)
