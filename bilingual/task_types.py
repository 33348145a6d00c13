"""The task types: one ``TaskType`` entry each, holding its batch layout, encoder views, loss and FLOPs.

Every user reads this table: the batch producer (``tasks.batching``), the steps (``bilingual.training.steps``),
the trainer's FLOP count, the benchmarks and the test fixtures. A new task type is one entry in ``TASK_TYPES``
(which stages train it is the trainer's ``STAGES``).

Batch layout: each array is declared by its dims and dtype. A dim is ``"batch"`` (rows of the batch),
``"num_negatives"`` (hard negatives per row) or a sequence-length key -- ``"text"``, ``"query"``,
``"passage"``, ``"negatives"``, ``"a"``, ``"b"``, the ``sequence_lengths`` of ``tasks.batching`` -- which
also names the example feature a view's sequences are read from. Ids are int32 padded with ``<pad>`` (id 1),
masks int32 (1 on real tokens, 0 on padding):

* ``mlm``: ``input_ids``, ``attention_mask``, ``segment_ids``, ``targets`` [B, Lt] int32, ``loss_weights``
  [B, Lt] float32; no views (the MLM step runs the encoder and head itself).
* ``pairs``: ``query_ids``, ``query_mask`` [B, Lq]; ``passage_ids``, ``passage_mask`` [B, Lp]; ``query_key``,
  ``passage_key`` [B, W] int32 (dim ``"key_words"``, W = 2): each text's identity key
  (``bilingual.text_identity``), which the losses compare to mask in-batch false negatives.
* ``retrieval``: as pairs plus ``negative_ids``, ``negative_mask`` [B, m, Ln] and ``negative_key`` [B, m, W].
* ``sts``: ``a_ids``, ``a_mask`` [B, La]; ``b_ids``, ``b_mask`` [B, Lb] with ``La == Lb``; ``score`` [B] float32.

Packed layout (``get(name, packed=True)``; ``bilingual.packing``): every view ``v`` of side ``s`` is two
blocks of whole texts instead of padded rows: ``v_ids``, ``v_segments`` [U, Rs, rs] int32 (``"pack_units"``,
``"<side>_rows"``, ``"<side>_row_length"``: rows at most the side's length) and ``v_long_ids``,
``v_long_segments`` [U, Ks, Ls] (``"<side>_long_rows"``, the side's length: rows for the texts longer than
``rs``; Ks = 0 where rs is the side's length), and ``v_lengths`` with the view's text dims (``[B]``,
negatives ``[B, m]``) int32, the framed length of each text. The texts, flattened in row-major order, are
split into ``U`` pack units of consecutive texts; in unit ``u`` the ``i``-th text carries segment id ``i + 1``
(0 = padding) in whichever of its unit's blocks it sits, which is the index of its segment. Scalars (STS
``score``) and text keys are as above.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import jax
import numpy as np

from bilingual import flops, losses
from bilingual.config import EncoderConfig
from bilingual.text_identity import KEY_WORDS

if TYPE_CHECKING:
    from bilingual.training.steps import StepConfig

I32, F32 = np.dtype(np.int32), np.dtype(np.float32)
SIZE_DIMS = ("batch", "num_negatives", "pack_units", "key_words")  # and the packed dims; others: length keys
ROWS_SUFFIX, ROW_LENGTH_SUFFIX, LONG_ROWS_SUFFIX = "_rows", "_row_length", "_long_rows"
PACKED_VIEW_FIELDS = ("ids", "segments", "lengths", "long_ids", "long_segments")  # a packed view's keys, in order


def is_size_dim(dim: str) -> bool:
    return dim in SIZE_DIMS or dim.endswith(ROWS_SUFFIX) or dim.endswith(ROW_LENGTH_SUFFIX)
EmbeddingLoss = Callable[[Mapping[str, jax.Array]], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True, eq=False)
class TaskType:
    """One task type.

    Attributes:
      name: the ``task_type`` string of its batches.
      arrays: batch key -> (dims, dtype); see the module docstring for the dims.
      views: contrastive types: encoder view -> (ids key, mask key), in the order the step encodes them;
        empty for MLM.
      loss: the ``bilingual.losses`` function of the type (for MLM the MLM step calls it on the head's logits).
      bind_loss: ``(loss, batch, step config) -> ({view: [n, H] float32} -> (loss, metrics))``, how a
        contrastive type feeds ``loss`` its views' embeddings; None for MLM.
      same_length: sequence-length keys that must be equal (STS: ``a`` and ``b``).
      packed: the packed layout (views are ``(ids, segments, lengths, long_ids, long_segments)`` keys, the
        ``PACKED_VIEW_FIELDS``); see the module docstring.
    """

    name: str
    arrays: Mapping[str, tuple[tuple[str, ...], np.dtype]]
    views: Mapping[str, tuple[str, str]]
    loss: Callable
    bind_loss: Optional[Callable[[Callable, Mapping, Any], EmbeddingLoss]] = None
    same_length: tuple[str, ...] = ()
    packed: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        """The batch keys, in declaration order."""
        return tuple(self.arrays)

    @property
    def sides(self) -> tuple[str, ...]:
        """The sequence-length keys of the batch (= the example's text features), in declaration order."""
        dims = (d for ds, _ in self.arrays.values() for d in ds if not is_size_dim(d))
        return tuple(dict.fromkeys(dims))

    @property
    def scalars(self) -> tuple[str, ...]:
        """Keys of the per-row values (dims ``("batch",)``, e.g. STS ``score``), read from the example feature
        of the same name."""
        in_views = {k for keys in self.views.values() for k in keys}
        return tuple(k for k, (dims, _) in self.arrays.items() if dims == ("batch",) and k not in in_views)

    @property
    def text_keys(self) -> dict[str, str]:
        """View -> the key of its texts' identity keys (``<view>_key``, ``[B, W]`` / ``[B, m, W]`` int32 from
        ``bilingual.text_identity``), for the views that carry them (pairs and retrieval)."""
        return {name: f"{name}_key" for name in self.views if f"{name}_key" in self.arrays}

    def view_sides(self) -> dict[str, tuple[str, bool]]:
        """View -> (its side, whether it is nested ``[B, m]`` texts per row, i.e. hard negatives)."""
        dims = {name: [d for k in keys for d in self.arrays[k][0]] for name, keys in self.views.items()}
        return {name: (next(d for d in ds if not is_size_dim(d)), "num_negatives" in ds) for name, ds in dims.items()}

    def packed_sizes(self, batch_size: int, lengths: Mapping[str, int], num_negatives: Optional[int],
                     units: int, packing) -> dict[str, int]:
        """The ``pack_units``, ``<side>_rows``, ``<side>_row_length`` and ``<side>_long_rows`` dims of packed
        batches of ``batch_size`` rows in ``units`` pack units under ``packing`` (a
        ``bilingual.packing.PackingConfig``); ValueError naming the gin key when the batch does not split into
        the units or a budget is missing."""
        sizes = {"pack_units": units}
        for side, nested in self.view_sides().values():
            texts = batch_size * ((num_negatives or 0) if nested else 1)
            if units < 1 or texts % units:
                raise ValueError(f"{self.name}: {texts} {side} texts per batch do not split into "
                                 f"data.options['packing']['units']={units} pack units")
            rows, row_length, long_rows = packing.block(side, texts // units, lengths[side])
            sizes.update({side + ROWS_SUFFIX: rows, side + ROW_LENGTH_SUFFIX: row_length,
                          side + LONG_ROWS_SUFFIX: long_rows})
        return sizes

    def check_lengths(self, lengths: Mapping[str, int]) -> None:
        """Raises ValueError when the ``same_length`` keys of ``lengths`` differ."""
        if len({lengths[k] for k in self.same_length}) > 1:
            raise ValueError(f"{self.name} batches use one length: set "
                             + " == ".join(f"sequence_lengths[{k!r}]" for k in self.same_length))

    def batch_shapes(self, batch_size: int, lengths: Mapping[str, int], num_negatives: Optional[int] = None,
                     packing=None) -> dict[str, jax.ShapeDtypeStruct]:
        """Key -> ``jax.ShapeDtypeStruct`` of a batch of ``batch_size`` rows (e.g. to compile a step ahead).

        ``lengths``: sequence-length key -> tokens (extra keys are ignored); ``num_negatives``: hard
        negatives per row, required by types with a ``num_negatives`` dim (retrieval). ``packing``: a
        ``bilingual.packing.PackingConfig`` for the packed layout (its ``units`` are the global batch's).
        """
        self.check_lengths(lengths)
        sizes = {**lengths, "batch": batch_size, "num_negatives": num_negatives, "key_words": KEY_WORDS}
        if self.packed:
            sizes.update(self.packed_sizes(batch_size, lengths, num_negatives, packing.global_units(), packing))
        missing = [d for dims, _ in self.arrays.values() for d in dims  # 0 is a size (no long rows)
                   if sizes.get(d) is None or (sizes[d] == 0 and not d.endswith(LONG_ROWS_SUFFIX))]
        if missing:
            raise ValueError(f"{self.name} batch shapes need {', '.join(dict.fromkeys(missing))}")
        return {k: jax.ShapeDtypeStruct(tuple(sizes[d] for d in dims), dtype)
                for k, (dims, dtype) in self.arrays.items()}

    def check_batch(self, batch: Mapping[str, Any], batch_size: int, lengths: Mapping[str, int],
                    sizes: Optional[Mapping[str, int]] = None) -> None:
        """Raises ValueError unless ``batch`` (arrays only) has exactly this entry's keys and dtypes, and
        shapes with ``batch_size`` rows and ``lengths`` tokens; ``num_negatives`` (and, without ``sizes``,
        the packed dims) are read off the batch."""
        if set(batch) != set(self.arrays):
            raise ValueError(f"a {self.name} batch has keys {sorted(batch)}; the table has {sorted(self.arrays)}")
        self.check_lengths(lengths)
        sizes = {**lengths, **(sizes or {}), "batch": batch_size, "key_words": KEY_WORDS}
        for key, (dims, dtype) in self.arrays.items():
            shape, got = tuple(np.shape(batch[key])), np.dtype(batch[key].dtype)
            if got != dtype or len(shape) != len(dims) or any(sizes.setdefault(d, n) != n for d, n in zip(dims, shape)):
                raise ValueError(f"{self.name} batch {key!r} is {got}{list(shape)}; the table has {dtype}{list(dims)} "
                                 f"with {sizes}")

    def embedding_loss(self, batch: Mapping[str, Any], config: StepConfig) -> EmbeddingLoss:
        """``{view: [n, H] float32 embeddings} -> (loss, metrics)`` for ``batch`` (contrastive types); with
        ``config.matryoshka_dims`` the weighted loss over those prefixes (``losses.matryoshka``)."""
        if self.bind_loss is None:
            raise ValueError(f"task type {self.name!r} has no embedding loss (its step computes {self.loss.__name__})")
        loss = self.bind_loss(self.loss, batch, config)
        if config.matryoshka_dims:
            loss = losses.matryoshka(loss, config.matryoshka_dims, config.matryoshka_weights)
        return loss

    def train_flops(self, model: EncoderConfig, config: StepConfig, batch: Mapping[str, Any]) -> float:
        """Matmul FLOPs of one train step on ``batch`` (key -> anything with ``.shape``, the global batch).

        3x the forward (forward + two backward matmuls); contrastive types with GradCache
        (``config.gradcache_chunks > 1``) add one forward; MLM adds its head at ``config.max_predictions``
        positions per row (0 = every position).
        """
        if not self.views:
            b, length = batch["input_ids"].shape
            positions = b * (config.max_predictions or length)
            return 3 * (flops.encoder_forward_flops(model, b, length) + flops.mlm_head_forward_flops(model, positions))
        factor = 4 if config.gradcache_chunks > 1 else 3
        ids_keys = [keys[0] for keys in self.views.values()]  # packed batches: their long rows too
        ids_keys += [k[:-len("_ids")] + "_long_ids" for k in ids_keys if k[:-len("_ids")] + "_long_ids" in batch]
        shapes = [batch[k].shape for k in ids_keys]
        return factor * sum(flops.encoder_forward_flops(model, math.prod(s[:-1]), s[-1]) for s in shapes)


def _ids_and_mask(prefix: str, *dims: str) -> dict[str, tuple[tuple[str, ...], np.dtype]]:
    return {f"{prefix}_ids": (dims, I32), f"{prefix}_mask": (dims, I32)}


def _keys(batch, *names):
    """The text keys of ``batch`` for views ``names`` as loss keyword arguments (none when the batch has none:
    shape-only batches of a benchmark, or ``StepConfig.mask_false_negatives = False``)."""
    return {f"{n}_keys": batch[f"{n}_key"] for n in names if f"{n}_key" in batch}


def _bind_pairs(loss, batch, config):
    keys = _keys(batch, "query", "passage") if config.mask_false_negatives else {}
    return lambda e: loss(e["query"], e["passage"], config.temperature, **keys)


def _bind_retrieval(loss, batch, config):
    batch_size, m = (batch["negative_lengths"] if "negative_lengths" in batch else batch["negative_ids"]).shape[:2]
    keys = _keys(batch, "query", "passage", "negative") if config.mask_false_negatives else {}
    return lambda e: loss(e["query"], e["passage"], e["negative"].reshape(batch_size, m, -1), config.temperature,
                          **keys)


def _bind_sts(loss, batch, config):
    return lambda e: loss(e["a"], e["b"], batch["score"], config.sts_loss)


def _text_key(view: str, *dims: str) -> dict[str, tuple[tuple[str, ...], np.dtype]]:
    return {f"{view}_key": ((*dims, "key_words"), I32)}


_PAIR_ARRAYS = {**_ids_and_mask("query", "batch", "query"), **_ids_and_mask("passage", "batch", "passage"),
                **_text_key("query", "batch"), **_text_key("passage", "batch")}
_PAIR_VIEWS = {"query": ("query_ids", "query_mask"), "passage": ("passage_ids", "passage_mask")}

TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (
    TaskType("mlm", {"input_ids": (("batch", "text"), I32), "attention_mask": (("batch", "text"), I32),
                     "segment_ids": (("batch", "text"), I32), "targets": (("batch", "text"), I32),
                     "loss_weights": (("batch", "text"), F32)},
             views={}, loss=losses.mlm_loss),
    TaskType("pairs", _PAIR_ARRAYS, _PAIR_VIEWS, losses.bidirectional_info_nce, _bind_pairs),
    TaskType("retrieval", {**_PAIR_ARRAYS, **_ids_and_mask("negative", "batch", "num_negatives", "negatives"),
                           **_text_key("negative", "batch", "num_negatives")},
             {**_PAIR_VIEWS, "negative": ("negative_ids", "negative_mask")}, losses.info_nce_with_negatives,
             _bind_retrieval),
    TaskType("sts", {**_ids_and_mask("a", "batch", "a"), **_ids_and_mask("b", "batch", "b"),
                     "score": (("batch",), F32)},
             {"a": ("a_ids", "a_mask"), "b": ("b_ids", "b_mask")}, losses.sts_loss, _bind_sts, same_length=("a", "b")),
)}


def _packed(entry: TaskType) -> TaskType:
    """The packed layout of a contrastive entry (module docstring): per view ids and segments
    ``[pack_units, <side>_rows, <side>_row_length]``, long ids and segments ``[pack_units, <side>_long_rows,
    side]`` and the texts' lengths with the view's text dims."""
    arrays, views = {}, {}
    padded_view_keys = {k for keys in entry.views.values() for k in keys}
    for name, (ids_key, _) in entry.views.items():
        dims = entry.arrays[ids_key][0]
        side, prefix = dims[-1], ids_key[:-len("_ids")]
        block = ("pack_units", side + ROWS_SUFFIX, side + ROW_LENGTH_SUFFIX)
        long_block = ("pack_units", side + LONG_ROWS_SUFFIX, side)
        keys = tuple(f"{prefix}_{field}" for field in PACKED_VIEW_FIELDS)
        arrays.update({keys[0]: (block, I32), keys[1]: (block, I32), keys[2]: (dims[:-1], I32),
                       keys[3]: (long_block, I32), keys[4]: (long_block, I32)})
        views[name] = keys
    arrays.update({k: v for k, v in entry.arrays.items() if k not in padded_view_keys})
    return dataclasses.replace(entry, arrays=arrays, views=views, packed=True)


PACKED_TASK_TYPES: dict[str, TaskType] = {name: _packed(t) for name, t in TASK_TYPES.items() if t.views}


def get(name: str, packed: bool = False) -> TaskType:
    """The entry of task type ``name`` (its packed layout with ``packed``); ValueError naming the known types
    otherwise."""
    table = PACKED_TASK_TYPES if packed else TASK_TYPES
    if name not in table:
        kind = "packed " if packed else ""
        raise ValueError(f"unknown {kind}task type {name!r}; expected one of {tuple(table)}")
    return table[name]


def layout_of(name: str, batch: Mapping[str, Any]) -> TaskType:
    """The entry (padded or packed) whose keys ``batch`` carries (extra keys are ignored)."""
    packed = PACKED_TASK_TYPES.get(name)
    if packed is not None and all(k in batch for k in packed.arrays):
        return packed
    return get(name)
