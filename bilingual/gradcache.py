"""GradCache: exact gradients of a contrastive loss over a batch larger than activation memory allows.

Three passes (Gao et al., 2021):

1. embed every input in chunks **without** keeping activations (``lax.map``);
2. compute the loss on the full set of embeddings and its gradient with respect to the embeddings;
3. re-encode chunk by chunk **with** gradients, pulling back each chunk's embedding gradient through the
   encoder (``jax.vjp``) and summing the parameter gradients (``lax.scan``).

Peak activation memory is that of one chunk, whatever the global batch; the result equals the plain
gradient because the loss depends on parameters only through the embeddings. Dropout masks are the same in
passes 1 and 3 (the chunk's rng is derived from its index), so exactness holds with dropout too.

Gradient *accumulation* is not a substitute: it splits the softmax into small batches, so every query sees
fewer negatives. Grow the contrastive batch with GradCache, never with accumulation.

Sharding: a view ``[N, ...]`` sharded over ``groups`` batch shards is split so each chunk takes
``N / (chunks * groups)`` rows from every shard, i.e. every device works on every chunk.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

EmbedFn = Callable[[object, Mapping[str, jax.Array], jax.Array], jax.Array]


def split_chunks(x: jax.Array, num_chunks: int, groups: int) -> jax.Array:
    """``[N, ...] -> [num_chunks, N / num_chunks, ...]`` with each chunk spread over the ``groups`` shards."""
    n = x.shape[0]
    if n % (num_chunks * groups):
        raise ValueError(f"GradCache: {n} rows cannot be split into {num_chunks} chunks x {groups} batch shards")
    per = n // (num_chunks * groups)
    y = x.reshape((groups, num_chunks, per) + x.shape[1:])
    return jnp.swapaxes(y, 0, 1).reshape((num_chunks, groups * per) + x.shape[1:])


def merge_chunks(y: jax.Array, groups: int) -> jax.Array:
    """Inverse of ``split_chunks``: ``[num_chunks, N / num_chunks, ...] -> [N, ...]``."""
    num_chunks, rows = y.shape[:2]
    per = rows // groups
    z = y.reshape((num_chunks, groups, per) + y.shape[2:])
    return jnp.swapaxes(z, 0, 1).reshape((num_chunks * rows,) + y.shape[2:])


def _chunk_rngs(rng: jax.Array, num_chunks: int) -> jax.Array:
    return jax.random.split(rng, num_chunks)


def embed_in_chunks(embed_fn: EmbedFn, params, view: Mapping[str, jax.Array], rng: jax.Array,
                    num_chunks: int, groups: int) -> jax.Array:
    """Pass 1: embeddings ``[N, H]`` of ``view`` (arrays ``[N, ...]``), no activations kept."""
    chunks = {k: split_chunks(v, num_chunks, groups) for k, v in view.items()}
    params = jax.lax.stop_gradient(params)
    out = jax.lax.map(lambda args: embed_fn(params, args[0], args[1]), (chunks, _chunk_rngs(rng, num_chunks)))
    return merge_chunks(out, groups)


def _pull_back(embed_fn: EmbedFn, params, view, rng, emb_grad, num_chunks: int, groups: int):
    """Pass 3: sum over chunks of ``d(emb_chunk)/d(params)^T . emb_grad_chunk``."""
    chunks = {k: split_chunks(v, num_chunks, groups) for k, v in view.items()}
    grad_chunks = split_chunks(emb_grad, num_chunks, groups)

    def step(acc, args):
        chunk, chunk_rng, g = args
        _, vjp = jax.vjp(lambda p: embed_fn(p, chunk, chunk_rng), params)
        (grad,) = vjp(g)
        return jax.tree.map(jnp.add, acc, grad), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(step, zeros, (chunks, _chunk_rngs(rng, num_chunks), grad_chunks))
    return total


def value_and_grad(embed_fn: EmbedFn, loss_fn, params, views: Mapping[str, Mapping[str, jax.Array]],
                   rng: jax.Array, *, num_chunks: int, groups: int = 1):
    """``((loss, metrics), grads)`` of ``loss_fn(embeddings)`` with GradCache.

    Args:
      embed_fn: ``(params, inputs, rng) -> [n, H]`` float32 embeddings of one chunk of a view.
      loss_fn: ``({view: [N_view, H]}) -> (loss, metrics)``.
      views: ``{view name: {input name: [N_view, ...]}}``, e.g. queries, passages, negatives.
      rng: base key; each view and chunk derives its own, identically in passes 1 and 3.
      num_chunks: chunks per view (1 gives the plain gradient path through ``vjp``).
      groups: number of batch shards (``bilingual.sharding.batch_divisor(mesh)``).
    """
    view_rngs = {name: jax.random.fold_in(rng, i) for i, name in enumerate(sorted(views))}
    embeddings = {name: embed_in_chunks(embed_fn, params, view, view_rngs[name], num_chunks, groups)
                  for name, view in views.items()}
    (loss, metrics), emb_grads = jax.value_and_grad(loss_fn, has_aux=True)(embeddings)
    grads = None
    for name, view in views.items():
        g = _pull_back(embed_fn, params, view, view_rngs[name], emb_grads[name], num_chunks, groups)
        grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
    return (loss, metrics), grads


def plain_value_and_grad(embed_fn: EmbedFn, loss_fn, params, views, rng):
    """The reference path: encode every view in one piece and differentiate end to end.

    Uses the same rng derivation as ``value_and_grad`` with one chunk, so both agree with dropout on.
    """
    view_rngs = {name: jax.random.fold_in(rng, i) for i, name in enumerate(sorted(views))}

    def full_loss(p):
        embeddings = {name: embed_fn(p, view, _chunk_rngs(view_rngs[name], 1)[0]) for name, view in views.items()}
        return loss_fn(embeddings)

    return jax.value_and_grad(full_loss, has_aux=True)(params)
