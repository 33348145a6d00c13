"""Hard negatives mined with an embedding model: each query's nearest corpus passages by cosine similarity,
filtered so that likely false negatives (unlabelled positives, duplicates) are not taken.

The model is not here: :func:`mine` takes unit-norm embeddings (``bilingual.Encoder.encode`` gives them;
``launch.mine_negatives`` is the command) and works on numpy arrays on the host.

Search (:func:`build_index`) uses faiss: an exact inner-product index (``IndexFlatIP``) up to ``exact_limit``
passages, an inverted-file index (``IndexIVFFlat``, k-means coarse quantiser trained on a seeded sample,
``nprobe`` lists searched per query) above it. Exact search costs ``N x H`` multiply-adds per query: at the
default limit of 100,000 passages of 768 dimensions that is 77 M per query, about 10 ms on one CPU core, and
the ``N x H`` float32 matrix is 300 MB; beyond it the IVF index searches ``nprobe / nlist`` of the corpus
(``nlist = 4 sqrt(N)``, so about 1% at a million passages).

Choice per query ``i`` (the names are sentence-transformers' ``mine_hard_negatives`` arguments):

1. candidates in descending score, without the query's own positive and without any passage equal to the
   positive or to the query after :func:`normalize_text` (the corpus itself is de-duplicated by the caller);
2. ``range_min <= rank < range_max`` (0-based, counted after step 1): skipping the first ranks keeps out
   passages so close that they are probably unlabelled positives;
3. ``score <= max_score``, ``score >= min_score``, ``score <= positive_score - absolute_margin`` and
   ``score <= positive_score * (1 - relative_margin)`` (each only when set);
4. ``sampling="top"``: the first ``num_negatives`` left; ``"random"``: ``num_negatives`` of them drawn
   without replacement by a generator seeded with ``(seed, i)`` and kept in rank order, so the result does
   not depend on the order or batching of the queries.

The result is deterministic for a seed: faiss's exact search is, and the IVF index's k-means takes ``seed``.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from bilingual.text_identity import normalize_text  # noqa: F401  (re-exported: the miner's notion of equal)

SAMPLING = ("top", "random")
EXACT_LIMIT = 100_000


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    """What a negative may be; see the module docstring for the order the filters apply in."""

    num_negatives: int = 3
    range_min: int = 0
    range_max: int = 50
    absolute_margin: Optional[float] = None
    relative_margin: Optional[float] = None
    max_score: Optional[float] = None
    min_score: Optional[float] = None
    sampling: str = "top"
    seed: int = 0
    exact_limit: int = EXACT_LIMIT
    nprobe: int = 32

    def __post_init__(self):
        if self.num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {self.num_negatives}")
        if not 0 <= self.range_min < self.range_max:
            raise ValueError(f"need 0 <= range_min < range_max, got range_min={self.range_min}, "
                             f"range_max={self.range_max}")
        if self.range_max - self.range_min < self.num_negatives:
            raise ValueError(f"ranks {self.range_min}..{self.range_max - 1} hold fewer than num_negatives="
                             f"{self.num_negatives} candidates: raise range_max")
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {self.sampling!r}")
        if self.relative_margin is not None and not 0 <= self.relative_margin < 1:
            raise ValueError(f"relative_margin must be in [0, 1), got {self.relative_margin}")
        if self.absolute_margin is not None and self.absolute_margin < 0:
            raise ValueError(f"absolute_margin must be >= 0, got {self.absolute_margin}")
        if self.exact_limit < 1 or self.nprobe < 1:
            raise ValueError("exact_limit and nprobe must be >= 1")


@dataclasses.dataclass
class MinedNegatives:
    """Per query: ``negatives[i]`` corpus indices (rank order, at most ``num_negatives``), their ``scores[i]``,
    and ``positive_scores[i]``; ``exact`` says which index searched."""

    negatives: list[list[int]]
    scores: list[list[float]]
    positive_scores: np.ndarray
    exact: bool

    def counts(self) -> dict[int, int]:
        """negatives found -> number of queries, for every count from ``0`` to the most found."""
        found = collections.Counter(len(n) for n in self.negatives)
        return {k: found.get(k, 0) for k in range(max(found, default=0) + 1)}


def build_index(corpus: np.ndarray, config: MiningConfig):
    """A faiss inner-product index over ``corpus`` ``[N, H]`` float32 (unit rows): exact up to
    ``config.exact_limit`` rows, else IVF with ``nlist = 4 sqrt(N)`` lists (at least 39 training points per
    list, faiss's minimum), trained on a sample drawn with ``config.seed``. Returns ``(index, exact)``."""
    try:
        import faiss
    except ImportError:
        raise ImportError("hard-negative mining searches with faiss: pip install 'faiss-cpu>=1.15,<2' "
                          "(the project's [mining] extra)") from None

    corpus = np.ascontiguousarray(corpus, dtype=np.float32)
    n, dim = corpus.shape
    if n <= config.exact_limit:
        index = faiss.IndexFlatIP(dim)
        index.add(corpus)
        return index, True
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = config.seed
    sample = np.random.default_rng(config.seed).choice(n, size=min(n, 256 * nlist), replace=False)
    index.train(corpus[np.sort(sample)])
    index.add(corpus)
    index.nprobe = min(config.nprobe, nlist)
    return index, False


def mine(queries: np.ndarray, corpus: np.ndarray, positives: Sequence[int], config: MiningConfig,
         query_keys: Optional[Sequence[str]] = None, corpus_keys: Optional[Sequence[str]] = None,
         search_batch: int = 4096) -> MinedNegatives:
    """Hard negatives for each query.

    Args:
      queries: ``[Q, H]`` unit-norm query embeddings.
      corpus: ``[N, H]`` unit-norm passage embeddings (de-duplicated: one row per distinct passage).
      positives: ``[Q]`` the corpus row of each query's positive.
      query_keys, corpus_keys: :func:`normalize_text` of the texts; a candidate whose key equals the query's
        or the positive's is never a negative (None: only the positive's own row is excluded).
      search_batch: queries searched at once (bounds the ``[batch, range_max + 2]`` result arrays).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    positives = np.asarray(positives, dtype=np.int64)
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries {queries.shape} and corpus {corpus.shape} must be [Q, H] and [N, H]")
    if positives.shape != (len(queries),) or (len(positives) and not 0 <= positives.min() <= positives.max()
                                               < len(corpus)):
        raise ValueError(f"positives must be {len(queries)} corpus rows in [0, {len(corpus)})")
    index, exact = build_index(corpus, config)
    # the positive and at most one passage equal to the query (the corpus is de-duplicated) are removed
    # before ranks are counted, so range_max + 2 results always hold ranks 0 .. range_max - 1
    k = min(len(corpus), config.range_max + 2)
    positive_scores = np.einsum("qh,qh->q", queries, corpus[positives])
    negatives, scores = [], []
    for start in range(0, len(queries), search_batch):
        found_scores, found_ids = index.search(queries[start:start + search_batch], k)
        for row, (ids, values) in enumerate(zip(found_ids, found_scores)):
            i = start + row
            picked, picked_scores = _choose(i, ids, values, positives[i], positive_scores[i], config,
                                            query_keys, corpus_keys)
            negatives.append(picked)
            scores.append(picked_scores)
    return MinedNegatives(negatives, scores, positive_scores, exact)


def _choose(i: int, ids: np.ndarray, values: np.ndarray, positive: int, positive_score: float,
            config: MiningConfig, query_keys, corpus_keys) -> tuple[list[int], list[float]]:
    excluded = set()
    if corpus_keys is not None:
        excluded.add(corpus_keys[positive])
        if query_keys is not None:
            excluded.add(query_keys[i])
    ranked = [(int(j), float(s)) for j, s in zip(ids, values)
              if j >= 0 and j != positive and (corpus_keys is None or corpus_keys[j] not in excluded)]
    eligible = []
    for j, s in ranked[config.range_min:config.range_max]:
        if config.max_score is not None and s > config.max_score:
            continue
        if config.min_score is not None and s < config.min_score:
            continue
        if config.absolute_margin is not None and s > positive_score - config.absolute_margin:
            continue
        if config.relative_margin is not None and s > positive_score * (1 - config.relative_margin):
            continue
        eligible.append((j, s))
    if config.sampling == "random" and len(eligible) > config.num_negatives:
        rng = np.random.default_rng([config.seed, i])
        keep = np.sort(rng.choice(len(eligible), size=config.num_negatives, replace=False))
        eligible = [eligible[t] for t in keep]
    eligible = eligible[:config.num_negatives]
    return [j for j, _ in eligible], [s for _, s in eligible]
