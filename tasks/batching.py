"""The trainer's data entry point: deterministic, resumable, host-sharded, single-task batches.

    it = make_batch_iterator("multitask_de", split="train", batch_size=global_batch // jax.process_count(),
                             seed=0, sequence_lengths={"query": 64, "passage": 256, "negatives": 256},
                             shard_index=jax.process_index(), num_shards=jax.process_count(), num_workers=4)
    batch = next(it)                  # dict of numpy arrays + "task" and "task_type" strings
    state = it.get_state()            # JSON-serialisable, this host's own; save it with the checkpoint
    it.set_state(state)               # the next batches equal those of the uninterrupted run

Batch contract: the ``bilingual.task_types`` entry of the batch's type (every batch is checked against it).
In short (int32 unless noted; masks 1 on real tokens, 0 on padding; every sequence ``<s> ... </s>`` followed
by ``<pad>`` (id 1); arrays always have the configured shapes, so the trainer compiles once per type):

* ``mlm``: ``input_ids``, ``attention_mask``, ``segment_ids`` [B, L] (packed pieces numbered 1..k per row,
  0 = padding), ``targets`` [B, L] (original ids), ``loss_weights`` [B, L] float32 (1.0 on every selected
  position: masked, randomly replaced and unchanged alike). ``L = sequence_lengths["text"]``.
* ``pairs``: ``query_ids``, ``query_mask`` [B, Lq]; ``passage_ids``, ``passage_mask`` [B, Lp]; ``query_key``,
  ``passage_key`` [B, 2] (the texts' identity keys, ``bilingual.text_identity``: equal texts, equal keys).
* ``retrieval``: as pairs plus ``negative_ids``, ``negative_mask`` [B, m, Ln] and ``negative_key`` [B, m, 2].
* ``sts``: ``a_ids``, ``a_mask``, ``b_ids``, ``b_mask`` [B, La=Lb]; ``score`` [B] float32.

Semantics:

* Every batch comes from ONE task. At step ``t`` the task is drawn with probability proportional to its rate
  from a generator seeded by ``(seed, t)`` only, so every host draws the same task at the same step (the global
  batch is single-task) and a restored iterator draws the same tasks as an uninterrupted one.
* Each task is read by index (``tasks.records``: every source is record-addressable) in the seeded order of
  ``tasks.batch_jobs.ExampleOrder``: epoch after epoch, each a seeded permutation, hosts taking disjoint
  positions that together cover every epoch. A host's position in a task is one number (plus, for MLM, the
  tokens of the current document already packed), so a restore seeks straight to it: it costs the same at
  example 10 and at example 10^7 (``benchmarks/input_pipeline.py`` measures it).
* Why index-based reading in ``grain`` worker processes rather than tf.data: the per-example work
  (parsing, tokenising, padding) is Python and numpy, which threads cannot run in parallel (the GIL), so
  tf.data's parallel map does not scale with cores while processes do; and tf.data's iterator checkpoints
  hold the shuffle buffer and cannot save ``from_generator`` sources. The tasks stay seqio tasks: their
  source gives the records, their output features the vocabulary, and ``records_of`` checks that their
  preprocessors are the ones this batcher applies in Python (``tasks.preprocessors.tokenize``, tested equal).
* Parallelism: ``num_workers`` processes per task build contrastive batches and tokenise MLM documents
  (``tasks.batch_jobs``: pure functions of an index, so the batches are the same for any worker count);
  MLM packing and masking, which are sequential and cheap, run in the consuming process; a background thread
  keeps ``prefetch`` finished batches ready, so the next batch waits when the step returns.
* MLM masking uses a generator seeded by ``(seed, step, shard_index)``.
* The state is this host's own (``get_state`` names its shard); the trainer saves one per process
  (``bilingual.artifacts``) and a state restores only onto the same shard of the same number of hosts.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import weakref
from typing import Any, Mapping, Optional

import gin
import grain
import jax
import numpy as np
import seqio

from tasks import tf_setup  # noqa: F401  (TensorFlow on the CPU only)

from bilingual import packing as packer
from bilingual import task_types
from bilingual.config import ConfigError
from tasks import batch_jobs, mixtures, mlm, records
from tasks import preprocessors as pp

log = logging.getLogger(__name__)
STATE_FORMAT = "bilingual.batching/2"
POSITION_FIELDS = ("position", "offset")  # a task's position in a saved state
DOCUMENT_CHUNK = 128  # MLM documents tokenised per worker job
ENDLESS_JOBS = 2 ** 50  # length of an endless job sequence (grain datasets have a length)


def _malformed_fields(state: dict) -> dict[str, Any]:
    """``{field: value}`` of the fields of a saved iterator state that do not have the form ``get_state`` writes."""
    def count(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    bad = {} if count(state.get("step")) else {"step": state.get("step")}
    if not isinstance(state.get("tasks"), dict):
        return {**bad, "tasks": state.get("tasks")}
    return {**bad, **{f"tasks.{name}": p for name, p in state["tasks"].items()
                      if not isinstance(p, dict) or not all(count(p.get(k)) for k in POSITION_FIELDS)}}


# ------------------------------------------------------------------------------------------------ records

_RECORDS: "weakref.WeakKeyDictionary[seqio.Task, dict]" = weakref.WeakKeyDictionary()


def records_of(task: seqio.Task, split: str):
    """The records of ``task``'s ``split`` (``len`` and indexing, ``tasks.records``).

    Sources of this project give them directly (``source.records(split)``; a TFDS dataset prepared as
    ArrayRecord too). A source whose ``records`` returns None (a TFDS dataset prepared as tfrecord) and any
    other seqio source (a user's ``seqio.DataSource``) is read once through its tf.data pipeline and the
    task's preprocessors up to tokenisation, and held in memory (logged); prepare large ones as ArrayRecord
    instead (``launch.prepare_data``, ``tfds build --file_format=array_record``). The task's last
    preprocessor must be ``tasks.preprocessors.tokenize``, which the batcher applies itself
    (``tasks.batch_jobs``).
    """
    cache = _RECORDS.setdefault(task, {})
    if split in cache:
        return cache[split]
    if not task.preprocessors or task.preprocessors[-1] is not pp.tokenize:
        raise ConfigError(f"task {task.name!r}: its preprocessors must end with tasks.preprocessors.tokenize "
                          f"(register it with tasks.registry), got {task.preprocessors}")
    rows = task.source.records(split) if hasattr(task.source, "records") else None
    if rows is None:
        dataset = task.source.get_dataset(split=split, shuffle=False)
        for preprocessor in task.preprocessors[:-1]:
            dataset = preprocessor(dataset)
        rows = records.ListRecords([_python_row(row) for row in dataset.as_numpy_iterator()])
        log.info("task %r split %r: %d rows read into memory (%s has no random access)", task.name, split,
                 len(rows), type(task.source).__name__)
    cache[split] = rows
    return rows


def _python_row(row: Mapping[str, Any]) -> dict[str, Any]:
    def value(v):
        if isinstance(v, bytes):
            return v.decode("utf-8")
        if isinstance(v, np.ndarray) and v.dtype == object:
            return [value(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v
    return {k: value(v) for k, v in row.items()}


# ------------------------------------------------------------------------------------------ task streams

_OPEN_ITERATORS: "weakref.WeakSet[BatchIterator]" = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
    """Stops prefetch threads and worker processes before interpreter shutdown."""
    for it in list(_OPEN_ITERATORS):
        it.close()


def _mark_flags_parsed() -> None:
    """grain's worker processes read absl flags; a library caller (pytest, a notebook) has not parsed any."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class TaskStream:
    """One task's examples on one host from a position on: contrastive batches or MLM documents, built by a
    ``grain`` pipeline of ``tasks.batch_jobs`` jobs (in ``num_workers`` processes, or in this process).

    The position is ``(position, offset)``: the next unread host position and, for MLM, the tokens of that
    document already packed.
    """

    def __init__(self, task: seqio.Task, task_type: str, split: str, order: batch_jobs.ExampleOrder,
                 lengths: Mapping[str, int], batch_size: int, num_workers: int, worker_buffer: int,
                 packing: Optional[tuple] = None, dedup_window: int = 1):
        self.task, self.task_type, self.split, self.order = task, task_type, split, order
        self.lengths, self.batch_size = dict(lengths), batch_size
        self.num_workers, self.worker_buffer = num_workers, worker_buffer
        self.packing = packing  # None or (units, ((side, rows per unit), ...)) of this host's batches
        self.dedup_window = dedup_window
        self.position, self.offset = 0, 0
        self._iterator = None
        self._documents: list[np.ndarray] = []  # MLM: tokenised documents from `position` on
        self._document_start = 0  # position of self._documents[0]

    def get_state(self) -> dict[str, int]:
        return {"position": self.position, "offset": self.offset, "epoch": self.order.epoch(self.position)}

    def set_state(self, state: Mapping[str, int]) -> None:
        self.close()
        self.position, self.offset = int(state["position"]), int(state["offset"])

    def close(self) -> None:
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator, self._documents = None, []

    def _open(self) -> None:
        """The job pipeline from the current position (constant time wherever that is)."""
        if self.order.limit == 0 or self.order.num_records == 0:
            shard = "" if self.order.num_shards == 1 else \
                f" on shard {self.order.shard_index} of {self.order.num_shards}"
            raise ValueError(f"task {self.task.name!r} split {self.split!r} yields no examples{shard}")
        vocab = next(iter(self.task.output_features.values())).vocabulary
        encoder = batch_jobs.TextEncoder(vocab.path)
        records_ = records_of(self.task, self.split)
        limit = self.order.limit
        if self.task_type == "mlm":
            job = batch_jobs.DocumentJob(records_, self.order, encoder, DOCUMENT_CHUNK, self.position)
            jobs = ENDLESS_JOBS if limit is None else -(-(limit - self.position) // DOCUMENT_CHUNK)
            self._documents, self._document_start = [], self.position
        else:
            spec = task_types.get(self.task_type, packed=self.packing is not None)
            sides = spec.view_sides()
            views = tuple(batch_jobs.View(keys[0], keys[1], *sides[name], keys[2] if spec.packed else None,
                                          spec.text_keys.get(name), keys[3:] if spec.packed else None)
                          for name, keys in spec.views.items())
            scalars = tuple((key, np.dtype(spec.arrays[key][1]).name) for key in spec.scalars)
            job = batch_jobs.ContrastiveJob(self.task.name, records_, self.order, encoder, self.batch_size,
                                            self.position, views, scalars, tuple(sorted(self.lengths.items())),
                                            self.packing, self.dedup_window)
            jobs = ENDLESS_JOBS if limit is None else (limit - self.position) // self.batch_size
        # one reading thread and a short read-ahead: grain's defaults (16 threads, 500 jobs ahead) make the
        # threads of a worker fight over the GIL and spend CPU on far-future jobs (measured: 7x slower)
        dataset = grain.MapDataset.range(max(jobs, 0)).map(job).to_iter_dataset(
            grain.ReadOptions(num_threads=1, prefetch_buffer_size=self.worker_buffer))
        if self.num_workers:
            _mark_flags_parsed()
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.num_workers, per_worker_buffer_size=self.worker_buffer),
                worker_init_fn=batch_jobs.quiet_worker)
        self._iterator = iter(dataset)

    def _pull(self):
        if self._iterator is None:
            self._open()
        return next(self._iterator)  # StopIteration after num_epochs

    # contrastive ------------------------------------------------------------------------------------------
    def next_batch(self) -> dict[str, np.ndarray]:
        batch = self._pull()
        self.position += self.batch_size
        return batch

    # MLM documents ---------------------------------------------------------------------------------------
    def _document(self) -> np.ndarray:
        while self.position - self._document_start >= len(self._documents):
            if self._iterator is None:
                self._open()
            self._document_start += len(self._documents)
            self._documents = batch_jobs.split_documents(self._pull())
        return self._documents[self.position - self._document_start]

    def document_rest(self) -> np.ndarray:
        """The not yet packed tokens of the current MLM document (empty documents are skipped)."""
        while True:
            ids = self._document()
            if self.offset < len(ids):
                return ids[self.offset:]
            self.position, self.offset = self.position + 1, 0

    def consume_tokens(self, n: int) -> None:
        self.offset += n
        if self.offset >= len(self._document()):
            self.position, self.offset = self.position + 1, 0


# --------------------------------------------------------------------------------------------- batches


class BatchIterator:
    """Single-task batches from a task or mixture; see the module docstring. Build with ``make_batch_iterator``."""

    def __init__(self, name: str, tasks: list[seqio.Task], rates: np.ndarray, *, split: str, batch_size: int,
                 seed: int, sequence_lengths: Mapping[str, int], shard_index: int, num_shards: int,
                 shuffle: bool, num_epochs: int | None, mlm_rate: float, num_workers: int = 0,
                 worker_buffer: int = 2, prefetch: int = 2, packing: Optional[packer.PackingConfig] = None,
                 dedup_window: int = 1):
        self.name, self.tasks, self.split = name, tasks, split
        self.probabilities = rates / rates.sum()
        self.batch_size, self.seed, self.lengths = batch_size, seed, dict(sequence_lengths)
        self.shard_index, self.num_shards = shard_index, num_shards
        self.shuffle, self.num_epochs, self.mlm_rate = shuffle, num_epochs, mlm_rate
        self.num_workers, self.worker_buffer, self.prefetch = num_workers, worker_buffer, prefetch
        self.task_types = {t.name: pp.task_type_of(t.output_features) for t in tasks}
        self.packing, self.dedup_window = packing, dedup_window
        if packing is not None:  # fail on a config that cannot work before anything is read or compiled
            units = packing.local_units(num_shards)
            for task_type in {t for t in self.task_types.values() if t != "mlm"}:
                task_types.get(task_type, packed=True).packed_sizes(batch_size, self.lengths, 1, units, packing)
        self.step = 0
        self._streams: dict[str, TaskStream] = {}
        self._saved_positions: dict[str, dict] = {}
        self._state = self._current_state()  # the state after the last batch handed out
        self._queue: Optional[queue.Queue] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        _OPEN_ITERATORS.add(self)

    # state ----------------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "name": self.name, "split": self.split, "seed": self.seed,
                "batch_size": self.batch_size, "shard_index": self.shard_index, "num_shards": self.num_shards,
                "shuffle": self.shuffle, "sequence_lengths": dict(sorted(self.lengths.items())),
                **({"dedup_window": self.dedup_window} if self.dedup_window > 1 else {})}

    def _current_state(self) -> dict[str, Any]:
        positions = dict(self._saved_positions)
        positions.update({name: s.get_state() for name, s in self._streams.items()})
        sizes = {name: len(records_of(t, self.split)) for name, t in ((t.name, t) for t in self.tasks)
                 if name in positions}
        return {**self._identity(), "step": self.step, "tasks": dict(sorted(positions.items())),
                "records": dict(sorted(sizes.items()))}

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position of this host after the last batch ``next`` returned: the step and each
        task's ``(position, offset)`` (with its epoch and record count, for reading)."""
        return self._state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores a ``get_state`` result of the same host; the identity (name, seed, shard of how many
        hosts, batch size, ...) and each task's record count must match."""
        self._stop_prefetch()
        malformed = _malformed_fields(state) if isinstance(state, dict) else {"(the state)": state}
        if malformed:
            raise ValueError(f"data iterator state has malformed fields {malformed} (a JSON object whose 'step' is "
                             f"an integer >= 0 and whose 'tasks' map names to {POSITION_FIELDS} integers >= 0)")
        identity = self._identity()
        mismatched = {k: (state.get(k), identity.get(k)) for k in {*identity, "dedup_window"}
                      if state.get(k) != identity.get(k)}
        if mismatched:
            raise ValueError(f"data iterator state does not match this iterator: {mismatched} (saved, current)")
        unknown = set(state["tasks"]) - set(self.task_types)
        if unknown:
            raise ValueError(f"data iterator state names tasks {sorted(unknown)} not in {self.name!r}")
        by_name = {t.name: t for t in self.tasks}
        changed = {name: (n, len(records_of(by_name[name], self.split)))
                   for name, n in dict(state.get("records") or {}).items()
                   if name in by_name and n != len(records_of(by_name[name], self.split))}
        if changed:
            raise ValueError(f"the data changed since the state was saved: records per task {changed} "
                             "(saved, now); a position means another example now")
        for stream in self._streams.values():
            stream.close()
        self.step = state["step"]
        self._streams = {}
        self._saved_positions = {k: {f: int(v[f]) for f in POSITION_FIELDS} for k, v in state["tasks"].items()}
        self._state = self._current_state()

    # batches --------------------------------------------------------------------------------------------
    def _stream(self, task: seqio.Task) -> TaskStream:
        if task.name not in self._streams:
            order = batch_jobs.ExampleOrder(len(records_of(task, self.split)), self.seed, task.name,
                                            self.shard_index, self.num_shards, self.shuffle, self.num_epochs)
            stream = TaskStream(task, self.task_types[task.name], self.split, order, self.lengths, self.batch_size,
                                self.num_workers, self.worker_buffer, self._packing_of(task), self.dedup_window)
            if task.name in self._saved_positions:
                stream.set_state(self._saved_positions.pop(task.name))
            self._streams[task.name] = stream
        return self._streams[task.name]

    def packed_sizes(self, task: seqio.Task) -> Optional[dict[str, int]]:
        """The packed dims (``pack_units``, ``<side>_rows``, ``<side>_row_length``, ``<side>_long_rows``) of
        ``task``'s batches on this host; None when they are padded (MLM, or no ``packing``)."""
        task_type = self.task_types[task.name]
        if self.packing is None or task_type == "mlm":
            return None
        spec = task_types.get(task_type, packed=True)
        negatives = None
        if any(nested for _, nested in spec.view_sides().values()):
            rows = records_of(task, self.split)
            negatives = len(rows[0]["negatives"]) if len(rows) else 1
        return spec.packed_sizes(self.batch_size, self.lengths, negatives,
                                 self.packing.local_units(self.num_shards), self.packing)

    def _packing_of(self, task: seqio.Task) -> Optional[tuple]:
        sizes = self.packed_sizes(task)
        if sizes is None:
            return None
        sides = sorted({side for side, _ in task_types.get(self.task_types[task.name], packed=True)
                       .view_sides().values()})
        return sizes["pack_units"], tuple((side, sizes[side + task_types.ROWS_SUFFIX],
                                           sizes[side + task_types.ROW_LENGTH_SUFFIX],
                                           sizes[side + task_types.LONG_ROWS_SUFFIX]) for side in sides)

    def task_for_step(self, step: int) -> seqio.Task:
        """The task of batch ``step`` (the same on every host)."""
        rng = np.random.default_rng([self.seed, step, 0])
        return self.tasks[int(rng.choice(len(self.tasks), p=self.probabilities))]

    def _produce(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The next batch and the state after it."""
        task = self.task_for_step(self.step)
        task_type = self.task_types[task.name]
        stream = self._stream(task)
        if task_type == "mlm":
            vocab = next(iter(task.output_features.values())).vocabulary
            rng = np.random.default_rng([self.seed, self.step, 1, self.shard_index])
            batch = self._mlm_batch(stream, vocab, rng)
            task_types.get(task_type).check_batch(batch, self.batch_size, self.lengths)
        else:
            batch = stream.next_batch()
            packed = stream.packing is not None
            spec = task_types.get(task_type, packed=packed)
            spec.check_batch(batch, self.batch_size, self.lengths, self.packed_sizes(task) if packed else None)
            batch = {key: batch[key] for key in spec.keys}  # the table's order
        self.step += 1
        batch["task"], batch["task_type"] = task.name, task_type
        return batch, self._current_state()

    def _mlm_batch(self, stream: TaskStream, vocab, rng: np.random.Generator) -> dict[str, Any]:
        length = self.lengths["text"]
        rows = [mlm.fill_row(stream.document_rest, stream.consume_tokens, length, vocab.bos_id, vocab.eos_id)
                for _ in range(self.batch_size)]
        ids, segments = mlm.pack_rows(rows, length, vocab.pad_id)
        masked = mlm.whole_word_mask(ids, vocab.word_start, rng, rate=self.mlm_rate, mask_id=vocab.mask_id,
                                     num_special=vocab.num_special_tokens, vocab_size=vocab.vocab_size)
        return {"input_ids": masked["input_ids"], "attention_mask": (segments > 0).astype(np.int32),
                "segment_ids": segments, "targets": masked["targets"], "loss_weights": masked["loss_weights"]}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        if self.prefetch < 1:
            batch, self._state = self._produce()
            return batch
        if self._thread is None:
            self._start_prefetch()
        kind, value, state = self._queue.get()
        if kind == "error":
            self._stop_prefetch()
            raise value
        self._state = state
        return value

    # prefetch -------------------------------------------------------------------------------------------
    def _start_prefetch(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._prefetch_loop, args=(self._queue, self._stop),
                                        name=f"batches-{self.name}", daemon=True)
        self._thread.start()

    def _prefetch_loop(self, out: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                item = ("batch", *self._produce())
            except BaseException as err:  # handed to the consumer (StopIteration included)
                item = ("error", err, None)
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[0] == "error":
                return

    def _stop_prefetch(self) -> None:
        """Stops the prefetch thread and rewinds to the state after the last batch handed out."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread, self._queue = None, None
        consumed = self._state
        for stream in self._streams.values():
            stream.close()
        self.step, self._streams = consumed["step"], {}
        self._saved_positions = {k: {f: v[f] for f in POSITION_FIELDS} for k, v in consumed["tasks"].items()}

    def close(self) -> None:
        """Stops the prefetch thread and the worker processes; the state is kept (reading again resumes)."""
        self._stop_prefetch()
        for stream in self._streams.values():
            stream.close()

    def __enter__(self) -> "BatchIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def batch_shapes(task_type: str, batch_size: int, sequence_lengths: Mapping[str, int] | None = None,
                 num_negatives: int | None = None, packing=None) -> dict[str, jax.ShapeDtypeStruct]:
    """``task_types.get(task_type).batch_shapes`` with the default sequence lengths filled in: key ->
    ``jax.ShapeDtypeStruct`` of a batch (e.g. to lower/compile a step ahead of time). ``num_negatives`` is
    required for retrieval (the task's registered count). ``packing`` (a ``PackingConfig`` or the
    ``data.options['packing']`` dict): the packed layout of contrastive types, ``batch_size`` global."""
    lengths = pp.sequence_lengths_with_defaults(sequence_lengths)
    packing = packer.PackingConfig.from_options(packing)
    packed = packing is not None and task_type != "mlm"
    return task_types.get(task_type, packed=packed).batch_shapes(batch_size, lengths, num_negatives,
                                                                 packing if packed else None)


@gin.configurable
def make_batch_iterator(name: str, split: str = "train", batch_size: int = 32, seed: int = 0, *,
                        sequence_lengths: Mapping[str, int] | None = None, shard_index: int = 0,
                        num_shards: int = 1, rates: Mapping[str, float] | None = None, shuffle: bool = True,
                        num_epochs: int | None = None, mlm_rate: float = 0.3, num_workers: int = 0,
                        worker_buffer: int = 2, prefetch: int = 2,
                        packing: Mapping[str, Any] | None = None, dedup_window: int = 1) -> BatchIterator:
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
      num_workers: input worker processes per task (0: in this process). The batches are the same for
        every value; ``benchmarks/input_pipeline.py`` measures the rate per worker.
      worker_buffer: finished jobs (batches, MLM document chunks) each worker keeps ready.
      prefetch: finished batches a background thread keeps ready (0: none, batches are built in ``next``).
      packing: None (contrastive batches padded, one text per row) or ``{"tokens_per_text": {side: tokens},
        "units": n}``: pack every side's texts whole into fixed-shape blocks (``bilingual.packing.
        PackingConfig``; the packed layout of ``bilingual.task_types``). ``units`` counts the global batch's
        pack units; the host's batch holds ``units / num_shards`` of them.
      dedup_window: 1 (default: batches take consecutive positions) or W > 1: each window of W
        consecutive batches of a pairs / retrieval task is re-dealt so that examples sharing a text go to
        different batches where they can (``tasks.batch_jobs.dedup_deal``; per host: rows of two hosts are
        not compared). The losses mask what remains (``bilingual.losses.false_negatives``); saved in the
        state's identity.

    Returns:
      A ``BatchIterator`` (``next()``, ``get_state()``, ``set_state()``, ``task_for_step(step)``, ``close()``).

    Gin-configurable (e.g. ``make_batch_iterator.sequence_lengths = {"text": 512}``); arguments the caller
    passes explicitly win over bindings.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(dedup_window, int) or isinstance(dedup_window, bool) or dedup_window < 1:
        raise ValueError(f"data.options['dedup_window'] must be an int >= 1, got {dedup_window!r}")
    if num_workers < 0 or worker_buffer < 1 or prefetch < 0:
        raise ValueError(f"num_workers={num_workers} and prefetch={prefetch} must be >= 0, worker_buffer="
                         f"{worker_buffer} >= 1")
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
                         num_epochs=num_epochs, mlm_rate=mlm_rate, num_workers=num_workers,
                         worker_buffer=worker_buffer, prefetch=prefetch,
                         packing=packer.PackingConfig.from_options(packing), dedup_window=dedup_window)
