"""When two texts count as the same text: the normal form and the 64-bit keys that batches carry.

The miner (``bilingual.negative_mining``) drops candidates equal to the query or the positive after
``normalize_text``; the producer (``tasks.batch_jobs``) hashes the same normal form into ``*_key`` arrays so that
the contrastive losses can mask in-batch "negatives" that are the positive's own text (``bilingual.losses``).

A key is the BLAKE2b-64 digest of the UTF-8 normal form, stored as two int32 words (JAX's default integer
width: int64 would need ``jax_enable_x64``). Two different texts collide with probability 2^-64 per pair: in a
global batch of 65,536 texts that is about 1e-10 per step.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable

import numpy as np

KEY_WORDS = 2  # int32 words per key
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """The form two texts are compared in for "equal": NFKC, case-folded, whitespace runs as one space."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_keys(texts: Iterable[str]) -> np.ndarray:
    """``[n, KEY_WORDS]`` int32: the key of each text's ``normalize_text`` form (equal forms, equal keys);
    ``bytes`` are read as UTF-8."""
    forms = (normalize_text(t.decode("utf-8") if isinstance(t, bytes) else t) for t in texts)
    digests = b"".join(hashlib.blake2b(f.encode("utf-8"), digest_size=8).digest() for f in forms)
    return np.frombuffer(digests, "<i4").reshape(-1, KEY_WORDS).copy()


def distinct_keys(*shape: int, name: str = "text") -> np.ndarray:
    """``[*shape, KEY_WORDS]`` int32 keys of as many different texts, ``"<name> <i>"`` (synthetic batches:
    give each array its own ``name`` and nothing is masked)."""
    count = int(np.prod(shape, dtype=np.int64))
    return text_keys(f"{name} {i}" for i in range(count)).reshape(*shape, KEY_WORDS)
