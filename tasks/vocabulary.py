"""A ``seqio.Vocabulary`` over the project's byte-level BPE tokenizer (``bilingual.tokenizer``).

Python (``encode``/``decode``) and ``tf.data`` (``encode_tf``/``decode_tf``) run the same Rust tokenizer, the
TF side through ``tf.numpy_function``, so the ids are identical by construction (tested on umlauts, ß, ñ,
accents, emoji and long text). The TF ops run on the host CPU inside the input pipeline, which is where seqio
runs them anyway; they cannot be placed on an accelerator or serialised into a SavedModel.

Ids follow RoBERTa: ``<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4``. Note ``pad_id`` is 1, not seqio's usual 0:
the project's batchers pad with ``pad_id`` explicitly and never use seqio's feature converters.
``encode`` returns the ids *without* ``<s>``/``</s>``; the preprocessors add them.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks import tf_setup  # noqa: F401  (TensorFlow on the CPU only)

from bilingual import tokenizer as bpe


def _fixed_id(value: int, token: str) -> property:
    """A read-only ``int`` property that is ``value`` for every vocabulary (the id of ``token``)."""
    return property(lambda self: value, doc=f"The id of {token}: {value}.")


class ByteLevelBPEVocabulary(seqio.Vocabulary):
    """seqio vocabulary backed by ``<dir>/tokenizer.json``; the file is read lazily on first use."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(extra_ids=0)
        self._path = str(path)
        self._tokenizer = None
        self._lock = threading.Lock()

    # -- loading -------------------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._path

    @property
    def tokenizer(self):
        """The ``tokenizers.Tokenizer`` (loaded once; post-processor off, so no ``<s>``/``</s>`` are added)."""
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = bpe.load_for_encoding(self._path)
        return self._tokenizer

    @property
    def word_start(self) -> np.ndarray:
        """Boolean [vocab_size] table: token begins a word (``Ġ``-prefixed) or is special."""
        if not hasattr(self, "_word_start"):
            self._word_start = bpe.word_start_table(self.tokenizer)
        return self._word_start

    # -- ids (fixed by bilingual.tokenizer, read-only like seqio's) -------------------------------------------
    bos_id = _fixed_id(bpe.BOS_ID, "<s>")
    eos_id = _fixed_id(bpe.EOS_ID, "</s>")
    pad_id = _fixed_id(bpe.PAD_ID, "<pad>")
    unk_id = _fixed_id(bpe.UNK_ID, "<unk>")
    mask_id = _fixed_id(bpe.MASK_ID, "<mask>")

    @property
    def num_special_tokens(self) -> int:
        return len(bpe.SPECIAL_TOKENS)

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    # -- Python --------------------------------------------------------------------------------------------
    def _encode(self, s: str) -> Sequence[int]:
        return self.tokenizer.encode(s, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encodes many strings at once (multi-threaded in Rust)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def _decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    # -- TensorFlow ----------------------------------------------------------------------------------------
    def _encode_flat(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        strings = [t.decode("utf-8") for t in np.atleast_1d(texts).ravel()]
        ids = self.encode_batch(strings)
        lengths = np.fromiter((len(i) for i in ids), np.int64, len(ids))
        flat = np.fromiter((t for row in ids for t in row), np.int32, int(lengths.sum()))
        return flat, lengths

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """Scalar string -> int32 [n]; 1-D strings -> int32 RaggedTensor [batch, (n)]."""
        s = tf.convert_to_tensor(s, tf.string)
        flat, lengths = tf.numpy_function(self._encode_flat, [s], [tf.int32, tf.int64], stateful=False)
        flat.set_shape([None])
        if s.shape.rank == 0:
            return flat
        lengths.set_shape([None])
        return tf.RaggedTensor.from_row_lengths(flat, lengths)

    def _decode_flat(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim == 1:
            return np.array(self._decode(ids.tolist()).encode("utf-8"), dtype=object)
        flat = ids.reshape(-1, ids.shape[-1])
        out = [self._decode(row.tolist()).encode("utf-8") for row in flat]
        return np.array(out, dtype=object).reshape(ids.shape[:-1])

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """int ids [..., n] -> strings [...] (specials and padding dropped)."""
        ids = tf.convert_to_tensor(ids)
        out = tf.numpy_function(self._decode_flat, [ids], tf.string, stateful=False)
        out.set_shape(ids.shape[:-1])
        return out

    def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        # seqio's version replaces ids after </s> by pad_id; decoding already drops specials, and a packed
        # row holds several </s>, so decode everything instead of stopping at the first.
        return self._decode_tf(ids)

    def decode(self, ids: Iterable[int]) -> str:
        if isinstance(ids, tf.Tensor):
            ids = ids.numpy()
        return self._decode(list(ids))

    # -- identity ------------------------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        return hashlib.sha256(self.tokenizer.to_str().encode("utf-8")).hexdigest()

    def __eq__(self, other) -> bool:
        if not isinstance(other, ByteLevelBPEVocabulary):
            return False
        return self._path == other._path or self._fingerprint() == other._fingerprint()

    def __hash__(self) -> int:
        return hash(self._path)

    def __repr__(self) -> str:
        return f"ByteLevelBPEVocabulary({self._path!r})"
