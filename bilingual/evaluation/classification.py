"""Classification: logistic regression on frozen embeddings.

Features are standardised (mean/variance fit on the training rows) before the regression, so the probe
does not depend on the embeddings' offset and scale: L2-normalised embeddings of an untrained or
anisotropic model differ only in small deviations from a shared direction, which an unscaled,
regularised logistic regression would ignore and fall back to the majority class.

With a separate test set the classifier is fit on the train set and scored on the test set (MTEB's
setup for SIB-200); otherwise stratified k-fold cross-validation over one labelled set gives every
text exactly one out-of-fold prediction, and accuracy is computed over those.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from sklearn import linear_model, metrics, model_selection, pipeline, preprocessing

from bilingual.evaluation.common import TextEncoder, embed_unique
from bilingual.evaluation.data_files import Labelled


def _classifier(seed: int) -> pipeline.Pipeline:
    return pipeline.make_pipeline(preprocessing.StandardScaler(),
                                  linear_model.LogisticRegression(max_iter=1000, random_state=seed))


def _scores(gold, predicted) -> dict[str, float]:
    return {"accuracy": 100.0 * metrics.accuracy_score(gold, predicted),
            "f1_macro": 100.0 * metrics.f1_score(gold, predicted, average="macro", zero_division=0)}


def cross_validated_predictions(embeddings: np.ndarray, labels: Sequence[str], folds: int = 5,
                                seed: int = 0) -> np.ndarray:
    """Out-of-fold predicted label ``[n]`` for each row of ``embeddings [n, d]``."""
    labels = np.asarray(labels)
    smallest = min(np.unique(labels, return_counts=True)[1])
    if smallest < folds:
        raise ValueError(f"{folds}-fold classification needs >= {folds} texts per label; the rarest label has {smallest}")
    predicted = np.empty(len(labels), dtype=labels.dtype)
    splitter = model_selection.StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(embeddings, labels):
        predicted[test] = _classifier(seed).fit(embeddings[train], labels[train]).predict(embeddings[test])
    return predicted


def classification_scores(train_emb: np.ndarray, train_labels: Sequence[str],
                          test_emb: Optional[np.ndarray] = None, test_labels: Optional[Sequence[str]] = None,
                          folds: int = 5, seed: int = 0) -> dict[str, float]:
    if len(set(train_labels)) < 2:
        raise ValueError("classification needs at least two distinct labels")
    if test_emb is None:
        return _scores(train_labels, cross_validated_predictions(train_emb, train_labels, folds, seed))
    model = _classifier(seed).fit(train_emb, np.asarray(train_labels))
    return _scores(test_labels, model.predict(test_emb))


def evaluate_classification(encoder: TextEncoder, train: Labelled, test: Optional[Labelled] = None,
                            folds: int = 5, seed: int = 0) -> dict[str, float]:
    if test is None:
        (train_emb,) = embed_unique(encoder, train.texts)
        return classification_scores(train_emb, train.labels, folds=folds, seed=seed)
    train_emb, test_emb = embed_unique(encoder, train.texts, test.texts)
    return classification_scores(train_emb, train.labels, test_emb, test.labels, folds=folds, seed=seed)
