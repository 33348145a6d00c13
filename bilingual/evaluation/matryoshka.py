"""A suite at nested embedding sizes (Matryoshka), each text encoded once.

An embedding of ``d`` dimensions is the first ``d`` components of the mean-pooled, un-normalised embedding,
L2-normalised: what a Matryoshka loss trains and what ``SentenceTransformer(dir, truncate_dim=d)`` with
``normalize_embeddings=True`` returns. ``NestedEmbeddings(encoder)`` wraps the runner's encoder (a
``ConfiguredEncoder``: ``encode(texts, normalize=False)``, and ``encode_at`` / ``count_tokens`` where it has
them), encodes each text once, keeps the un-normalised vectors, and ``view(d)`` is an encoder for the
evaluators that cuts and re-normalises them. ``view(None)`` is the full embedding, normalised exactly as
``bilingual.Encoder.encode`` does, so a run through it scores what a plain run scores.

``run_suite_at_dims`` runs the suite through ``view(None)`` first (every encoding happens there, in the
order and batches of a plain run), then once per dimension from the kept vectors (no encoding); the run at
the full hidden size is the first run itself.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from bilingual.evaluation import suites


def truncate(embeddings: np.ndarray, dim: Optional[int]) -> np.ndarray:
    """The first ``dim`` components of each row (all of them for ``None``), L2-normalised as
    ``Encoder.encode`` normalises (float32, norms floored at 1e-12)."""
    x = np.asarray(embeddings, np.float32)
    if dim is not None:
        x = np.ascontiguousarray(x[:, :dim])
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class NestedEmbeddings:
    """Un-normalised embeddings by text (and by length for ``encode_at``), encoded once, served at any size."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.raw: dict = {}  # text, or (length, text) for encode_at -> un-normalised float32 vector
        self.texts_encoded = 0

    def _lookup(self, texts: Sequence[str], key: Callable, encode: Callable) -> np.ndarray:
        texts = list(texts)
        missing = list(dict.fromkeys(t for t in texts if key(t) not in self.raw))
        if missing:
            out = np.asarray(encode(missing), np.float32)
            if out.ndim != 2 or out.shape[0] != len(missing):
                raise ValueError(f"encoder returned shape {out.shape} for {len(missing)} texts")
            self.raw.update(zip(map(key, missing), out))
            self.texts_encoded += len(missing)
        if not texts:
            return np.zeros((0, 0), np.float32)
        return np.stack([self.raw[key(t)] for t in texts])

    def unnormalised(self, texts: Sequence[str]) -> np.ndarray:
        return self._lookup(texts, lambda t: t, lambda m: self.encoder.encode(m, normalize=False))

    def unnormalised_at(self, texts: Sequence[str], length: int) -> np.ndarray:
        return self._lookup(texts, lambda t: (length, t),
                            lambda m: self.encoder.encode_at(m, length, normalize=False))

    def view(self, dim: Optional[int]) -> "DimensionView":
        return DimensionView(self, dim)


class DimensionView:
    """The evaluators' encoder at ``dim`` dimensions (``None``: all), over a ``NestedEmbeddings``."""

    def __init__(self, nested: NestedEmbeddings, dim: Optional[int]):
        self.nested, self.dim = nested, dim
        inner = nested.encoder
        if hasattr(inner, "count_tokens"):
            self.count_tokens = inner.count_tokens
        if hasattr(inner, "encode_at"):
            self.encode_at = self._encode_at

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return truncate(self.nested.unnormalised(texts), self.dim)

    def _encode_at(self, texts: Sequence[str], length: int) -> np.ndarray:
        return truncate(self.nested.unnormalised_at(texts, length), self.dim)


def run_suite_at_dims(encoder, tasks, dims: Sequence[int], hidden_size: int, data_root=None, *,
                      limit: Optional[int] = None, log: Optional[Callable[[str], None]] = None,
                      long_options: Optional[dict] = None) -> tuple[dict, dict[int, dict]]:
    """``(full result, {d: result at d dimensions})``, each a ``suites.run_suite`` document; ``dims`` checked
    by the caller (positive, at most ``hidden_size``). Per-dimension runs log their lines prefixed ``d=<d>``."""
    nested = NestedEmbeddings(encoder)
    full = suites.run_suite(nested.view(None), tasks, data_root, limit=limit, log=log, long_options=long_options)
    by_dim = {}
    for d in dims:
        if d == hidden_size:
            by_dim[d] = full
            continue
        prefixed = (lambda m, d=d: log(f"d={d}: {m}")) if log else None
        by_dim[d] = suites.run_suite(nested.view(d), tasks, data_root, limit=limit, log=prefixed,
                                     long_options=long_options)
    return full, by_dim
