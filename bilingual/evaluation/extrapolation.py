"""The extrapolation check: MLM loss and accuracy of a masked-LM checkpoint by input length.

The same held-out tokens are scored at every length. The caller masks a stream of content tokens once
(``[rows, C]``, whole-word masking as in training, ``tasks.mlm.whole_word_mask``); at length ``L`` each row
is cut into consecutive windows of ``L - 2`` tokens (the last one shorter), each framed ``<s> ... </s>``
like a training row, and every selected position is scored in exactly one window. So the rows of the table
differ only in how much context each token sees, and the difference between two lengths is a paired
comparison: its standard error (over the per-token losses) is given next to it.

An encoder whose loss stays flat from the trained length to 8192 extrapolates; one whose loss climbs does
not, whatever fine-tuning follows.
"""

from __future__ import annotations

import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bilingual.config import EncoderConfig
from bilingual.modeling import JinaBertForMaskedLM

BOS_ID, PAD_ID, EOS_ID = 0, 1, 2
GATHER_BUCKET = 1024


@functools.lru_cache(maxsize=8)
def _functions(config: EncoderConfig):
    model = JinaBertForMaskedLM(config)

    @jax.jit
    def hidden(params, ids, mask):
        return model.apply({"params": params}, ids, mask,
                           method=lambda m, i, a: m.bert(i, a, deterministic=True).last_hidden_state)

    @jax.jit
    def token_scores(params, h, targets):
        logits = model.apply({"params": params}, h, method=lambda m, x: m.logits_at(x)).astype(jnp.float32)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[:, None], -1)[:, 0]
        return nll, jnp.argmax(logits, -1) == targets

    return hidden, token_scores


def windows(content: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``content [R, C]`` -> ``(ids [W, L], mask [W, L], index [W, L])``: windows of ``L - 2`` tokens framed by
    ``<s>``/``</s>``, padded; ``index`` is the flat position in ``content`` of each token (-1 elsewhere)."""
    rows, cols = content.shape
    step = length - 2
    per_row = -(-cols // step)
    ids = np.full((rows * per_row, length), PAD_ID, np.int32)
    mask = np.zeros_like(ids)
    index = np.full_like(ids, -1)
    w = 0
    for r in range(rows):
        for start in range(0, cols, step):
            piece = content[r, start:start + step]
            n = len(piece)
            ids[w, 0], ids[w, 1:n + 1], ids[w, n + 1] = BOS_ID, piece, EOS_ID
            mask[w, :n + 2] = 1
            index[w, 1:n + 1] = r * cols + start + np.arange(n)
            w += 1
    return ids, mask, index


def mlm_by_length(config: EncoderConfig, params, corrupted: np.ndarray, targets: np.ndarray,
                  weights: np.ndarray, lengths: Sequence[int], *, token_budget: int = 16384) -> list[dict]:
    """One row per length: ``loss`` (mean cross-entropy over the selected tokens), ``accuracy`` (x100),
    ``tokens`` (selected), ``loss_se`` (standard error of the mean), ``delta`` (loss minus the first
    length's, on the same tokens) with ``delta_se`` (paired standard error) and ``seconds``.

    ``params``: the masked-LM tree ``{"bert", "cls"}``; ``corrupted``/``targets``/``weights``: ``[R, C]``
    from whole-word masking of held-out content tokens (no special tokens), ``C >= max(lengths) - 2`` for a
    window of every length to be full.
    """
    hidden_fn, score_fn = _functions(config)
    selected = np.asarray(weights) > 0
    flat_targets = np.asarray(targets).reshape(-1)
    rows_out, first_nll = [], None
    for length in lengths:
        start = time.perf_counter()
        ids, mask, index = windows(np.asarray(corrupted), int(length))
        nll = np.full(flat_targets.shape, np.nan, np.float64)
        correct = np.zeros(flat_targets.shape, bool)
        batch = max(1, token_budget // int(length))
        for b in range(0, len(ids), batch):
            sl = slice(b, b + batch)
            n_rows = min(batch, len(ids) - b)
            pad_rows = batch if len(ids) > batch else n_rows
            bid = np.full((pad_rows, ids.shape[1]), PAD_ID, np.int32)
            bmask = np.zeros_like(bid)
            bmask[:, 0] = 1
            bid[:n_rows], bmask[:n_rows] = ids[sl], mask[sl]
            h = np.asarray(hidden_fn(params, bid, bmask))[:n_rows]
            idx = index[sl]
            pick = (idx >= 0) & np.where(idx >= 0, selected.reshape(-1)[np.maximum(idx, 0)], False)
            positions = idx[pick]
            if not len(positions):
                continue
            gathered = h[pick]
            size = -(-len(positions) // GATHER_BUCKET) * GATHER_BUCKET
            padded = np.zeros((size, gathered.shape[1]), gathered.dtype)
            padded[:len(positions)] = gathered
            tgt = np.zeros(size, np.int32)
            tgt[:len(positions)] = flat_targets[positions]
            token_nll, token_ok = score_fn(params, padded, tgt)
            nll[positions] = np.asarray(token_nll)[:len(positions)]
            correct[positions] = np.asarray(token_ok)[:len(positions)]
        chosen = selected.reshape(-1)
        values = nll[chosen]
        row = {"length": int(length), "loss": float(values.mean()), "accuracy": 100.0 * float(correct[chosen].mean()),
               "tokens": int(chosen.sum()), "loss_se": float(values.std(ddof=1) / np.sqrt(len(values)))}
        if first_nll is None:
            first_nll = values
            row.update(delta=0.0, delta_se=0.0)
        else:
            diff = values - first_nll
            row.update(delta=float(diff.mean()), delta_se=float(diff.std(ddof=1) / np.sqrt(len(diff))))
        row["seconds"] = time.perf_counter() - start
        rows_out.append(row)
    return rows_out


def format_table(rows: Sequence[dict]) -> str:
    base = rows[0]["length"] if rows else 0
    lines = [f"{'length':>7}  {'MLM loss':>14}  {'accuracy':>8}  {f'loss - loss@{base}':>18}  {'tokens':>6}  {'seconds':>7}"]
    for r in rows:
        lines.append(f"{r['length']:>7}  {r['loss']:>7.3f} ± {r['loss_se']:.3f}  {r['accuracy']:>8.1f}  "
                     f"{r['delta']:>+9.3f} ± {r['delta_se']:.3f}  {r['tokens']:>6}  {r['seconds']:>7.1f}")
    return "\n".join(lines)
