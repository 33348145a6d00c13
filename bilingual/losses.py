"""Training losses: MLM cross-entropy, bi-directional InfoNCE, InfoNCE with hard negatives, STS losses.

All functions are pure and work on the **global** batch: under ``jax.jit`` with the batch sharded over the
``data``/``fsdp`` mesh axes, ``q @ p.T`` spans every device's rows and XLA inserts the all-gathers, so
in-batch negatives come from the whole global batch (no explicit collectives; under ``shard_map`` one would
``all_gather`` the embeddings first). Losses are float32 scalars.

Conventions: embeddings are ``[B, H]`` rows aligned by index (``q[i]`` pairs with ``p[i]``); similarity is
cosine; the temperature divides the similarities (``tau = 0.05`` by default, TRAINING.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DEFAULT_TEMPERATURE = 0.05


def l2_normalize(x, eps: float = 1e-12):
    """Rows scaled to unit norm; ``[..., H] -> [..., H]`` float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def cosine_matrix(a, b):
    """``[Ba, H], [Bb, H] -> [Ba, Bb]`` cosine similarities (float32)."""
    return l2_normalize(a) @ l2_normalize(b).T


def mlm_loss(logits, targets, weights):
    """Weighted token cross-entropy.

    Args:
      logits: ``[..., V]`` float32.
      targets: ``[...]`` int, the original token ids.
      weights: ``[...]`` float, 1.0 on every selected position (masked, replaced and kept alike).

    Returns:
      ``(loss, metrics)``: mean cross-entropy over the weighted positions, and
      ``{"mlm_accuracy", "mlm_tokens"}``. With no selected position the loss is 0.
    """
    weights = weights.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    total = jnp.sum(weights)
    denom = jnp.maximum(total, 1.0)
    loss = jnp.sum(nll * weights) / denom
    accuracy = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights) / denom
    return loss, {"mlm_accuracy": accuracy, "mlm_tokens": total}


def same_text(a_keys, b_keys):
    """``[Ba, W], [Bb, W] -> [Ba, Bb]`` bool: the texts' keys are equal (``bilingual.text_identity``).
    With keys ``[B, m, W]`` the leading dims are flattened first."""
    a_keys, b_keys = a_keys.reshape(-1, a_keys.shape[-1]), b_keys.reshape(-1, b_keys.shape[-1])
    return jnp.all(a_keys[:, None, :] == b_keys[None, :, :], axis=-1)


def false_negatives(query_keys, passage_keys):
    """``[B, B]`` bool, ``M[i, j]`` (``j != i``): passage ``j`` is no negative of query ``i`` because it is the
    same text as passage ``i`` or as query ``i``, or because query ``j`` is the same text as query ``i`` (so
    passage ``j`` answers it too). The diagonal is False. Read by column, ``M[j, i]`` says query ``j`` is no
    negative of passage ``i``: query ``j`` is the same text as query ``i`` or as passage ``i``, or passage
    ``j`` is passage ``i``'s text. So the passage-to-query direction uses the same matrix, transposed."""
    mask = (same_text(passage_keys, passage_keys) | same_text(query_keys, passage_keys)
            | same_text(query_keys, query_keys))
    return mask & ~jnp.eye(mask.shape[0], dtype=bool)


def false_negative_masks(query_keys, passage_keys, negative_keys=None):
    """The masks the InfoNCE losses apply: ``false_negatives`` ``[B, B]`` and, with ``negative_keys``
    ``[B, m, W]``, ``[B, B*m]``: negative ``n`` is the same text as query ``i`` or its positive (else None)."""
    pairs = false_negatives(query_keys, passage_keys)
    if negative_keys is None:
        return pairs, None
    return pairs, same_text(passage_keys, negative_keys) | same_text(query_keys, negative_keys)


def _masked(logits, mask):
    """``logits`` with the masked entries at -1e30 (exp underflows to exactly 0; no NaN as -inf would give
    in a fully masked row, which cannot happen here as the positive is never masked)."""
    return logits if mask is None else jnp.where(mask, jnp.float32(-1e30), logits)


def _mask_metrics(*masks):
    present = [m for m in masks if m is not None]
    return {"masked_false_negatives": sum(jnp.sum(m).astype(jnp.float32) for m in present)} if present else {}


def bidirectional_info_nce(queries, passages, temperature: float = DEFAULT_TEMPERATURE, query_keys=None,
                           passage_keys=None):
    """``L_NCE(B) + L_NCE(B^dagger)``: query-to-passage plus passage-to-query (TRAINING.md, stage 2).

    ``query_keys``, ``passage_keys``: ``[B, W]`` int32 text keys (``bilingual.text_identity``) or None. With
    them, in-batch pairs of the same text are masked out of both softmaxes (``false_negatives``) and counted
    as ``masked_false_negatives``.

    Returns ``(loss, metrics)`` with the in-batch top-1 accuracy of the query-to-passage direction.
    """
    mask = None if query_keys is None else false_negatives(query_keys, passage_keys)
    sims = _masked(cosine_matrix(queries, passages) / temperature, mask)  # [B, B]
    labels = jnp.arange(queries.shape[0])
    forward = -jnp.mean(jax.nn.log_softmax(sims, axis=1)[labels, labels])
    backward = -jnp.mean(jax.nn.log_softmax(sims, axis=0)[labels, labels])
    accuracy = jnp.mean(jnp.argmax(sims, axis=1) == labels)
    return forward + backward, {"in_batch_accuracy": accuracy, **_mask_metrics(mask)}


def info_nce_with_negatives(queries, passages, negatives, temperature: float = DEFAULT_TEMPERATURE,
                            query_keys=None, passage_keys=None, negative_keys=None):
    """Retrieval loss with hard negatives (TRAINING.md, stage 3).

    ``L = mean_i -log( e^{s(q_i,p_i)/t} / (sum_j e^{s(q_i,p_j)/t} + sum_j sum_l e^{s(q_i,n_jl)/t}) )
          + mean_i -log( e^{s(p_i,q_i)/t} / sum_j e^{s(p_i,q_j)/t} )``

    Args:
      queries, passages: ``[B, H]``.
      negatives: ``[B, m, H]``; every query sees all ``B * m`` negatives of the (global) batch.
      query_keys, passage_keys ``[B, W]``, negative_keys ``[B, m, W]``: text keys, or None. With them the
        in-batch passages and queries of ``false_negatives`` are masked, and so is every negative that is
        the same text as query ``i`` or its positive (for query ``i``); all counted as
        ``masked_false_negatives``.
    Returns ``(loss, metrics)``.
    """
    batch = queries.shape[0]
    flat_negatives = negatives.reshape(-1, negatives.shape[-1])
    pair_mask = negative_mask = None
    if query_keys is not None:
        pair_mask, negative_mask = false_negative_masks(query_keys, passage_keys, negative_keys)
    q_to_p = _masked(cosine_matrix(queries, passages) / temperature, pair_mask)            # [B, B]
    q_to_n = _masked(cosine_matrix(queries, flat_negatives) / temperature, negative_mask)  # [B, B*m]
    labels = jnp.arange(batch)
    forward_logits = jnp.concatenate([q_to_p, q_to_n], axis=1)
    forward = -jnp.mean(jax.nn.log_softmax(forward_logits, axis=1)[labels, labels])
    backward = -jnp.mean(jax.nn.log_softmax(q_to_p.T, axis=1)[labels, labels])
    accuracy = jnp.mean(jnp.argmax(forward_logits, axis=1) == labels)
    return forward + backward, {"in_batch_accuracy": accuracy, **_mask_metrics(pair_mask, negative_mask)}


def negative_pearson(predicted, gold):
    """``-Cov(s, t) / (sigma_s sigma_t)`` over the batch (TRAINING.md, STS loss); ``[B], [B] -> scalar``."""
    s = predicted.astype(jnp.float32) - jnp.mean(predicted)
    t = gold.astype(jnp.float32) - jnp.mean(gold)
    return -jnp.sum(s * t) / jnp.sqrt(jnp.maximum(jnp.sum(s * s) * jnp.sum(t * t), 1e-12))


def cosine_mse(predicted, gold, max_score: float = 5.0):
    """The ablation alternative: mean squared error between cosine and the gold score scaled to [0, 1]."""
    return jnp.mean((predicted.astype(jnp.float32) - gold.astype(jnp.float32) / max_score) ** 2)


def sts_loss(a, b, gold, kind: str = "pearson"):
    """STS loss on embeddings ``a, b`` ``[B, H]`` and gold scores ``[B]``; ``kind`` is pearson or mse."""
    predicted = jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)
    if kind == "pearson":
        loss = negative_pearson(predicted, gold)
    elif kind == "mse":
        loss = cosine_mse(predicted, gold)
    else:
        raise ValueError(f"unknown STS loss {kind!r}; expected 'pearson' or 'mse'")
    return loss, {"sts_pearson": -negative_pearson(predicted, gold)}


def matryoshka(loss_fn, dims, weights=None):
    """MatryoshkaLoss: ``loss_fn`` applied to nested prefixes of the embeddings, weighted.

    ``loss_fn``: ``{view: [n, H]} -> (loss, metrics)`` (a task type's embedding loss); ``dims``: prefix
    sizes ``d_k <= H``; ``weights``: one per size (default 1 each). Returns the same kind of function:
    ``sum_k w_k loss_fn({v: e_v[:, :d_k]})``, with the metrics of the largest size and ``loss_dim<d>`` per
    size. The prefixes are cut before the losses normalise (cosine), so each size is trained as the
    embedding it is used as (first ``d`` components, L2-normalised).
    """
    dims = tuple(int(d) for d in dims)
    weights = tuple(float(w) for w in weights) if weights else (1.0,) * len(dims)
    largest = max(dims)

    def wrapped(embeddings):
        total, metrics = jnp.float32(0.0), {}
        for d, w in zip(dims, weights):
            loss, values = loss_fn({view: e[..., :d] for view, e in embeddings.items()})
            total = total + w * loss
            metrics[f"loss_dim{d}"] = loss
            if d == largest:
                metrics.update(values)
        return total, metrics

    return wrapped
