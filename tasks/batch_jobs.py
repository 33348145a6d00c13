"""The stateless half of the input pipeline: work that is a pure function of an index (no TensorFlow here).

Every task is read as an endless, seeded sequence of *positions* on each host (``ExampleOrder``): position
``p`` of host ``h`` of ``n`` is global index ``g = h + n * p`` of the task's records repeated epoch after
epoch; epoch ``e = g // N`` visits the ``N`` records in the order of a seeded index permutation
(``grain``'s ``index_shuffle``, O(1) time and memory per lookup, seeded by ``(seed, task, e)``). So the hosts
read disjoint positions that together cover every epoch, and the record at any position is found without
reading what comes before it: this is what makes a resume at example 10^7 cost what it costs at example 10.

Two jobs run in the input workers (``tasks.batching`` feeds them to ``grain`` worker processes); each is a
pure function of its index, so the batches do not depend on how many workers there are:

* ``ContrastiveJob(j)``: batch ``j`` of a pairs / retrieval / STS task: the records at positions
  ``start + j*B ... start + (j+1)*B - 1``, tokenised, framed ``<s> ... </s>``, truncated and padded to the
  configured lengths (the layout of ``bilingual.task_types``); or, packed, truncated there and packed whole
  into fixed-shape blocks per pack unit (``bilingual.packing``, the packed layout of ``bilingual.task_types``).
* ``DocumentJob(j)``: documents ``start + j*C ...`` of an MLM task, tokenised (ids without ``<s>``/``</s>``);
  packing them into rows and masking are sequential and run after the workers (``tasks.batching``).

Tokenisation is the task's ``tasks.vocabulary.ByteLevelBPEVocabulary`` (the same Rust tokenizer file, loaded
here without TensorFlow), so ids equal those of the task's seqio preprocessors (tested).
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any, Optional, Sequence

import numpy as np
from grain.experimental import index_shuffle

from bilingual import packing as packer
from bilingual import text_identity as identity
from bilingual import tokenizer as bpe

SHUFFLE_ROUNDS = 4  # grain's default for its own shuffles


def derived_seed(*parts: int | str) -> int:
    """A 32-bit seed derived from ints and strings (strings via CRC32, stable across runs and hosts)."""
    ints = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class ExampleOrder:
    """Which record each host position reads (see the module docstring).

    ``num_records``: N; ``shard_index``, ``num_shards``: h, n; ``num_epochs``: None for endless, else the
    positions stop after that many epochs (``limit``).
    """

    num_records: int
    seed: int
    task: str
    shard_index: int = 0
    num_shards: int = 1
    shuffle: bool = True
    num_epochs: Optional[int] = None

    def global_index(self, position: int) -> int:
        return self.shard_index + self.num_shards * position

    def epoch(self, position: int) -> int:
        return self.global_index(position) // self.num_records if self.num_records else 0

    def record(self, position: int) -> int:
        """The record index read at ``position`` of this host."""
        epoch, i = divmod(self.global_index(position), self.num_records)
        if not self.shuffle or self.num_records == 1:
            return i
        return int(index_shuffle(i, max_index=self.num_records - 1, seed=derived_seed(self.seed, self.task, epoch),
                                 rounds=SHUFFLE_ROUNDS))

    @property
    def limit(self) -> Optional[int]:
        """Positions this host has (None: endless): the g = h + n*p below ``num_epochs * N``."""
        if self.num_epochs is None:
            return None
        return max(0, -(-(self.num_epochs * self.num_records - self.shard_index) // self.num_shards))


class TextEncoder:
    """The tokenizer at ``path`` (``tokenizer.json``), loaded on first use in each process, with no special
    tokens added: ``encode(texts)`` -> int32 id arrays, as ``ByteLevelBPEVocabulary.encode_batch``."""

    def __init__(self, path: str):
        self.path = str(path)
        self._tokenizer = None

    def __getstate__(self):
        return {"path": self.path, "_tokenizer": None}

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        if self._tokenizer is None:
            self._tokenizer = bpe.load_for_encoding(self.path)
        return [np.asarray(e.ids, np.int32) for e in self._tokenizer.encode_batch(list(texts),
                                                                                 add_special_tokens=False)]


def frame(ids: np.ndarray, length: int) -> np.ndarray:
    """``<s> ids[:length-2] </s>`` (the text is cut, not the frame), as ``tasks.preprocessors`` frames."""
    return np.concatenate([[bpe.BOS_ID], ids[: length - 2], [bpe.EOS_ID]]).astype(np.int32)


def pad_to(rows: list[np.ndarray], length: int, pad_id: int = bpe.PAD_ID) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads 1-D id arrays (each at most ``length`` long) -> ids, mask [len(rows), length] int32."""
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"sequence of {len(row)} tokens exceeds {length}")
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


@dataclasses.dataclass(frozen=True)
class View:
    """One encoder input of a contrastive batch: ``ids_key``/``mask_key`` from feature ``side``, ``[B, L]``
    or, ``nested``, ``[B, m, L]`` (hard negatives). Packed (``lengths_key`` set): ``mask_key`` is the segment
    ids' key, both ``[units, rows, L]``, and ``lengths_key`` the texts' lengths ``[B]`` / ``[B, m]``.
    ``text_key``: the key of the texts' identity keys ``[B, W]`` / ``[B, m, W]`` (``bilingual.text_identity``,
    computed from the raw text), or None. ``long_keys``: packed, the long rows' ids and segment ids keys
    ``[units, long_rows, L]``."""

    ids_key: str
    mask_key: str
    side: str
    nested: bool
    lengths_key: Optional[str] = None
    text_key: Optional[str] = None
    long_keys: Optional[tuple[str, str]] = None


@dataclasses.dataclass(frozen=True)
class ContrastiveJob:
    """Batch ``j`` of a contrastive task (module docstring). ``records[i]`` -> a feature dict of texts (and
    the ``scalars``, e.g. STS ``score``); ``lengths``: side -> padded length."""

    task: str
    records: Any
    order: ExampleOrder
    encoder: TextEncoder
    batch_size: int
    start: int
    views: tuple[View, ...]
    scalars: tuple[tuple[str, str], ...]  # (key, numpy dtype name)
    lengths: tuple[tuple[str, int], ...]
    # packed: (units, ((side, rows, row length, long rows) per unit, ...)), packing.PackingConfig.block's sizes
    packing: Optional[tuple[int, tuple[tuple[str, int, int, int], ...]]] = None
    dedup_window: int = 1

    def examples(self, j: int) -> list:
        """The records of batch ``j``: positions ``first ... first + B - 1``, or with ``dedup_window`` W > 1
        this batch's share of its window's positions as ``dedup_deal`` deals them (windows of W batches
        counted from position 0, so the deal is a function of the batch's position only: resuming
        anywhere gives the same batches)."""
        first = self.start + j * self.batch_size
        if self.dedup_window <= 1:
            return [self.records[self.order.record(p)] for p in range(first, first + self.batch_size)]
        index = first // self.batch_size
        window_first = (index - index % self.dedup_window) * self.batch_size
        count = self.dedup_window
        if self.order.limit is not None:  # the last window of a finite order holds only whole batches
            count = min(count, (self.order.limit - window_first) // self.batch_size)
        cached = getattr(self, "_window", None)  # the W jobs of a window usually run in one worker, in turn
        if cached is None or cached[0] != window_first:
            window = [self.records[self.order.record(p)]
                      for p in range(window_first, window_first + count * self.batch_size)]
            cached = (window_first, window, dedup_deal([self._texts_of(e) for e in window], self.batch_size))
            object.__setattr__(self, "_window", cached)  # a cache, not state: batches never depend on it
        _, window, deal = cached
        return [window[i] for i in deal[index % self.dedup_window]]

    def _texts_of(self, example) -> set:
        texts = set()
        for view in self.views:
            if view.text_key is not None:
                value = example[view.side]
                texts.update(value if view.nested else [value])
        return set(identity.text_keys(sorted(texts)).view(np.int64)[:, 0].tolist()) if texts else set()

    def __call__(self, j: int) -> dict[str, np.ndarray]:
        examples = self.examples(j)
        lengths = dict(self.lengths)
        batch: dict[str, np.ndarray] = {}
        for view in self.views:
            texts = [e[view.side] for e in examples]
            if view.nested:
                m = len(texts[0])
                if any(len(t) != m for t in texts):
                    raise ValueError(f"task {self.task!r}: examples carry different numbers of {view.side}")
                texts = [t for group in texts for t in group]
            if view.text_key is not None:
                keys = identity.text_keys(texts)
                batch[view.text_key] = keys.reshape((len(examples), m, -1) if view.nested else keys.shape)
            rows = [frame(ids, lengths[view.side]) for ids in self.encoder.encode(texts)]
            if view.lengths_key is not None:
                units, blocks = self.packing[0], {side: sizes for side, *sizes in self.packing[1]}
                unit_rows, row_length, long_rows = blocks[view.side]
                try:
                    packed = packer.pack_units(rows, units, unit_rows, row_length, bpe.PAD_ID,
                                               what=f"task {self.task!r} {view.side} texts", long_rows=long_rows,
                                               long_length=lengths[view.side])
                except packer.PackingError as err:
                    keys = "data.options['packing']['{}'][%r]" % view.side
                    raise packer.PackingError(f"{err}; the {unit_rows} rows per unit come from "
                                              f"{keys.format('tokens_per_text')}"
                                              + (f" and the {long_rows} long rows from {keys.format('long_rows')}"
                                                 if row_length < lengths[view.side] else "") + ": raise it") from None
                shape = (len(examples), m) if view.nested else (len(examples),)
                batch[view.ids_key], batch[view.mask_key] = packed["ids"], packed["segments"]
                batch[view.long_keys[0]], batch[view.long_keys[1]] = packed["long_ids"], packed["long_segments"]
                batch[view.lengths_key] = packed["lengths"].reshape(shape)
                continue
            ids, mask = pad_to(rows, lengths[view.side])
            if view.nested:
                ids, mask = ids.reshape(len(examples), m, -1), mask.reshape(len(examples), m, -1)
            batch[view.ids_key], batch[view.mask_key] = ids, mask
        for key, dtype in self.scalars:
            batch[key] = np.array([e[key] for e in examples], dtype)
        return batch


def dedup_deal(texts: Sequence[set], batch_size: int) -> list[list[int]]:
    """Deals a window of ``len(texts) = W * batch_size`` examples into W batches so that examples sharing a
    text (``texts[i]``: the identity keys of example ``i``'s texts) land in different batches where they can.

    Greedy, in example order: example ``i`` goes to the first batch, counting from its own (``i //
    batch_size``) cyclically, that has room and holds none of its texts; when every batch with room holds
    one, to the first with room. Returns each batch's example indices in example order. Deterministic.
    """
    count = len(texts) // batch_size
    batches: list[list[int]] = [[] for _ in range(count)]
    seen: list[set] = [set() for _ in range(count)]
    for i, keys in enumerate(texts):
        home = min(i // batch_size, count - 1)
        order = [(home + k) % count for k in range(count)]
        open_ = [b for b in order if len(batches[b]) < batch_size]
        target = next((b for b in open_ if not (keys & seen[b])), open_[0])
        batches[target].append(i)
        seen[target] |= keys
    return [sorted(b) for b in batches]


@dataclasses.dataclass(frozen=True)
class DocumentJob:
    """Documents ``start + j*chunk ... start + (j+1)*chunk - 1`` of an MLM task (fewer at ``order.limit``),
    tokenised: ``(ids, lengths)``, the documents' ids (without ``<s>``/``</s>``) concatenated, int32, and their
    lengths. Two arrays rather than one per document: a worker hands each array over in its own shared-memory
    segment, which costs far more than the split (``split_documents``) in the consumer."""

    records: Any
    order: ExampleOrder
    encoder: TextEncoder
    chunk: int
    start: int

    def __call__(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        first = self.start + j * self.chunk
        stop = first + self.chunk if self.order.limit is None else min(first + self.chunk, self.order.limit)
        docs = self.encoder.encode([self.records[self.order.record(p)]["text"] for p in range(first, stop)])
        lengths = np.fromiter((len(d) for d in docs), np.int64, len(docs))
        return (np.concatenate(docs) if docs else np.zeros(0, np.int32)), lengths


def split_documents(job_output: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """The documents of a ``DocumentJob`` result, one id array each."""
    ids, lengths = job_output
    return np.split(ids, np.cumsum(lengths)[:-1]) if len(lengths) else []


def quiet_worker(worker_index: int, worker_count: int) -> None:
    """``grain`` worker start-up: one tokenizer thread per worker process (the workers are the parallelism)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
