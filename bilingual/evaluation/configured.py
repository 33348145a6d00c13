"""The evaluation runner's view of a :class:`bilingual.Encoder`: fixed batch size and length, explicit truncation.

``ConfiguredEncoder(encoder, batch_size, max_length)`` gives the evaluators their plain ``encode(texts)``
(at ``max_length`` tokens), the long-document evaluator ``encode_at(texts, length)`` (at ``length`` tokens,
capped at the model's limit; batches sized so rows x length stays within ``token_budget``) and
``count_tokens`` (the model's tokenizer, for sizing generated documents). Embeddings are L2-normalised;
``normalize=False`` returns the mean-pooled vectors as they are (``bilingual.evaluation.matryoshka`` cuts those).

Truncation is never silent: every text is measured before it is encoded; the first time texts are cut at a
length the runner logs how many and the longest, and ``truncation`` (``{length: {"texts", "truncated",
"longest"}}``) goes into the result file. Encoding above the length the model was trained at (the
``trained_length`` argument, else the encoder's ``trained_max_length`` where it has one, else the recipe's
512) warns once: those scores measure
ALiBi extrapolation.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import numpy as np

from bilingual.evaluation.long_documents import tokenizer_counter

logger = logging.getLogger(__name__)

RECIPE_TRAINED_LENGTH = 512  # TRAINING.md: every stage trains at 512 tokens
SPECIAL_TOKENS = 2


def trained_length_of(encoder) -> int:
    for name in ("trained_max_length", "trained_length"):
        value = getattr(encoder, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return RECIPE_TRAINED_LENGTH


class ConfiguredEncoder:
    def __init__(self, encoder, batch_size: int = 32, max_length: Optional[int] = None, *,
                 token_budget: int = 32768, log: Optional[Callable[[str], None]] = None,
                 trained_length: Optional[int] = None):
        self.encoder = encoder
        self.batch_size = batch_size
        self.model_limit = min(8192, int(encoder.config.max_length))
        self.max_length = min(512, self.model_limit) if max_length is None else int(max_length)
        self.token_budget = token_budget
        self.trained_length = int(trained_length) if trained_length else trained_length_of(encoder)
        self.count_tokens = tokenizer_counter(encoder.tokenizer)
        self.log = log or logger.warning
        self.truncation: dict[int, dict[str, int]] = {}
        self._warned_extrapolation = False
        self._announced: set[int] = set()

    def encode(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        return self._encode(list(texts), self.max_length, self.batch_size, normalize)

    def encode_at(self, texts: Sequence[str], length: int, normalize: bool = True) -> np.ndarray:
        length = min(int(length), self.model_limit)
        rows = max(1, min(self.batch_size, self.token_budget // length))
        return self._encode(list(texts), length, rows, normalize)

    def _encode(self, texts: list[str], length: int, rows: int, normalize: bool = True) -> np.ndarray:
        if texts:
            n = [c + SPECIAL_TOKENS for c in self.count_tokens(texts)]
            encoded = min(max(n), length)  # the longest row this call runs
            if encoded > self.trained_length and not self._warned_extrapolation:
                self._warned_extrapolation = True
                self.log(f"encoding texts of up to {length} tokens, above the {self.trained_length} the model was "
                         "trained at: these scores measure ALiBi length extrapolation")
            entry = self.truncation.setdefault(length, {"texts": 0, "truncated": 0, "longest": 0})
            cut = sum(1 for x in n if x > length)
            entry["texts"] += len(texts)
            entry["truncated"] += cut
            entry["longest"] = max(entry["longest"], max(n))
            if cut and length not in self._announced:
                self._announced.add(length)
                self.log(f"truncating {cut} of {len(texts)} texts to {length} tokens (longest {max(n)} tokens); "
                         "later truncations at this length are counted in the result's 'truncation'")
        # normalize is passed only when off: the default call is the one every encoder-like object takes
        extra = {} if normalize else {"normalize": False}
        return self.encoder.encode(texts, batch_size=rows, max_length=length, show_progress=False, **extra)

    def truncation_summary(self) -> dict[str, dict[str, int]]:
        return {str(k): dict(v) for k, v in sorted(self.truncation.items())}
