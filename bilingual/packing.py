"""Packing whole texts into fixed-shape blocks of rows (the one packer: contrastive batches and ``Encoder.encode``).

A *block* is ``rows x row_length`` token ids with segment ids: text ``t`` of the block occupies one stretch of
one row and every one of its tokens carries segment id ``t + 1`` (0 = padding). The encoder attends within
segments (``JinaBert(segment_ids=...)``; ALiBi distances are relative, so a text's hidden states do not depend
on where in the row it sits) and ``bilingual.modeling.segment_mean_pool`` gives one masked-mean embedding per
text, equal to encoding that text alone up to float error (tested). Texts are never split across rows; a text
longer than ``row_length`` has to be truncated by the caller first.

Placement is first-fit decreasing: texts in order of decreasing length (stable), each in the first row with
room, a new block opened when no row of an open block has room (or a block already holds ``max_texts``).

Contrastive batches (``tasks.batch_jobs``) pack each side of a batch in ``units`` independent *pack units*
of ``len(texts) / units`` consecutive texts and ``rows`` rows each: arrays ``[units, rows, row_length]``.
A unit is what one batch shard of one GradCache chunk holds, so sharding and GradCache split the leading
axis exactly as they split padded rows (``bilingual.gradcache``). ``PackingConfig`` sizes the units from a
token budget per text, chosen from the data's length distribution (``length_report``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional, Sequence

import numpy as np


class PackingError(ValueError):
    """The texts do not fit the block; the message names the sizes and what to raise."""


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where each text went: ``block``, ``row``, ``start`` (token offset in the row), ``slot`` (its index in
    its block, = segment id - 1), all ``[n]`` int; ``rows_used[b]``, ``texts[b]`` per block."""

    block: np.ndarray
    row: np.ndarray
    start: np.ndarray
    slot: np.ndarray
    rows_used: np.ndarray
    texts: np.ndarray

    @property
    def num_blocks(self) -> int:
        return len(self.rows_used)


def first_fit(lengths: Sequence[int], row_length: int, rows: int, max_texts: Optional[int] = None,
              max_blocks: Optional[int] = None) -> Placement:
    """First-fit-decreasing placement of texts of ``lengths`` tokens into blocks of ``rows x row_length``.

    ``max_texts``: texts per block at most (None: no limit). ``max_blocks``: raise ``PackingError`` when
    more blocks would be needed (the message gives the rows the texts need).
    """
    lengths = np.asarray(lengths, np.int64)
    if rows < 1 or row_length < 1:
        raise PackingError(f"a block needs rows >= 1 and row_length >= 1, got {rows} x {row_length}")
    if len(lengths) and int(lengths.max()) > row_length:
        raise PackingError(f"a text of {int(lengths.max())} tokens does not fit a row of {row_length} tokens "
                           "(truncate texts to the row length first)")
    n = len(lengths)
    block, row, start, slot = (np.zeros(n, np.int64) for _ in range(4))
    free = np.zeros(0, np.int64)  # remaining tokens of every row of every open block
    counts: list[int] = []
    for t in np.argsort(-lengths, kind="stable"):
        need = lengths[t]
        fits = free >= need
        if max_texts is not None and counts:
            fits &= np.repeat(np.asarray(counts) < max_texts, rows)
        hit = int(np.argmax(fits)) if fits.any() else -1
        if hit < 0:
            if max_blocks is not None and len(counts) >= max_blocks:
                needed = first_fit(lengths, row_length, rows * max(1, n), max_texts=None).rows_used[0]
                raise PackingError(f"{n} texts of {int(lengths.sum())} tokens (longest {int(lengths.max())}) need "
                                   f"{needed} rows of {row_length} tokens; the block has {rows * max_blocks}")
            free = np.concatenate([free, np.full(rows, row_length, np.int64)])
            counts.append(0)
            hit = len(free) - rows
        b, r = divmod(hit, rows)
        block[t], row[t], start[t], slot[t] = b, r, row_length - free[hit], counts[b]
        free[hit] -= need
        counts[b] += 1
    rows_used = np.array([int(np.max(np.nonzero(free[b * rows:(b + 1) * rows] < row_length)[0], initial=-1)) + 1
                          for b in range(len(counts))], np.int64)
    return Placement(block, row, start, slot, rows_used, np.asarray(counts, np.int64))


def fill(texts: Sequence[np.ndarray], placement: Placement, block: int, rows: int, row_length: int,
         pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block ``block`` of ``placement`` as arrays: ``ids``, ``segments`` ``[rows, row_length]`` int32 and the
    indices (into ``texts``) of its texts in slot order."""
    ids = np.full((rows, row_length), pad_id, np.int32)
    segments = np.zeros((rows, row_length), np.int32)
    members = np.nonzero(placement.block == block)[0]
    members = members[np.argsort(placement.slot[members], kind="stable")]
    for t in members:
        r, s = placement.row[t], placement.start[t]
        ids[r, s:s + len(texts[t])] = texts[t]
        segments[r, s:s + len(texts[t])] = placement.slot[t] + 1
    return ids, segments, members


def pack_units(texts: Sequence[np.ndarray], units: int, rows: int, row_length: int, pad_id: int,
               what: str = "texts") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texts (1-D id arrays, each at most ``row_length``) in ``units`` pack units of ``len(texts) / units``
    consecutive texts, ``rows`` rows each: ``ids``, ``segments`` ``[units, rows, row_length]`` int32 and
    ``lengths`` ``[len(texts)]`` int32. In unit ``u`` text ``u * per + i`` carries segment id ``i + 1``.
    ``PackingError`` (naming ``what``) when a unit does not fit."""
    n = len(texts)
    if units < 1 or n % units:
        raise PackingError(f"{n} {what} cannot be split into {units} pack units")
    per = n // units
    ids = np.full((units, rows, row_length), pad_id, np.int32)
    segments = np.zeros((units, rows, row_length), np.int32)
    lengths = np.fromiter((len(t) for t in texts), np.int32, n)
    for u in range(units):
        unit = texts[u * per:(u + 1) * per]
        try:
            placement = first_fit(lengths[u * per:(u + 1) * per], row_length, rows, max_blocks=1)
        except PackingError as err:
            raise PackingError(f"{what}, pack unit {u} of {units}: {err}") from None
        ids[u], segments[u], members = fill(unit, placement, 0, rows, row_length, pad_id)
        # slots follow placement order; renumber so that text i of the unit carries segment id i + 1
        relabel = np.zeros(per + 1, np.int32)
        relabel[placement.slot[members] + 1] = members + 1
        segments[u] = relabel[segments[u]]
    return ids, segments, lengths


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    """Packed contrastive batches (``make_batch_iterator(packing=...)``, gin ``data.options['packing']``).

    ``tokens_per_text``: side (``query``, ``passage``, ``negatives``, ``a``, ``b``) -> token budget per text:
    a unit of ``T`` texts gets ``ceil(T * budget / row_length)`` rows (the row length is the side's
    ``sequence_lengths`` entry, which is also where texts are truncated). Choose it above the mean framed
    length of the side's texts with room for the unit-to-unit spread (``length_report``).
    ``units``: pack units of the GLOBAL batch; a multiple of (batch shards x GradCache chunks). None: one
    per device (``jax.device_count()``), which fits any mesh without GradCache.
    """

    tokens_per_text: Mapping[str, int]
    units: Optional[int] = None

    @classmethod
    def from_options(cls, options) -> Optional["PackingConfig"]:
        if options is None or isinstance(options, PackingConfig):
            return options
        unknown = set(options) - {"tokens_per_text", "units"}
        if unknown:
            raise ValueError(f"data.options['packing'] has unknown keys {sorted(unknown)}; expected "
                             "'tokens_per_text' (side -> tokens) and 'units'")
        return cls(dict(options.get("tokens_per_text") or {}), options.get("units"))

    def global_units(self) -> int:
        if self.units is not None:
            return int(self.units)
        import jax

        return jax.device_count()

    def rows(self, side: str, texts_per_unit: int, row_length: int) -> int:
        """Rows of one pack unit of ``side``; ``ValueError`` naming the gin key when the budget is missing or
        cannot hold even the shortest framed texts (2 tokens each)."""
        key = f"data.options['packing']['tokens_per_text'][{side!r}]"
        if side not in self.tokens_per_text:
            raise ValueError(f"{key} is not set (packed batches need a token budget for every side)")
        budget = int(self.tokens_per_text[side])
        if budget < 2:
            raise ValueError(f"{key}={budget}: a text takes at least 2 tokens (<s> </s>)")
        return max(1, math.ceil(texts_per_unit * min(budget, row_length) / row_length))

    def local_units(self, num_shards: int) -> int:
        units = self.global_units()
        if units < 1 or units % num_shards:
            raise ValueError(f"data.options['packing']['units']={units} must be a positive multiple of the "
                             f"{num_shards} processes")
        return units // num_shards


def length_report(lengths: Sequence[int], texts_per_unit: int, row_length: int, quantile: float = 0.999,
                  trials: int = 200, seed: int = 0) -> dict:
    """How to size a side: framed lengths (truncated at ``row_length``) -> their mean and percentiles and the
    smallest ``tokens_per_text`` budget whose units of ``texts_per_unit`` random texts fit in ``quantile`` of
    ``trials`` simulated units (first-fit, as the batcher packs)."""
    lengths = np.minimum(np.asarray(lengths, np.int64), row_length)
    rng = np.random.default_rng(seed)
    needed = []
    for _ in range(trials):
        unit = rng.choice(lengths, size=texts_per_unit, replace=True)
        needed.append(int(first_fit(unit, row_length, texts_per_unit).rows_used[0]))
    rows = int(np.quantile(needed, quantile, method="higher"))
    return {"mean": float(lengths.mean()), "p50": float(np.percentile(lengths, 50)),
            "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max()), "rows_per_unit": rows,
            "tokens_per_text": math.ceil(rows * row_length / texts_per_unit)}
