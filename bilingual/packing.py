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
of ``len(texts) / units`` consecutive texts, each unit two blocks: ``rows`` rows of ``row_length`` tokens and
``long_rows`` rows of the side's full (truncation) length for the texts longer than ``row_length`` (none when
the row length is the full length): arrays ``[units, rows, row_length]`` and ``[units, long_rows, length]``.
Rows shorter than the truncation length are what makes short texts cheap (attention is quadratic in the row)
without truncating the few long ones. A unit is what one batch shard of one GradCache chunk holds, so sharding
and GradCache split the leading axis exactly as they split padded rows (``bilingual.gradcache``).
``PackingConfig`` sizes the units from a token budget per text and the long rows per unit, chosen from the
data's length distribution (``length_report``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional, Sequence

import numpy as np


class PackingError(ValueError):
    """The texts do not fit the block; the message names the sizes and what to raise."""


class _Overflow(PackingError):
    """``first_fit(explain=False)``: more blocks needed than ``max_blocks`` (no message computed)."""


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where each text went: ``block``, ``row`` (long rows numbered after the short ones), ``start`` (token
    offset in the row), ``slot`` (its index in its block, = segment id - 1), all ``[n]`` int; per block
    ``rows_used[b]`` (the last row in use + 1) and ``texts[b]``."""

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
              max_blocks: Optional[int] = None, long_rows: int = 0, long_length: Optional[int] = None,
              explain: bool = True) -> Placement:
    """First-fit-decreasing placement of texts of ``lengths`` tokens into blocks of ``rows x row_length``
    (block rows ``0 .. rows - 1``) and ``long_rows x long_length`` (rows ``rows .. rows + long_rows - 1``).

    A text goes to the first row with room, short rows before long ones, so the long rows take the texts
    that fit nowhere else and then what the short rows leave over. ``max_texts``: texts per block at most
    (None: no limit). ``max_blocks``: raise ``PackingError`` when more blocks would be needed (the message
    gives the rows the texts need; ``explain=False``: a bare ``PackingError``, for callers that search sizes).
    """
    lengths = np.asarray(lengths, np.int64)
    long_length = row_length if long_length is None else int(long_length)
    if rows < 0 or long_rows < 0 or rows + long_rows < 1 or row_length < 1 or long_length < 1:
        raise PackingError(f"a block needs rows >= 1 and row_length >= 1, got {rows} x {row_length}"
                           + (f" + {long_rows} x {long_length}" if long_rows else ""))
    widest = max(row_length if rows else 0, long_length if long_rows else 0)
    if len(lengths) and int(lengths.max()) > widest:
        raise PackingError(f"a text of {int(lengths.max())} tokens does not fit a row of {widest} tokens "
                           "(truncate texts to the row length first)")
    capacity = np.concatenate([np.full(rows, row_length, np.int64), np.full(long_rows, long_length, np.int64)])
    per_block = len(capacity)
    n = len(lengths)
    block, row, start, slot = (np.zeros(n, np.int64) for _ in range(4))
    free = np.zeros(0, np.int64)  # remaining tokens of every row of every open block
    counts: list[int] = []
    for t in np.argsort(-lengths, kind="stable"):
        need = lengths[t]
        fits = free >= need
        if max_texts is not None and counts:
            fits &= np.repeat(np.asarray(counts) < max_texts, per_block)
        hit = int(np.argmax(fits)) if fits.any() else -1
        if hit < 0:
            if max_blocks is not None and len(counts) >= max_blocks:
                if not explain:
                    raise _Overflow
                raise PackingError(_overflow_message(lengths, row_length, rows, long_rows, long_length,
                                                     max_blocks))
            free = np.concatenate([free, capacity])
            counts.append(0)
            hit = len(free) - per_block + int(np.argmax(capacity >= need))
        b, r = divmod(hit, per_block)
        block[t], row[t], start[t], slot[t] = b, r, capacity[r] - free[hit], counts[b]
        free[hit] -= need
        counts[b] += 1
    rows_used = np.array([int(np.max(np.nonzero(free[b * per_block:(b + 1) * per_block] < capacity)[0], initial=-1))
                          + 1 for b in range(len(counts))], np.int64)
    return Placement(block, row, start, slot, rows_used, np.asarray(counts, np.int64))


def rows_needed(lengths: Sequence[int], row_length: int, long_rows: int = 0,
                long_length: Optional[int] = None) -> int:
    """The fewest rows of ``row_length`` with which one block with ``long_rows`` long rows holds all
    ``lengths`` as ``first_fit`` places them (0 when the long rows hold everything). ``PackingError`` when
    the texts longer than ``row_length`` do not fit the long rows."""
    lengths = np.asarray(lengths, np.int64)
    if not len(lengths):
        return 0
    room = long_rows * (row_length if long_length is None else long_length)  # fewer rows cannot hold the tokens
    for rows in range(max(0 if long_rows else 1, -(-(int(lengths.sum()) - room) // row_length)), len(lengths)):
        try:
            first_fit(lengths, row_length, rows, max_blocks=1, long_rows=long_rows, long_length=long_length,
                      explain=False)
            return rows
        except _Overflow:
            pass
    try:  # one row per text holds every text that fits a row; what is left is the long texts' overflow
        first_fit(lengths, row_length, len(lengths), max_blocks=1, long_rows=long_rows, long_length=long_length,
                  explain=False)
    except _Overflow:
        raise PackingError(f"the texts longer than {row_length} tokens do not fit {long_rows} rows of "
                           f"{long_length}") from None
    return len(lengths)


def _overflow_message(lengths, row_length, rows, long_rows, long_length, max_blocks) -> str:
    n, total, longest = len(lengths), int(lengths.sum()), int(lengths.max())
    head = f"{n} texts of {total} tokens (longest {longest})"
    if not long_rows:
        return (f"{head} need {rows_needed(lengths, row_length)} rows of {row_length} tokens; "
                f"the block has {rows * max_blocks}")
    long = lengths[lengths > row_length]
    need_long = rows_needed(long, long_length)
    if need_long > long_rows * max_blocks:
        return (f"{head}: the {len(long)} longer than the row of {row_length} tokens need {need_long} long rows "
                f"of {long_length}; the block has {long_rows * max_blocks}")
    needed = rows_needed(lengths, row_length, long_rows * max_blocks, long_length)
    return (f"{head} need {needed} rows of {row_length} tokens beside {long_rows * max_blocks} long rows of "
            f"{long_length}; the block has {rows * max_blocks}")


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
               what: str = "texts", long_rows: int = 0, long_length: Optional[int] = None) -> dict[str, np.ndarray]:
    """Texts (1-D id arrays, each at most ``long_length`` when there are long rows, else ``row_length``) in
    ``units`` pack units of ``len(texts) / units`` consecutive texts:

    ``ids``, ``segments`` ``[units, rows, row_length]``; ``long_ids``, ``long_segments`` ``[units, long_rows,
    long_length]`` (``long_length`` defaults to ``row_length``; zero rows: empty arrays); ``lengths``
    ``[len(texts)]``; all int32. In unit ``u`` text ``u * per + i`` carries segment id ``i + 1`` in whichever
    block it sits. ``PackingError`` (naming ``what``) when a unit does not fit.
    """
    n = len(texts)
    if units < 1 or n % units:
        raise PackingError(f"{n} {what} cannot be split into {units} pack units")
    long_length = row_length if long_length is None else int(long_length)
    per = n // units
    out = {"ids": np.full((units, rows, row_length), pad_id, np.int32),
           "segments": np.zeros((units, rows, row_length), np.int32),
           "long_ids": np.full((units, long_rows, long_length), pad_id, np.int32),
           "long_segments": np.zeros((units, long_rows, long_length), np.int32),
           "lengths": np.fromiter((len(t) for t in texts), np.int32, n)}
    for u in range(units):
        unit = texts[u * per:(u + 1) * per]
        try:
            placement = first_fit(out["lengths"][u * per:(u + 1) * per], row_length, rows, max_blocks=1,
                                  long_rows=long_rows, long_length=long_length)
        except PackingError as err:
            raise PackingError(f"{what}, pack unit {u} of {units}: {err}") from None
        for i, text in enumerate(unit):
            r, s = int(placement.row[i]), int(placement.start[i])
            ids, segments = ("ids", "segments") if r < rows else ("long_ids", "long_segments")
            r = r if r < rows else r - rows
            out[ids][u, r, s:s + len(text)] = text
            out[segments][u, r, s:s + len(text)] = i + 1
    return out


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    """Packed contrastive batches (``make_batch_iterator(packing=...)``, gin ``data.options['packing']``).

    ``tokens_per_text``: side (``query``, ``passage``, ``negatives``, ``a``, ``b``) -> token budget per text:
    a unit of ``T`` texts gets ``ceil(T * budget / row_length)`` rows. Choose it above the mean framed length
    of the side's texts with room for the unit-to-unit spread (``length_report``).
    ``row_length``: side -> tokens per row (at most the side's ``sequence_lengths`` entry, which is where
    texts are truncated; absent: that length). ``long_rows``: side -> rows of the full length per unit for
    the texts longer than ``row_length``; required (0 allowed: such texts then fail the batch) where a row is
    shorter than the full length.
    ``units``: pack units of the GLOBAL batch; a multiple of (batch shards x GradCache chunks). None: one
    per device (``jax.device_count()``), which fits any mesh without GradCache.
    """

    tokens_per_text: Mapping[str, int]
    units: Optional[int] = None
    row_length: Mapping[str, int] = dataclasses.field(default_factory=dict)
    long_rows: Mapping[str, int] = dataclasses.field(default_factory=dict)

    KEYS = ("tokens_per_text", "units", "row_length", "long_rows")

    @classmethod
    def from_options(cls, options) -> Optional["PackingConfig"]:
        if options is None or isinstance(options, PackingConfig):
            return options
        unknown = set(options) - set(cls.KEYS)
        if unknown:
            raise ValueError(f"data.options['packing'] has unknown keys {sorted(unknown)}; expected "
                             "'tokens_per_text' (side -> tokens), 'units', 'row_length' (side -> tokens) and "
                             "'long_rows' (side -> rows)")
        return cls(dict(options.get("tokens_per_text") or {}), options.get("units"),
                   dict(options.get("row_length") or {}), dict(options.get("long_rows") or {}))

    def global_units(self) -> int:
        if self.units is not None:
            return int(self.units)
        import jax

        return jax.device_count()

    def block(self, side: str, texts_per_unit: int, length: int) -> tuple[int, int, int]:
        """``(rows, row_length, long_rows)`` of one pack unit of ``side`` whose texts are truncated at
        ``length``; ``ValueError`` naming the gin key when a budget is missing or cannot hold even the
        shortest framed texts (2 tokens each), or a row length is out of range."""
        key = f"data.options['packing']['tokens_per_text'][{side!r}]"
        if side not in self.tokens_per_text:
            raise ValueError(f"{key} is not set (packed batches need a token budget for every side)")
        budget = int(self.tokens_per_text[side])
        if budget < 2:
            raise ValueError(f"{key}={budget}: a text takes at least 2 tokens (<s> </s>)")
        row_length = int(self.row_length.get(side, length))
        row_key = f"data.options['packing']['row_length'][{side!r}]"
        if not 2 <= row_length <= length:
            raise ValueError(f"{row_key}={row_length}: expected 2 to the side's sequence length {length}")
        long_key = f"data.options['packing']['long_rows'][{side!r}]"
        long_rows = int(self.long_rows.get(side, 0))
        if row_length < length and side not in self.long_rows:
            raise ValueError(f"{long_key} is not set: rows of {row_length} < {length} tokens need the rows of "
                             f"{length} per unit for longer texts (0: such texts fail the batch)")
        if long_rows < 0 or (long_rows and row_length == length):
            raise ValueError(f"{long_key}={long_rows}: expected >= 0, and 0 where rows are the full length")
        return max(1, math.ceil(texts_per_unit * min(budget, row_length) / row_length)), row_length, long_rows

    def local_units(self, num_shards: int) -> int:
        units = self.global_units()
        if units < 1 or units % num_shards:
            raise ValueError(f"data.options['packing']['units']={units} must be a positive multiple of the "
                             f"{num_shards} processes")
        return units // num_shards


def length_report(lengths: Sequence[int], texts_per_unit: int, row_length: int, quantile: float = 0.999,
                  trials: int = 200, seed: int = 0, long_length: Optional[int] = None) -> dict:
    """How to size a side: framed lengths -> their mean and percentiles and the smallest sizes whose units of
    ``texts_per_unit`` random texts fit in ``quantile`` of ``trials`` simulated units (first fit, as the
    batcher packs): ``tokens_per_text`` for rows of ``row_length``; with ``long_length`` (the truncation
    length, above ``row_length``) also ``long_rows``, the rows of that length per unit for the longer texts.
    Lengths are truncated at ``long_length`` (default ``row_length``)."""
    long_length = row_length if long_length is None else int(long_length)
    lengths = np.minimum(np.asarray(lengths, np.int64), long_length)
    rng = np.random.default_rng(seed)
    units = [rng.choice(lengths, size=texts_per_unit, replace=True) for _ in range(trials)]
    long_rows = 0
    if long_length > row_length:
        long_rows = int(np.quantile([rows_needed(u[u > row_length], long_length) for u in units], quantile,
                                    method="higher"))
    needed = []
    for u in units:  # a unit whose long texts overflow the long rows fails whatever the budget: count it so
        fits = rows_needed(u[u > row_length], long_length) <= long_rows
        needed.append(max(1, rows_needed(u, row_length, long_rows, long_length)) if fits else np.inf)
    rows = np.quantile(needed, quantile, method="higher")
    if not np.isfinite(rows):
        raise ValueError(f"length_report: more than {1 - quantile:.3g} of the units overflow their long rows")
    rows = int(rows)
    return {"mean": float(lengths.mean()), "p50": float(np.percentile(lengths, 50)),
            "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max()), "rows_per_unit": rows,
            "tokens_per_text": math.ceil(rows * row_length / texts_per_unit), "row_length": row_length,
            "long_rows": long_rows}
