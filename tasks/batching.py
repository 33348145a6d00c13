"""The trainer's data entry point: deterministic, resumable, host-sharded, single-task batches.

    it = make_batch_iterator("multitask_de", split="train", batch_size=global_batch // jax.process_count(),
                             seed=0, sequence_lengths={"query": 64, "passage": 256, "negatives": 256},
                             shard_index=jax.process_index(), num_shards=jax.process_count())
    batch = next(it)                  # dict of numpy arrays + "task" and "task_type" strings
    state = it.get_state()            # JSON-serialisable; save it with the checkpoint
    it.set_state(state)               # the next batches equal those of the uninterrupted run

Batch contract: the ``bilingual.task_types`` entry of the batch's type (every batch is checked against it).
In short (int32 unless noted; masks 1 on real tokens, 0 on padding; every sequence ``<s> ... </s>`` followed
by ``<pad>`` (id 1); arrays always have the configured shapes, so the trainer compiles once per type):

* ``mlm``: ``input_ids``, ``attention_mask``, ``segment_ids`` [B, L] (packed pieces numbered 1..k per row,
  0 = padding), ``targets`` [B, L] (original ids), ``loss_weights`` [B, L] float32 (1.0 on every selected
  position: masked, randomly replaced and unchanged alike). ``L = sequence_lengths["text"]``.
* ``pairs``: ``query_ids``, ``query_mask`` [B, Lq]; ``passage_ids``, ``passage_mask`` [B, Lp].
* ``retrieval``: as pairs plus ``negative_ids``, ``negative_mask`` [B, m, Ln].
* ``sts``: ``a_ids``, ``a_mask``, ``b_ids``, ``b_mask`` [B, La=Lb]; ``score`` [B] float32.

Semantics:

* Every batch comes from ONE task. At step ``t`` the task is drawn with probability proportional to its rate
  from a generator seeded by ``(seed, t)`` only, so every host draws the same task at the same step (the global
  batch is single-task) and a restored iterator draws the same tasks as an uninterrupted one.
* Each task is read as a sequence of epochs; epoch ``e`` is the task's examples in a seeded random order
  (file order and a 10k-example shuffle buffer, seeds from ``(seed, task name, e)``), restarted when exhausted.
  The position is ``(epoch, examples consumed, offset)`` per task (``offset``: tokens of the current MLM
  document already packed); a restore re-opens the epoch and skips the
  consumed examples (cost: re-reading and re-tokenising them once, a few seconds per million short rows).
* Host sharding: with ``num_shards`` hosts, host ``shard_index`` reads a disjoint part (whole files when a split
  has at least ``num_shards`` files, else every ``num_shards``-th row); together the hosts cover the data.
* MLM masking uses a generator seeded by ``(seed, step, shard_index)``.
"""

from __future__ import annotations

import atexit
import collections
import copy
import gc
import json
import logging
import weakref
import zlib
from typing import Any, Iterator, Mapping

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from tasks import tf_setup  # noqa: F401  (TensorFlow on the CPU only)

from bilingual import task_types
from tasks import mixtures, mlm, sources
from tasks import preprocessors as pp

log = logging.getLogger(__name__)
STATE_FORMAT = "bilingual.batching/1"
POSITION_FIELDS = ("epoch", "consumed", "offset")  # a task's position in a saved state


def _seed(*parts: int | str) -> int:
    """A 32-bit seed derived from ints and strings (strings via CRC32, stable across runs and hosts)."""
    ints = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0])


def _malformed_fields(state: dict) -> dict[str, Any]:
    """``{field: value}`` of the fields of a saved iterator state that do not have the form ``get_state`` writes."""
    def count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    bad = {} if count(state.get("step")) else {"step": state.get("step")}
    if not isinstance(state.get("tasks"), dict):
        return {**bad, "tasks": state.get("tasks")}
    return {**bad, **{f"tasks.{name}": p for name, p in state["tasks"].items()
                      if not isinstance(p, dict) or not all(count(p.get(k)) for k in POSITION_FIELDS)}}


READ_BATCH = 256  # examples pulled from tf.data at once (per-element iteration costs ~0.1-0.2 ms each)


def _split_rows(value) -> list:
    """The rows of a batched value from ``as_numpy_iterator``: a dense array or a (nested) ragged value."""
    if isinstance(value, np.ndarray):
        return list(value)
    splits = np.asarray(value.row_splits)
    inner = _split_rows(value.values)
    if isinstance(value.values, np.ndarray):
        return np.split(np.asarray(value.values), splits[1:-1])
    return [inner[a:b] for a, b in zip(splits[:-1], splits[1:])]


def _unbatch(chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
    columns = {k: _split_rows(v) for k, v in chunk.items()}
    n = len(next(iter(columns.values())))
    return [{k: columns[k][i] for k in columns} for i in range(n)]


def pad_to(rows: list[np.ndarray], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads 1-D id arrays (each at most ``length`` long) -> ids, mask [len(rows), length] int32."""
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"sequence of {len(row)} tokens exceeds {length}")
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


_OPEN_STREAMS: "weakref.WeakSet[TaskStream]" = weakref.WeakSet()


@atexit.register
def _close_open_streams() -> None:
    """Drops live tf.data iterators before interpreter shutdown: an iterator with work in flight (prefetch into
    a Python ``from_generator``/``numpy_function``) can otherwise deadlock the exit waiting for the GIL."""
    for stream in list(_OPEN_STREAMS):
        stream.close()
    gc.collect()


def _epoch_dataset(task: seqio.Task, split: str, shuffle: bool, seed: int, shard: tuple[int, int] | None,
                   lengths: tuple) -> tf.data.Dataset:
    """One epoch of a task, shuffled with ``seed``. Not cached on purpose: a second iterator over the same
    ``tf.data`` dataset would draw a new shuffle order (seqio shuffles with ``reshuffle_each_iteration``), so a
    restore builds the pipeline again (~0.5 s of tracing per task)."""
    return task.get_dataset(
        sequence_length=dict(lengths), split=split, shuffle=shuffle, seed=seed,
        shard_info=None if shard is None else seqio.ShardInfo(*shard), num_epochs=1, use_cached=False,
        trim_output_features=False, try_in_mem_cache=False)


class TaskStream:
    """Examples of one task on one host, epoch after epoch, with a saveable position.

    ``peek()`` returns the current example without consuming it; ``advance()`` consumes it. For MLM, the
    current document is consumed a piece at a time (its token ``offset`` is part of the position).
    """

    def __init__(self, task: seqio.Task, split: str, seed: int, shard_info: seqio.ShardInfo | None,
                 sequence_lengths: Mapping[str, int], *, shuffle: bool = True, num_epochs: int | None = None):
        self.task, self.split, self.seed, self.shard_info = task, split, seed, shard_info
        self.lengths, self.shuffle, self.num_epochs = dict(sequence_lengths), shuffle, num_epochs
        self.epoch, self.consumed, self.offset = 0, 0, 0
        self._iterator: Iterator | None = None
        self._buffer: collections.deque = collections.deque()
        self._current = None

    # position -------------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "offset": self.offset}

    def set_state(self, state: Mapping[str, int]) -> None:
        self.epoch, self.consumed, self.offset = int(state["epoch"]), int(state["consumed"]), int(state["offset"])
        self._iterator, self._current = None, None
        self._buffer.clear()

    # reading --------------------------------------------------------------------------------------------
    def _open(self) -> None:
        shard = None if self.shard_info is None else (self.shard_info.index, self.shard_info.num_shards)
        ds = _epoch_dataset(self.task, self.split, self.shuffle, _seed(self.seed, self.task.name, self.epoch), shard,
                            tuple(sorted(self.lengths.items())))
        if self.consumed:
            ds = ds.skip(self.consumed)
        self._iterator = ds.ragged_batch(READ_BATCH).prefetch(2).as_numpy_iterator()
        self._buffer.clear()
        _OPEN_STREAMS.add(self)

    def close(self) -> None:
        """Releases the tf.data iterator (the position is kept; reading again re-opens it)."""
        self._iterator = None
        self._buffer.clear()
        self._current = None

    def _next_example(self) -> dict[str, Any]:
        if not self._buffer:
            try:
                chunk = next(self._iterator)  # StopIteration at the end of the epoch
            except tf.errors.OpError as err:  # a malformed row: the source's DataError, as text
                raise sources.unwrap_data_error(err) or err
            self._buffer.extend(_unbatch(chunk))
        return self._buffer.popleft()

    def peek(self) -> dict[str, Any]:
        if self._current is None:
            if self._iterator is None:
                self._open()
            try:
                self._current = self._next_example()
            except StopIteration:
                if self.consumed == 0:
                    raise ValueError(f"task {self.task.name!r} split {self.split!r} yields no examples"
                                     f"{'' if self.shard_info is None else f' on shard {self.shard_info}'}")
                if self.num_epochs is not None and self.epoch + 1 >= self.num_epochs:
                    raise
                self.epoch, self.consumed, self.offset, self._iterator = self.epoch + 1, 0, 0, None
                return self.peek()
        return self._current

    def advance(self) -> None:
        self.peek()
        self._current = None
        self.consumed, self.offset = self.consumed + 1, 0

    # MLM documents ---------------------------------------------------------------------------------------
    def document_rest(self) -> np.ndarray:
        """The not yet packed tokens of the current MLM document (empty documents are skipped)."""
        while True:
            ids = self.peek()["text"]
            if self.offset < len(ids):
                return ids[self.offset:]
            self.advance()

    def consume_tokens(self, n: int) -> None:
        self.offset += n
        if self.offset >= len(self.peek()["text"]):
            self.advance()


class BatchIterator:
    """Single-task batches from a task or mixture; see the module docstring. Build with ``make_batch_iterator``."""

    def __init__(self, name: str, tasks: list[seqio.Task], rates: np.ndarray, *, split: str, batch_size: int,
                 seed: int, sequence_lengths: Mapping[str, int], shard_index: int, num_shards: int,
                 shuffle: bool, num_epochs: int | None, mlm_rate: float):
        self.name, self.tasks, self.split = name, tasks, split
        self.probabilities = rates / rates.sum()
        self.batch_size, self.seed, self.lengths = batch_size, seed, dict(sequence_lengths)
        self.shard_index, self.num_shards = shard_index, num_shards
        self.shuffle, self.num_epochs, self.mlm_rate = shuffle, num_epochs, mlm_rate
        self.task_types = {t.name: pp.task_type_of(t.output_features) for t in tasks}
        self.step = 0
        self._streams: dict[str, TaskStream] = {}
        self._saved_positions: dict[str, dict] = {}

    # state ----------------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "name": self.name, "split": self.split, "seed": self.seed,
                "batch_size": self.batch_size, "shard_index": self.shard_index, "num_shards": self.num_shards,
                "sequence_lengths": dict(sorted(self.lengths.items()))}

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: the step and each task's (epoch, consumed, offset)."""
        positions = dict(self._saved_positions)
        positions.update({name: s.get_state() for name, s in self._streams.items()})
        return {**self._identity(), "step": self.step, "tasks": dict(sorted(positions.items()))}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores a ``get_state`` result; the identity (name, seed, shards, batch size, ...) must match."""
        state = json.loads(json.dumps(state))  # accept anything JSON round-trips to (e.g. from orbax)
        malformed = _malformed_fields(state) if isinstance(state, dict) else {"(the state)": state}
        if malformed:
            raise ValueError(f"data iterator state has malformed fields {malformed} (a JSON object whose 'step' is "
                             f"an integer >= 0 and whose 'tasks' map names to {POSITION_FIELDS} integers >= 0)")
        identity = self._identity()
        mismatched = {k: (state.get(k), v) for k, v in identity.items() if state.get(k) != v}
        if mismatched:
            raise ValueError(f"data iterator state does not match this iterator: {mismatched} (saved, current)")
        unknown = set(state["tasks"]) - set(self.task_types)
        if unknown:
            raise ValueError(f"data iterator state names tasks {sorted(unknown)} not in {self.name!r}")
        self.step = state["step"]
        self._streams = {}
        self._saved_positions = copy.deepcopy(state["tasks"])

    # batches --------------------------------------------------------------------------------------------
    def _stream(self, task: seqio.Task) -> TaskStream:
        if task.name not in self._streams:
            shard = seqio.ShardInfo(self.shard_index, self.num_shards) if self.num_shards > 1 else None
            stream = TaskStream(task, self.split, self.seed, shard, self.lengths, shuffle=self.shuffle,
                                num_epochs=self.num_epochs)
            if task.name in self._saved_positions:
                stream.set_state(self._saved_positions.pop(task.name))
            self._streams[task.name] = stream
        return self._streams[task.name]

    def close(self) -> None:
        """Releases the tf.data pipelines (also done automatically at interpreter exit); the state is kept."""
        for stream in self._streams.values():
            stream.close()

    def __enter__(self) -> "BatchIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def task_for_step(self, step: int) -> seqio.Task:
        """The task of batch ``step`` (the same on every host)."""
        rng = np.random.default_rng([self.seed, step, 0])
        return self.tasks[int(rng.choice(len(self.tasks), p=self.probabilities))]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        task = self.task_for_step(self.step)
        task_type = self.task_types[task.name]
        stream = self._stream(task)
        vocab = next(iter(task.output_features.values())).vocabulary
        spec = task_types.get(task_type)
        if task_type == "mlm":
            rng = np.random.default_rng([self.seed, self.step, 1, self.shard_index])
            batch = self._mlm_batch(stream, vocab, rng)
        else:
            batch = self._tuple_batch(stream, spec, vocab)
        spec.check_batch(batch, self.batch_size, self.lengths)
        self.step += 1
        batch["task"], batch["task_type"] = task.name, task_type
        return batch

    def _mlm_batch(self, stream: TaskStream, vocab, rng: np.random.Generator) -> dict[str, Any]:
        length = self.lengths["text"]
        rows = [mlm.fill_row(stream.document_rest, stream.consume_tokens, length, vocab.bos_id, vocab.eos_id)
                for _ in range(self.batch_size)]
        ids, segments = mlm.pack_rows(rows, length, vocab.pad_id)
        masked = mlm.whole_word_mask(ids, vocab.word_start, rng, rate=self.mlm_rate, mask_id=vocab.mask_id,
                                     num_special=vocab.num_special_tokens, vocab_size=vocab.vocab_size)
        return {"input_ids": masked["input_ids"], "attention_mask": (segments > 0).astype(np.int32),
                "segment_ids": segments, "targets": masked["targets"], "loss_weights": masked["loss_weights"]}

    def _tuple_batch(self, stream: TaskStream, spec: task_types.TaskType, vocab) -> dict[str, Any]:
        """A contrastive batch in the layout of ``spec``: each view's sequences from the example feature named by
        its length key, padded to that length (``[B, m, L]`` views from ``m`` sequences per example); the
        other arrays (STS ``score``) from the feature of their name, in the table's dtype."""
        examples = []
        for _ in range(self.batch_size):
            examples.append(stream.peek())
            stream.advance()
        batch: dict[str, Any] = {}
        for ids_key, mask_key in spec.views.values():
            dims = spec.arrays[ids_key][0]
            side, nested = dims[-1], len(dims) == 3
            rows = [e[side] for e in examples]
            if nested:
                m = len(rows[0])
                if any(len(r) != m for r in rows):
                    raise ValueError(f"task {stream.task.name!r}: examples carry different numbers of {side}")
                rows = [seq for r in rows for seq in r]
            ids, mask = pad_to(rows, self.lengths[side], vocab.pad_id)
            if nested:
                ids, mask = ids.reshape(len(examples), m, -1), mask.reshape(len(examples), m, -1)
            batch[ids_key], batch[mask_key] = ids, mask
        for key in spec.scalars:
            batch[key] = np.array([e[key] for e in examples], spec.arrays[key][1])
        return batch


def batch_shapes(task_type: str, batch_size: int, sequence_lengths: Mapping[str, int] | None = None,
                 num_negatives: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """``task_types.get(task_type).batch_shapes`` with the default sequence lengths filled in: key ->
    ``jax.ShapeDtypeStruct`` of a batch (e.g. to lower/compile a step ahead of time). ``num_negatives`` is
    required for retrieval (the task's registered count)."""
    lengths = pp.sequence_lengths_with_defaults(sequence_lengths)
    return task_types.get(task_type).batch_shapes(batch_size, lengths, num_negatives)


@gin.configurable
def make_batch_iterator(name: str, split: str = "train", batch_size: int = 32, seed: int = 0, *,
                        sequence_lengths: Mapping[str, int] | None = None, shard_index: int = 0,
                        num_shards: int = 1, rates: Mapping[str, float] | None = None, shuffle: bool = True,
                        num_epochs: int | None = None, mlm_rate: float = 0.3) -> BatchIterator:
    """Batches of a registered task or mixture for one host.

    Args:
      name: a ``seqio`` task or mixture name (e.g. ``"mlm_de_en"``; register the demo ones with
        ``tasks.demo.register_demo_tasks(tokenizer_dir)``); an unknown one raises
        ``tasks.mixtures.UnknownNameError`` listing the registered names.
      split: the split to read (``"train"``).
      batch_size: the HOST-LOCAL batch: ``global_batch // jax.process_count()``.
      seed: fixes the task sequence, the data order and the MLM masks.
      sequence_lengths: ``text`` (MLM row length), ``query``, ``passage``, ``negatives``, ``a``, ``b``;
        missing keys take ``tasks.preprocessors.DEFAULT_SEQUENCE_LENGTHS``.
      shard_index, num_shards: this host's shard (``jax.process_index()``, ``jax.process_count()``).
      rates: optional task -> rate overriding the mixture's rates (tasks not named get rate 0).
      shuffle: shuffle each epoch (seeded). ``False`` reads in file order (evaluation, debugging).
      num_epochs: ``None`` repeats forever; otherwise ``StopIteration`` once a task runs out.
      mlm_rate: fraction of tokens selected for MLM (TRAINING.md: 0.3).

    Returns:
      A ``BatchIterator`` (``next()``, ``get_state()``, ``set_state()``, ``task_for_step(step)``, ``close()``).

    Gin-configurable (e.g. ``make_batch_iterator.sequence_lengths = {"text": 512}``); arguments the caller
    passes explicitly win over bindings.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = pp.sequence_lengths_with_defaults(sequence_lengths)
    tasks, task_rates = mixtures.resolve(name, split)
    if rates is not None:
        unknown = set(rates) - set(task_rates)
        if unknown:
            raise ValueError(f"rates name tasks {sorted(unknown)} that are not in {name!r} ({sorted(task_rates)})")
        task_rates = {t: float(rates.get(t, 0.0)) for t in task_rates}
    values = np.array([task_rates[t.name] for t in tasks], np.float64)
    if (values < 0).any() or values.sum() <= 0:
        raise ValueError(f"rates of {name!r} must be >= 0 with a positive sum, got {task_rates}")
    log.info("batches of %r: rates %s", name, {t: round(r / values.sum(), 4) for t, r in task_rates.items()})
    return BatchIterator(name, tasks, values, split=split, batch_size=batch_size, seed=seed,
                         sequence_lengths=lengths, shard_index=shard_index, num_shards=num_shards, shuffle=shuffle,
                         num_epochs=num_epochs, mlm_rate=mlm_rate)
