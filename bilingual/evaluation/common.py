"""What every evaluator shares: the encoder interface and embedding helpers.

An evaluator takes any object with ``encode(texts: list[str]) -> array [n, d]`` (a
:class:`bilingual.Encoder`, a sentence-transformers model, or a hand-made fake in tests). Evaluators
that score by cosine similarity normalise the embeddings themselves, so an encoder need not.
All metrics are reported x100 (the MTEB leaderboard convention).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class TextEncoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings ``[len(texts), d]``, row ``i`` for ``texts[i]``."""
        ...


def embed(encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
    """``encoder.encode(texts)`` as float32 ``[n, d]`` (as MTEB; large corpora), checked for shape and
    finiteness."""
    texts = list(texts)
    out = np.asarray(encoder.encode(texts), dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(texts):
        raise ValueError(f"encoder returned shape {out.shape} for {len(texts)} texts; expected [n, d]")
    if not np.all(np.isfinite(out)):
        raise ValueError("encoder returned non-finite embeddings")
    return out


def embed_unique(encoder: TextEncoder, *groups: Sequence[str]) -> list[np.ndarray]:
    """Embed the union of ``groups`` once (texts repeat across pairs) and split it back per group."""
    unique = list(dict.fromkeys(t for group in groups for t in group))
    table = embed(encoder, unique)
    index = {t: i for i, t in enumerate(unique)}
    return [table[[index[t] for t in group]] for group in groups]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.asarray(1e-12, x.dtype))


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine ``[n]`` of ``a [n, d]`` and ``b [n, d]``."""
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All-pairs cosine ``[n, m]`` of ``a [n, d]`` and ``b [m, d]``."""
    return l2_normalize(a) @ l2_normalize(b).T


def query_chunks(n_queries: int, n_candidates: int, budget: int = 1 << 26):
    """Slices of the query rows such that a ``[chunk, n_candidates]`` score block stays under ``budget``
    entries (256 MB of float32), whatever the corpus size."""
    step = max(1, min(4096, budget // max(n_candidates, 1)))
    return (slice(start, start + step) for start in range(0, n_queries, step))
