"""MTEB-style evaluation: loaders for the uniform data formats, six evaluators, suites, a trainer hook.

Each evaluator takes any object with ``encode(list[str]) -> np.ndarray [n, d]``.
"""

from bilingual.evaluation.sts import evaluate_sts
from bilingual.evaluation.retrieval import evaluate_retrieval
from bilingual.evaluation.bitext import evaluate_bitext
from bilingual.evaluation.clustering import evaluate_clustering
from bilingual.evaluation.pair_classification import evaluate_pair_classification
from bilingual.evaluation.classification import evaluate_classification

__all__ = ["evaluate_bitext", "evaluate_classification", "evaluate_clustering", "evaluate_pair_classification",
           "evaluate_retrieval", "evaluate_sts"]
