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


def bidirectional_info_nce(queries, passages, temperature: float = DEFAULT_TEMPERATURE):
    """``L_NCE(B) + L_NCE(B^dagger)``: query-to-passage plus passage-to-query (TRAINING.md, stage 2).

    Returns ``(loss, metrics)`` with the in-batch top-1 accuracy of the query-to-passage direction.
    """
    sims = cosine_matrix(queries, passages) / temperature  # [B, B]
    labels = jnp.arange(queries.shape[0])
    forward = -jnp.mean(jax.nn.log_softmax(sims, axis=1)[labels, labels])
    backward = -jnp.mean(jax.nn.log_softmax(sims, axis=0)[labels, labels])
    accuracy = jnp.mean(jnp.argmax(sims, axis=1) == labels)
    return forward + backward, {"in_batch_accuracy": accuracy}


def info_nce_with_negatives(queries, passages, negatives, temperature: float = DEFAULT_TEMPERATURE):
    """Retrieval loss with hard negatives (TRAINING.md, stage 3).

    ``L = mean_i -log( e^{s(q_i,p_i)/t} / (sum_j e^{s(q_i,p_j)/t} + sum_j sum_l e^{s(q_i,n_jl)/t}) )
          + mean_i -log( e^{s(p_i,q_i)/t} / sum_j e^{s(p_i,q_j)/t} )``

    Args:
      queries, passages: ``[B, H]``.
      negatives: ``[B, m, H]``; every query sees all ``B * m`` negatives of the (global) batch.
    Returns ``(loss, metrics)``.
    """
    batch = queries.shape[0]
    flat_negatives = negatives.reshape(-1, negatives.shape[-1])
    q_to_p = cosine_matrix(queries, passages) / temperature            # [B, B]
    q_to_n = cosine_matrix(queries, flat_negatives) / temperature      # [B, B*m]
    labels = jnp.arange(batch)
    forward_logits = jnp.concatenate([q_to_p, q_to_n], axis=1)
    forward = -jnp.mean(jax.nn.log_softmax(forward_logits, axis=1)[labels, labels])
    backward = -jnp.mean(jax.nn.log_softmax(q_to_p.T, axis=1)[labels, labels])
    accuracy = jnp.mean(jnp.argmax(forward_logits, axis=1) == labels)
    return forward + backward, {"in_batch_accuracy": accuracy}


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
