"""MLM batch construction in numpy: document packing and whole-word masking (TRAINING.md, stage 1).

Packing (ours, documented): rows of ``L`` tokens are filled in stream order with pieces ``<s> chunk </s>``,
where a chunk is the next run of tokens of the current document. A document that does not fit the space left
in a row is cut there (RoBERTa FULL-SENTENCES style: documents cross rows), unless that would leave a chunk
shorter than ``MIN_PIECE`` tokens, in which case the row is closed and the document continues in the next one.
So at most ``MIN_PIECE + 1`` positions of a row are padding, and a document's pieces are at least
``MIN_PIECE`` tokens except its last. ``segment_ids`` number the pieces of a row 1..k (0 = padding) so
attention keeps them apart; no token is dropped or duplicated.

Masking: a *word* starts at a token whose text begins with ``Ġ`` (byte-level space) or right after a special
token (first word of a piece); its continuation tokens belong to it. Per row, words are drawn in random order
until the selected tokens reach ``rate`` of the row's maskable (non-special, non-padding) tokens, rounding to
the nearest word. Of the selected tokens 80% become ``<mask>``, 10% a uniformly random non-special token, 10%
stay (decided per token). ``loss_weights`` is 1.0 on every selected position (masked, replaced and kept
alike); seqio's BERT converter, which weights only the ``<mask>`` positions, is deliberately not used.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


MIN_PIECE = 16


def fill_row(document_rest: Callable[[], np.ndarray], consume: Callable[[int], None], row_length: int, bos: int,
             eos: int, min_piece: int = MIN_PIECE) -> list[np.ndarray]:
    """One row's pieces, taken from a document stream (see the module docstring).

    Args:
      document_rest: returns the unpacked rest of the current document (moving past finished documents).
      consume: marks that many tokens of the current document as packed.
    """
    pieces, used = [], 0
    while True:
        space = row_length - used - 2
        if space < 1:
            return pieces
        rest = document_rest()
        take = min(len(rest), space)
        if pieces and take < len(rest) and take < min_piece:
            return pieces  # would cut off a tiny fragment: continue this document in the next row
        pieces.append(np.concatenate([[bos], rest[:take], [eos]]).astype(np.int32))
        used += take + 2
        consume(take)


def pack_rows(pieces: list[list[np.ndarray]], row_length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows given as lists of pieces -> ``input_ids`` and ``segment_ids`` [num_rows, row_length] int32."""
    ids = np.full((len(pieces), row_length), pad_id, np.int32)
    segments = np.zeros((len(pieces), row_length), np.int32)
    for r, row in enumerate(pieces):
        pos = 0
        for k, piece in enumerate(row, start=1):
            if pos + len(piece) > row_length:
                raise ValueError(f"row {r}: pieces exceed {row_length} tokens")
            ids[r, pos:pos + len(piece)] = piece
            segments[r, pos:pos + len(piece)] = k
            pos += len(piece)
    return ids, segments


def whole_word_mask(input_ids: np.ndarray, word_start: np.ndarray, rng: np.random.Generator, *,
                    rate: float = 0.3, mask_id: int, num_special: int, vocab_size: int,
                    mask_fraction: float = 0.8, random_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """Whole-word masking of ``input_ids`` [B, L] (specials are the ids ``< num_special``, padding included).

    Args:
      word_start: bool [vocab_size] table, True for ``Ġ``-prefixed tokens (``tokenizer.word_start_table``).
      rng: the batch's generator (seeded per batch by the caller, so batches are reproducible).

    Returns:
      ``input_ids`` (corrupted), ``targets`` (the original ids), ``loss_weights`` float32 (1 on selected
      positions) and ``selected`` bool, all [B, L].
    """
    ids = np.asarray(input_ids)
    batch, length = ids.shape
    special = ids < num_special
    maskable = ~special
    prev_special = np.ones_like(special)
    prev_special[:, 1:] = special[:, :-1]
    starts = maskable & (word_start[ids] | prev_special)
    # word number of every maskable token, unique across the batch (-1 elsewhere)
    word = np.where(maskable, np.cumsum(starts.ravel()).reshape(batch, length) - 1, -1)
    num_words = int(starts.sum())
    selected = np.zeros_like(special)
    if num_words:
        word_len = np.bincount(word[maskable], minlength=num_words)
        word_row = np.repeat(np.arange(batch), starts.sum(axis=1))
        order = np.lexsort((rng.random(num_words), word_row))  # random word order within each row
        cum = np.cumsum(word_len[order])
        row_first = np.searchsorted(word_row[order], np.arange(batch))  # first word of each row in `order`
        before = cum - word_len[order] - np.concatenate([[0], cum])[row_first][word_row[order]]
        target = rate * maskable.sum(axis=1)[word_row[order]]
        chosen = np.zeros(num_words, bool)
        chosen[order] = before + word_len[order] / 2 <= target
        selected = maskable & chosen[np.maximum(word, 0)]
    u = rng.random(ids.shape)
    replace_mask = selected & (u < mask_fraction)
    replace_random = selected & (u >= mask_fraction) & (u < mask_fraction + random_fraction)
    corrupted = np.where(replace_mask, mask_id, ids)
    random_ids = rng.integers(num_special, vocab_size, size=ids.shape)
    corrupted = np.where(replace_random, random_ids, corrupted).astype(np.int32)
    return {"input_ids": corrupted, "targets": ids.astype(np.int32), "loss_weights": selected.astype(np.float32),
            "selected": selected}
