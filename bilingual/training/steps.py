"""Train steps per task type, and their sharded compilation.

A step is ``(state, batch, rng) -> (state, metrics)``. ``batch`` is a dict of arrays in the layout of its
``bilingual.task_types`` entry (keys, shapes, dtypes, views, loss), sharded over the batch axes of the mesh.
One compiled step per task type: the multi-task stage keeps a dict of them and picks by the batch's
``task_type``.

* ``mlm``: cross-entropy over every selected position (``loss_weights``); logits are computed only at
  the ``max_predictions`` highest-weight positions of each row (a count of weighted positions beyond that
  is reported as ``mlm_dropped``, and is 0 when ``max_predictions`` is large enough).
* ``pairs``: bi-directional InfoNCE over the global batch.
* ``retrieval``: InfoNCE with hard negatives (``negative_ids [B, m, L]``) plus the reverse direction.
* ``sts``: negative Pearson (or MSE, the ablation) between cosine and gold score.

Contrastive steps use GradCache when ``gradcache_chunks > 1`` (``bilingual.gradcache``).

Contrastive batches come padded (one text per row) or packed (``bilingual.packing``: blocks of whole texts
with segment ids, the packed layout of ``bilingual.task_types``); the step reads the layout off the batch's
keys. A packed view is encoded once per block with segment-restricted attention and pooled per segment
(``modeling.segment_mean_pool``), so the loss sees the same ``[n, H]`` embeddings in the same order as for
padded rows; GradCache chunks and batch shards split the leading pack-unit axis.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from bilingual import gradcache, losses, task_types
from bilingual.config import ConfigError
from bilingual.modeling import JinaBert, JinaBertForMaskedLM, segment_mean_pool


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Loss settings shared by the steps (TRAINING.md; temperature 0.05 is ours to confirm)."""

    temperature: float = losses.DEFAULT_TEMPERATURE
    sts_loss: str = "pearson"
    gradcache_chunks: int = 1
    max_predictions: int = 0  # MLM positions with logits per row; 0 = the whole row
    dropout: bool = True
    mask_false_negatives: bool = True  # mask in-batch texts equal to the positive (the batch's *_key arrays)
    # Matryoshka (losses.matryoshka): the contrastive and STS losses also on these embedding prefixes, weighted
    # (default 1 each); e.g. (768, 512, 256, 128, 64). Empty: the full embedding only.
    matryoshka_dims: tuple = ()
    matryoshka_weights: tuple = ()

    def __post_init__(self):  # gin gives lists; keep the config hashable
        object.__setattr__(self, "matryoshka_dims", tuple(self.matryoshka_dims))
        object.__setattr__(self, "matryoshka_weights", tuple(self.matryoshka_weights))

    def check_matryoshka(self, hidden_size: int) -> None:
        """ConfigError naming the gin key unless the Matryoshka sizes are distinct ints in ``[1, hidden_size]``
        and the weights (if given) are as many non-negative numbers."""
        dims, weights = self.matryoshka_dims, self.matryoshka_weights
        bad = [d for d in dims if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= hidden_size]
        if bad or len(set(dims)) != len(dims):
            raise ConfigError(f"StepConfig.matryoshka_dims={list(dims)}: expected distinct ints from 1 to the "
                              f"hidden size {hidden_size}" + (f" (not {bad})" if bad else " (repeated)"))
        if weights and (len(weights) != len(dims) or any(not isinstance(w, (int, float)) or w < 0 for w in weights)):
            raise ConfigError(f"StepConfig.matryoshka_weights={list(weights)}: expected {len(dims)} numbers >= 0, "
                              f"one per StepConfig.matryoshka_dims={list(dims)}")


def make_embed_fn(model: JinaBert, dropout: bool):
    """``(params, inputs, rng) -> [n, H]`` mean-pooled float32 embeddings; ``inputs`` is ``{"ids", "mask"}``
    ``[n, L]`` (padded rows) or packed: ``{"ids", "segments"}`` ``[u, R, r]`` (rows), ``{"long_ids",
    "long_segments"}`` ``[u, K, L]`` (long rows, K may be 0) of ``u`` pack units and ``"lengths"`` ``[u, T]``
    of their texts; ``n = u * T``, unit-major. Each block is one encoder call (the long one a second, with
    its own dropout key); a text's segment sits in one of them, so pooling over both is its mean."""

    def encode(params, ids, segments, rng):
        units, rows, length = ids.shape
        segments = segments.reshape(units * rows, length)
        out = model.apply({"params": params}, ids.reshape(units * rows, length), (segments > 0).astype(jnp.int32),
                          segment_ids=segments, deterministic=not dropout, rngs={"dropout": rng})
        return out.last_hidden_state.reshape(units, rows * length, -1)

    def embed(params, inputs, rng):
        if "segments" not in inputs:
            out = model.apply({"params": params}, inputs["ids"], inputs["mask"], deterministic=not dropout,
                              rngs={"dropout": rng})
            return out.embedding
        units, texts = inputs["lengths"].shape
        hidden = encode(params, inputs["ids"], inputs["segments"], rng)
        segments = inputs["segments"].reshape(units, -1)
        if inputs["long_ids"].shape[1]:
            long_hidden = encode(params, inputs["long_ids"], inputs["long_segments"], jax.random.fold_in(rng, 1))
            hidden = jnp.concatenate([hidden, long_hidden.astype(hidden.dtype)], axis=1)
            segments = jnp.concatenate([segments, inputs["long_segments"].reshape(units, -1)], axis=1)
        pooled = jax.vmap(segment_mean_pool, in_axes=(0, 0, None))(hidden, segments, texts)
        return pooled.reshape(units * texts, -1)

    return embed


def contrastive_views(task_type: str, batch) -> dict:
    """The encoder inputs of a contrastive batch, view -> arrays. Padded: ``{"ids", "mask"}`` ``[n, L]`` int32,
    the view's arrays flattened to rows (retrieval's ``[B, m, Ln]`` negatives to ``[B * m, Ln]``). Packed:
    ``{"ids", "segments"}`` ``[U, R, r]``, ``{"long_ids", "long_segments"}`` ``[U, K, L]`` and ``{"lengths"}``
    ``[U, n / U]`` (``task_types`` packed layout)."""
    spec = task_types.layout_of(task_type, batch)
    views = {}
    for name, keys in spec.views.items():
        if spec.packed:
            units = batch[keys[0]].shape[0]
            views[name] = {field: batch[key] for field, key in zip(task_types.PACKED_VIEW_FIELDS, keys)}
            views[name]["lengths"] = views[name]["lengths"].reshape((units, -1))
            continue
        ids, mask = batch[keys[0]], batch[keys[1]]
        views[name] = {"ids": ids.reshape((-1, ids.shape[-1])), "mask": mask.reshape((-1, mask.shape[-1]))}
    return views


def packed_batch_error(task_type: str, batch_shapes, groups: int, chunks: int):
    """None, or why a packed batch of these (global) shapes cannot be split over ``groups`` batch shards x
    ``chunks`` GradCache chunks (its pack units must be a multiple of both), naming the gin key. Task types
    outside the table (a fine-tuning head's batches) are never packed."""
    if task_type not in task_types.TASK_TYPES:
        return None
    spec = task_types.layout_of(task_type, batch_shapes)
    if not spec.packed:
        return None
    units = batch_shapes[next(iter(spec.views.values()))[0]].shape[0]
    need = groups * max(chunks, 1)
    if units % need:
        return (f"data.options['packing']['units']={units}: a packed {task_type} batch must split into "
                f"StepConfig.gradcache_chunks={chunks} chunks x {groups} batch shards; set it to a multiple of {need}")
    return None


def apply_updates(tx, state: TrainState, grads, loss, metrics):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **metrics}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_contrastive_step(model: JinaBert, tx: optax.GradientTransformation, task_type: str,
                          config: StepConfig, groups: int = 1):
    """A pairs / retrieval / sts step; GradCache with ``config.gradcache_chunks`` chunks when > 1."""
    embed = make_embed_fn(model, config.dropout)

    def step(state: TrainState, batch, rng):
        views = contrastive_views(task_type, batch)
        loss_fn = task_types.get(task_type).embedding_loss(batch, config)
        if config.gradcache_chunks > 1:
            (loss, metrics), grads = gradcache.value_and_grad(
                embed, loss_fn, state.params, views, rng, num_chunks=config.gradcache_chunks, groups=groups)
        else:
            (loss, metrics), grads = gradcache.plain_value_and_grad(embed, loss_fn, state.params, views, rng)
        return apply_updates(tx, state, grads, loss, metrics)

    return step


def select_positions(weights, max_predictions: int):
    """Row-wise indices of the ``max_predictions`` highest-weight positions: ``[B, L] -> [B, P]``."""
    order = jnp.argsort(-weights, axis=1, stable=True)
    return order[:, :max_predictions]


def make_mlm_step(model: JinaBertForMaskedLM, tx: optax.GradientTransformation, config: StepConfig):
    def step(state: TrainState, batch, rng):
        weights = batch["loss_weights"].astype(jnp.float32)
        length = weights.shape[1]
        budget = config.max_predictions or length
        positions = select_positions(weights, min(budget, length))
        gather = functools.partial(jnp.take_along_axis, indices=positions, axis=1)
        sel_weights, sel_targets = gather(weights), gather(batch["targets"])

        def loss_fn(params):
            out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                              segment_ids=batch["segment_ids"], deterministic=not config.dropout,
                              rngs={"dropout": rng}, method=lambda m, *a, **k: m.bert(*a, **k))
            hidden = jnp.take_along_axis(out.last_hidden_state, positions[..., None], axis=1)
            logits = model.apply({"params": params}, hidden, method=JinaBertForMaskedLM.logits_at)
            return task_types.get("mlm").loss(logits, sel_targets, sel_weights)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = {**metrics, "mlm_dropped": jnp.sum(weights) - jnp.sum(sel_weights)}
        return apply_updates(tx, state, grads, loss, metrics)

    return step

