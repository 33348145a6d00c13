"""Tokenised fine-tuning splits and their padded batches (host-side numpy, no seqio).

Single texts become ``<s> a </s>`` and pairs one sequence ``<s> a </s></s> b </s>`` (the tokenizer's
RoBERTa post-processor), truncated longest-first; batches are padded to the smallest length bucket holding
their longest row, so a run compiles a handful of shapes. Every process builds the same global batch; the
trainer passes each process its own rows. The data side (task specs, TSV loaders, the transfer guard) is
``tasks.finetune_data``.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)

@dataclasses.dataclass
class TokenizedSplit:
    """Token ids per row (``<s> ... </s>``, unpadded) and the labels of one split."""

    ids: list[np.ndarray]
    labels: np.ndarray
    max_length: int

    def __len__(self) -> int:
        return len(self.ids)


def tokenize(examples, tokenizer, max_length: int) -> TokenizedSplit:
    """``examples``: rows with ``texts``, ``pairs`` (second texts, or None) and ``labels`` (e.g.
    ``tasks.finetune_data.Examples``). ``tokenizer``: a ``tokenizers.Tokenizer`` with the RoBERTa
    post-processor (``bilingual.tokenizer``).

    Pairs become one sequence ``<s> a </s></s> b </s>``; both are truncated to ``max_length`` tokens
    (longest-first for pairs)."""
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8, got {max_length}")
    tok = _copy_tokenizer(tokenizer)
    tok.no_padding()
    tok.enable_truncation(max_length, strategy="longest_first")
    inputs = list(zip(examples.texts, examples.pairs)) if examples.pairs is not None else examples.texts
    encodings = tok.encode_batch(inputs)
    ids = [np.asarray(e.ids, np.int32) for e in encodings]
    return TokenizedSplit(ids, examples.labels, max_length)


def _copy_tokenizer(tokenizer):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer.to_str())


def bucket_length(n: int, max_length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    for b in buckets:
        if b >= n and b <= max_length:
            return b
    return max_length


def num_batches(n_rows: int, batch_size: int, drop_remainder: bool) -> int:
    return n_rows // batch_size if drop_remainder else -(-n_rows // batch_size)


def batch_order(lengths: np.ndarray, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
                drop_remainder: bool, group_size: int = 32) -> list[np.ndarray]:
    """Row indices per batch.

    ``shuffle``: rows permuted with a generator seeded by ``(seed, epoch)``, then, within consecutive
    groups of ``group_size`` batches, sorted by length before being cut into batches, and the batches
    shuffled again (batches hold rows of similar length, so less padding; the mix still changes every
    epoch). Without ``shuffle``: rows sorted by length (evaluation; predictions go back by index)."""
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, num_batches(n, batch_size, False) * batch_size, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if drop_remainder:
        order = order[:num_batches(n, batch_size, True) * batch_size]
    chunk = batch_size * group_size
    grouped = np.concatenate([part[np.argsort(lengths[part], kind="stable")]
                              for part in np.split(order, range(chunk, len(order), chunk))]) if len(order) else order
    batches = [grouped[i:i + batch_size] for i in range(0, len(grouped), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def iterate_batches(split: TokenizedSplit, batch_size: int, *, pad_id: int = 1, shuffle: bool = False,
                    seed: int = 0, epoch: int = 0, drop_remainder: bool = False,
                    buckets: Sequence[int] = DEFAULT_BUCKETS) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``batch_size`` rows in :func:`batch_order`: ``input_ids``/``attention_mask``/
    ``token_type_ids`` ``[B, L]`` int32, ``labels`` ``[B]`` (int32 or float32), ``weights`` ``[B]`` float32
    (0 on padding rows), ``index`` ``[B]`` (row of the split, -1 on padding rows). ``L`` is the bucket of
    the batch's longest row. Reruns with the same ``(seed, epoch)`` repeat exactly.
    Without ``drop_remainder`` the last batch is filled with weight-0 padding rows (fixed shapes)."""
    lengths = np.asarray([len(x) for x in split.ids])
    for index in batch_order(lengths, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                             drop_remainder=drop_remainder):
        length = bucket_length(int(lengths[index].max()), split.max_length, buckets)
        ids = np.full((batch_size, length), pad_id, np.int32)
        mask = np.zeros((batch_size, length), np.int32)
        for row, i in enumerate(index):
            ids[row, :len(split.ids[i])] = split.ids[i]
            mask[row, :len(split.ids[i])] = 1
        labels = np.zeros((batch_size,), np.float32 if split.labels.dtype == np.float32 else np.int32)
        labels[:len(index)] = split.labels[index]
        weights = np.zeros((batch_size,), np.float32)
        weights[:len(index)] = 1.0
        ids[len(index):, :2] = (0, 2)  # padding rows hold "<s> </s>" so every row attends to something
        mask[len(index):, :2] = 1
        rows = np.full((batch_size,), -1, np.int64)
        rows[:len(index)] = index
        yield {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
               "labels": labels, "weights": weights, "index": rows}
