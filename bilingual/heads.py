"""Fine-tuning heads on the JinaBERT encoder, and their losses.

Three models, all with the parameter tree of the reference (PyTorch) ``JinaBertFor*`` classes::

    JinaBertForSequenceClassification  {"bert": ..., "classifier": {"kernel": [H, C], "bias": [C]}}
        classification (one text, or a pair packed as one sequence with token_type_ids 0/1) and
        regression (``num_labels=1``). ``pooling="cls"``: ``classifier(dropout(tanh(pooler(h[:, 0]))))``
        with the BERT pooler at ``bert/pooler/dense`` (the reference layout); ``pooling="mean"``:
        ``classifier(dropout(masked_mean(h)))``, no pooler.
    JinaBertForTokenClassification     {"bert": ..., "classifier": ...}  ``classifier(dropout(h))`` per token
    JinaBertForQuestionAnswering       {"bert": ..., "qa_outputs": {"kernel": [H, 2], "bias": [2]}}
        start/end logits per token (no dropout, as the reference); padding positions get ``MASKED_LOGIT``.

Token classification and QA never build the pooler (``HeadConfig.pooling`` is ignored for them). Head
parameters carry logical axis names like ``bilingual.modeling`` (the kernels' hidden axis is ``embed``),
so ``bilingual.training.sharded.init_state`` places them on a mesh; logits are float32 whatever the compute
dtype. Dropout needs ``rngs={"dropout": key}`` when ``deterministic=False``.

The losses take per-example (or per-token) ``weights`` and return ``(loss, metrics)`` with ``loss`` the
weighted mean; a negative label (``-100``, the Hugging Face convention) is ignored like a zero weight.
They are pure ``jnp`` and jit-friendly; under a mesh, the sums are global (XLA inserts the reductions).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bilingual.config import ConfigError, EncoderConfig
from bilingual.modeling import BATCH, EMBED, LENGTH, JinaBert, mean_pool

TASKS = ("classification", "regression", "token_classification", "question_answering")
POOLINGS = ("cls", "mean")
SEQUENCE_TASKS = ("classification", "regression")
# Logit given to padding positions in QA: far below any real logit, yet finite so that softmax and
# cross-entropy stay NaN-free in float32.
MASKED_LOGIT = -1e9


class HeadError(ValueError):
    """Head parameters that do not fit the model (missing/extra names, wrong shapes); names them."""


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """What to put on top of the encoder.

    Attributes:
      task: ``"classification"`` (single text or a pair packed as one sequence), ``"regression"``
        (one score per example, e.g. STS-B), ``"token_classification"`` (e.g. NER / POS) or
        ``"question_answering"`` (extractive, start/end spans).
      num_labels: classes (>= 2) for classification and token classification; must be 1 for regression;
        ignored for question answering (always start/end).
      pooling: sequence tasks only. ``"cls"``: the BERT tanh pooler on the first token (the reference
        ``JinaBertForSequenceClassification``, parameters ``bert/pooler/dense``); ``"mean"``: masked mean
        of the last hidden states (the embedding the encoder is trained to produce).
      dropout: dropout rate before the classifier (sequence and token classification).
    """

    task: str
    num_labels: int = 2
    pooling: str = "cls"
    dropout: float = 0.1

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"HeadConfig.task={self.task!r} is not one of {TASKS}")
        if not isinstance(self.num_labels, int) or isinstance(self.num_labels, bool) or self.num_labels <= 0:
            raise ConfigError(f"HeadConfig.num_labels={self.num_labels!r} must be a positive integer")
        if self.task == "regression" and self.num_labels != 1:
            raise ConfigError(f"HeadConfig.num_labels={self.num_labels!r}: task='regression' predicts one "
                              "score, so num_labels must be 1")
        if self.task in ("classification", "token_classification") and self.num_labels < 2:
            raise ConfigError(f"HeadConfig.num_labels={self.num_labels!r}: task={self.task!r} needs at least "
                              "2 labels (use task='regression' for a single score)")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"HeadConfig.pooling={self.pooling!r} is not one of {POOLINGS}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"HeadConfig.dropout={self.dropout!r} must be in [0, 1)")

    @property
    def uses_pooler(self) -> bool:
        """Whether the model carries ``bert/pooler`` (sequence tasks with CLS pooling)."""
        return self.task in SEQUENCE_TASKS and self.pooling == "cls"

    @property
    def num_outputs(self) -> int:
        """Width of the output layer: ``num_labels``, or 2 (start, end) for question answering."""
        return 2 if self.task == "question_answering" else self.num_labels

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def encoder_config_for_head(config: EncoderConfig, head: HeadConfig) -> EncoderConfig:
    """The encoder config the head model builds: ``add_pooler`` exactly when the head uses the pooler."""
    return dataclasses.replace(config, add_pooler=head.uses_pooler)


def _output_dense(features: int, initializer_range: float, name: str) -> nn.Dense:
    # float32 compute: the head is tiny and its logits feed the loss directly.
    return nn.Dense(
        features, dtype=jnp.float32, param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(initializer_range), (EMBED, None)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)), name=name)


class _HeadModel(nn.Module):
    """The shared part: the fields, the task check and the encoder at ``bert`` (with the pooler exactly when
    the head uses it). Subclasses name the tasks they serve and add their output layers in ``setup``."""

    config: EncoderConfig
    head: HeadConfig
    serves: ClassVar[tuple[str, ...]] = ()

    def setup(self):
        if self.head.task not in self.serves:
            served = repr(self.serves[0]) if len(self.serves) == 1 else str(self.serves)
            raise ConfigError(f"HeadConfig.task={self.head.task!r}: {type(self).__name__} serves "
                              f"{served}; use model_for_head")
        self.bert = JinaBert(encoder_config_for_head(self.config, self.head))


class _ClassifierHeadModel(_HeadModel):
    """Encoder, dropout (rate ``head.dropout``) and the dense ``classifier`` ``[H, num_labels]``."""

    def setup(self):
        super().setup()
        self.dropout = nn.Dropout(self.head.dropout)
        self.classifier = _output_dense(self.head.num_labels, self.config.initializer_range, "classifier")


class JinaBertForSequenceClassification(_ClassifierHeadModel):
    """Encoder, pooling, dropout, one dense layer. Classification and regression.

    ``__call__(input_ids [B, L] int, attention_mask [B, L] (1 = token) = all ones,
    token_type_ids [B, L] int = zeros, deterministic=True) -> logits [B, num_labels] float32``.
    """

    serves: ClassVar[tuple[str, ...]] = SEQUENCE_TASKS

    def pooled(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        """The pooled representation ``[B, H]`` float32 the classifier sees (before dropout)."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        out = self.bert(input_ids, attention_mask, token_type_ids, None, deterministic)
        if self.head.pooling == "cls":
            # JinaBert builds the pooler but returns only hidden states and the mean; apply its pooler
            # (same parameters, bert/pooler/dense) to the last hidden states here.
            return self.bert.pooler(out.last_hidden_state).astype(jnp.float32)
        return mean_pool(out.last_hidden_state, attention_mask)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        pooled = self.pooled(input_ids, attention_mask, token_type_ids, deterministic)
        logits = self.classifier(self.dropout(pooled, deterministic=deterministic))
        return nn.with_logical_constraint(logits, (BATCH, None))


class JinaBertForTokenClassification(_ClassifierHeadModel):
    """Encoder, dropout, one dense layer per token.

    ``__call__(input_ids [B, L], attention_mask, token_type_ids, deterministic) -> logits [B, L, C] float32``
    (padding positions are computed too; the loss ignores them through its weights).
    """

    serves: ClassVar[tuple[str, ...]] = ("token_classification",)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        out = self.bert(input_ids, attention_mask, token_type_ids, None, deterministic)
        hidden = self.dropout(out.last_hidden_state.astype(jnp.float32), deterministic=deterministic)
        return nn.with_logical_constraint(self.classifier(hidden), (BATCH, LENGTH, None))


class JinaBertForQuestionAnswering(_HeadModel):
    """Encoder and a ``[H, 2]`` span layer (``qa_outputs``), as the reference (no dropout).

    ``__call__(...) -> (start_logits [B, L], end_logits [B, L])`` float32; positions with
    ``attention_mask == 0`` are set to ``MASKED_LOGIT`` so no span can start or end in padding.
    """

    serves: ClassVar[tuple[str, ...]] = ("question_answering",)

    def setup(self):
        super().setup()
        self.qa_outputs = _output_dense(2, self.config.initializer_range, "qa_outputs")

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        out = self.bert(input_ids, attention_mask, token_type_ids, None, deterministic)
        logits = self.qa_outputs(out.last_hidden_state.astype(jnp.float32))
        logits = jnp.where(attention_mask[..., None] > 0, logits, MASKED_LOGIT)
        logits = nn.with_logical_constraint(logits, (BATCH, LENGTH, None))
        return logits[..., 0], logits[..., 1]


def model_for_head(config: EncoderConfig, head: HeadConfig) -> nn.Module:
    """The head model for ``head.task`` on an encoder of ``config``."""
    if head.task in SEQUENCE_TASKS:
        return JinaBertForSequenceClassification(config, head)
    if head.task == "token_classification":
        return JinaBertForTokenClassification(config, head)
    return JinaBertForQuestionAnswering(config, head)


def _paths(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf)) for path, leaf in flat}


def init_head_params(model: nn.Module, rng: jax.Array, encoder_params=None, *, example_length: int = 8):
    """Fresh (unboxed) parameters for ``model`` (a ``model_for_head`` result).

    With ``encoder_params`` (the JinaBert tree: ``checkpoints.load_encoder(...)[1]``, or ``params["bert"]``
    of an MLM checkpoint) they replace ``params["bert"]`` as ``merge_encoder_params`` does.
    Host-side, unsharded; on a mesh, initialise with ``bilingual.training.sharded.init_state`` and call
    ``merge_encoder_params`` on its ``params``.
    """
    ids = jnp.ones((1, min(example_length, model.config.max_length)), jnp.int32)
    params = nn.meta.unbox(model.init(rng, ids)["params"])
    if encoder_params is None:
        return params
    return merge_encoder_params(params, encoder_params, model.config)


def merge_encoder_params(params, encoder_params, config: Optional[EncoderConfig] = None):
    """``params`` (a head model's tree) with ``params["bert"]`` replaced leaf for leaf by ``encoder_params``,
    the objects kept as given (no copy, no cast, no device move).

    When the head uses the pooler and the encoder has none, the pooler of ``params`` is kept (fresh); an
    encoder pooler the head does not use (mean pooling, token tasks) is dropped. Any other missing or extra
    name, or a shape that differs, raises ``HeadError`` listing them (usually an encoder of another size;
    ``config``, if given, is quoted in the message).
    """
    encoder_params = nn.meta.unbox(encoder_params)
    if not isinstance(encoder_params, dict) or "embeddings" not in encoder_params:
        keys = sorted(encoder_params) if isinstance(encoder_params, dict) else type(encoder_params).__name__
        hint = " (this looks like a full model tree: pass its 'bert' subtree)" if (
            isinstance(encoder_params, dict) and "bert" in encoder_params) else ""
        raise HeadError(f"encoder_params must be a JinaBert parameter tree with 'embeddings' and 'encoder', "
                        f"got keys {keys}{hint}")
    fresh_bert = params["bert"]
    given = dict(encoder_params)
    if "pooler" in fresh_bert and "pooler" not in given:
        given["pooler"] = fresh_bert["pooler"]
    if "pooler" not in fresh_bert:
        given.pop("pooler", None)
    want, have = _paths(fresh_bert), _paths(given)
    problems = [f"missing {name} {shape}" for name, shape in sorted(want.items()) if name not in have]
    problems += [f"unexpected {name} {shape}" for name, shape in sorted(have.items()) if name not in want]
    problems += [f"{name}: encoder has {have[name]}, model expects {shape}"
                 for name, shape in sorted(want.items()) if name in have and have[name] != shape]
    if problems:
        described = "" if config is None else (
            f" (hidden_size={config.hidden_size}, num_layers={config.num_layers}, vocab_size={config.vocab_size}, "
            f"layer_layout={config.layer_layout!r})")
        more = f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else ""
        raise HeadError(f"encoder_params do not fit the head model's encoder{described}:\n  "
                        + "\n  ".join(problems[:20]) + more)
    return {**params, "bert": given}


def _weighted_mean(values, weights):
    """``sum(values * w) / sum(w)`` and ``sum(w)``; 0 (with zero gradient) when no weight is set."""
    total = jnp.sum(weights)
    return jnp.sum(values * weights) / jnp.where(total > 0, total, 1.0), total


def _cross_entropy(logits, labels):
    """Per-position ``-log softmax(logits)[label]`` with negative labels clipped to 0 (masked by callers)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    safe = jnp.maximum(labels.astype(jnp.int32), 0)
    return -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]


def classification_loss(logits, labels, weights):
    """Weighted softmax cross-entropy.

    Args: ``logits [B, C]`` float, ``labels [B]`` int (negative = ignore), ``weights [B]`` float.
    Returns ``(loss, {"loss", "accuracy", "examples"})``: means over the weighted examples; ``examples`` is
    the total weight (for aggregating over batches).
    """
    weights = weights.astype(jnp.float32) * (labels >= 0)
    loss, total = _weighted_mean(_cross_entropy(logits, labels), weights)
    accuracy, _ = _weighted_mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32), weights)
    return loss, {"loss": loss, "accuracy": accuracy, "examples": total}


def regression_loss(predictions, scores, weights):
    """Weighted mean squared error. ``predictions [B, 1]`` or ``[B]``, ``scores [B]``, ``weights [B]``.

    Returns ``(loss, {"loss", "examples"})``.
    """
    predictions = predictions.astype(jnp.float32)
    if predictions.ndim == 2:
        predictions = predictions[:, 0]
    error = (predictions - scores.astype(jnp.float32)) ** 2
    loss, total = _weighted_mean(error, weights.astype(jnp.float32))
    return loss, {"loss": loss, "examples": total}


def token_classification_loss(logits, labels, weights):
    """Weighted per-token cross-entropy, averaged over weighted tokens (not examples).

    ``logits [B, L, C]``, ``labels [B, L]`` int (negative = ignore, e.g. padding or word-piece
    continuations), ``weights [B, L]``. Returns ``(loss, {"loss", "accuracy", "tokens"})``.
    """
    weights = weights.astype(jnp.float32) * (labels >= 0)
    loss, total = _weighted_mean(_cross_entropy(logits, labels), weights)
    accuracy, _ = _weighted_mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32), weights)
    return loss, {"loss": loss, "accuracy": accuracy, "tokens": total}


def span_loss(start_logits, end_logits, start_positions, end_positions, weights):
    """``(CE(start) + CE(end)) / 2`` averaged over weighted examples (the reference QA loss).

    ``start_logits, end_logits [B, L]``; ``start_positions, end_positions [B]`` int token indices
    (unanswerable: 0, the first token, by the SQuAD v2 convention); ``weights [B]``. Returns
    ``(loss, {"loss", "start_accuracy", "end_accuracy", "exact_match", "examples"})``; ``exact_match`` counts
    examples whose argmax start and end are both right.
    """
    weights = weights.astype(jnp.float32)
    nll = 0.5 * (_cross_entropy(start_logits, start_positions) + _cross_entropy(end_logits, end_positions))
    loss, total = _weighted_mean(nll, weights)
    start_ok = jnp.argmax(start_logits, axis=-1) == start_positions
    end_ok = jnp.argmax(end_logits, axis=-1) == end_positions
    metrics = {"loss": loss, "examples": total}
    for name, ok in (("start_accuracy", start_ok), ("end_accuracy", end_ok), ("exact_match", start_ok & end_ok)):
        metrics[name] = _weighted_mean(ok.astype(jnp.float32), weights)[0]
    return loss, metrics


_LOSSES: dict[str, Callable] = {
    "classification": classification_loss,
    "regression": regression_loss,
    "token_classification": token_classification_loss,
    "question_answering": span_loss,
}


def loss_for_head(head: HeadConfig) -> Callable:
    """The loss function of ``head.task`` (signatures above)."""
    return _LOSSES[head.task]
