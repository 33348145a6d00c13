"""What each stage trains: its model, its step per task type, its FLOPs and where its encoder sits.

An ``Objective`` holds everything stage-specific; ``trainer.train`` does the rest (state init, compile,
update, checkpoints, logging, evaluation) the same way for every stage:

    stage       model                       task types (each batch's ``task_type`` picks its step)
    mlm         JinaBertForMaskedLM         mlm
    pairs       JinaBert                    pairs
    multitask   JinaBert                    pairs, retrieval, sts
    finetune    a head model (heads.py)     head (classification / regression rows)

The embedding task types (mlm, pairs, retrieval, sts) are entries of ``bilingual.task_types``; the ``head``
rows of fine-tuning are not an embedding task (their label dtype follows the head), so their layout is
``HEAD_BATCH_KEYS`` here.

The batch source and the best-checkpoint rule come with the run (``TrainConfig.keep_best``): the
contrastive stages keep the newest checkpoints, fine-tuning keeps the best dev one (``finetune.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bilingual import artifacts, flops, task_types
from bilingual.config import ConfigError, EncoderConfig
from bilingual.heads import HeadConfig, HeadError, loss_for_head, merge_encoder_params, model_for_head
from bilingual.modeling import JinaBert, JinaBertForMaskedLM
from bilingual.training import steps

STAGES = {"mlm": ("mlm",), "pairs": ("pairs",), "multitask": ("pairs", "retrieval", "sts"),
          "finetune": ("head",)}
HEAD_BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "weights")


@dataclasses.dataclass(frozen=True)
class Objective:
    """A stage's model and steps.

    ``make_step(task_type, tx, groups)`` gives ``(state, batch, rng) -> (state, metrics)`` (``groups``: the
    number of batch shards, for GradCache); ``batch_keys(task_type)`` the arrays the step reads;
    ``flops(task_type, global_batch_shapes)`` its matmul FLOPs; ``merge_encoder(fresh, encoder)`` puts
    initial encoder parameters into a fresh tree (traceable, so the sharded init places them in shards).
    """

    stage: str
    model: nn.Module
    model_kind: str  # artifacts.MODEL_KINDS
    task_types: tuple[str, ...]
    make_step: Callable[[str, optax.GradientTransformation, int], Callable]
    batch_keys: Callable[[str], tuple[str, ...]]
    flops: Callable[[str, dict], float]
    merge_encoder: Callable[[Any, Any], Any]
    meta: dict = dataclasses.field(default_factory=dict)  # recorded with every checkpoint

    def encoder_params(self, params):
        """The ``JinaBert`` parameters inside this model's parameters."""
        return artifacts.encoder_subtree(self.model_kind, self.model.config, params)


def replace_encoder(fresh, encoder_params):
    """``fresh`` with its encoder (the whole tree, or ``bert``) replaced by ``encoder_params``, cast to the
    fresh dtypes; shapes must match exactly (``ConfigError`` listing the differences otherwise)."""
    target = fresh["bert"] if "bert" in fresh else fresh
    expected = jax.tree.map(lambda x: tuple(x.shape), target)
    given = jax.tree.map(lambda x: tuple(jnp.shape(x)), encoder_params)
    if expected != given:
        raise ConfigError(f"initial encoder parameters do not match the model: {_diff(expected, given)}")
    encoder_params = jax.tree.map(lambda x, t: jnp.asarray(x, t.dtype), encoder_params, target)
    return {**fresh, "bert": encoder_params} if "bert" in fresh else encoder_params


def _diff(expected, given) -> str:
    from flax import traverse_util
    e, g = traverse_util.flatten_dict(expected), traverse_util.flatten_dict(given)
    lines = [f"{'/'.join(k)}: model {e.get(k)} vs given {g.get(k)}" for k in sorted(set(e) | set(g))
             if e.get(k) != g.get(k)]
    return "; ".join(lines[:10]) + (f" (+{len(lines) - 10} more)" if len(lines) > 10 else "")


def for_stage(stage: str, model: EncoderConfig, step: steps.StepConfig) -> Objective:
    """The objective of ``mlm``, ``pairs`` or ``multitask`` (fine-tuning: ``head_objective``); batch keys
    and FLOPs come from the task-type table (``bilingual.task_types``)."""
    if stage not in ("mlm", "pairs", "multitask"):
        raise ConfigError(f"TrainConfig.stage={stage!r} is unknown; expected one of {tuple(STAGES)}")
    batch_keys = lambda t: task_types.get(t).keys + (task_types.get(t, packed=True).keys
                                                      if t in task_types.PACKED_TASK_TYPES else ())
    train_flops = lambda t, batch: task_types.get(t).train_flops(model, step, batch)
    if stage == "mlm":
        module = JinaBertForMaskedLM(model)
        return Objective("mlm", module, "masked_lm", STAGES["mlm"],
                         make_step=lambda t, tx, groups: steps.make_mlm_step(module, tx, step),
                         batch_keys=batch_keys, flops=train_flops, merge_encoder=replace_encoder)
    step.check_matryoshka(model.hidden_size)
    meta = {"matryoshka_dims": sorted(step.matryoshka_dims, reverse=True)} if step.matryoshka_dims else {}
    module = JinaBert(model)
    return Objective(stage, module, "encoder", STAGES[stage],
                     make_step=lambda t, tx, groups: steps.make_contrastive_step(module, tx, t, step, groups=groups),
                     batch_keys=batch_keys, flops=train_flops, merge_encoder=replace_encoder, meta=meta)


def head_objective(model: EncoderConfig, head: HeadConfig, *, dropout: bool, meta: dict) -> Objective:
    """Full fine-tuning of a classification / regression head (``bilingual.heads``) on ``head`` batches
    (``HEAD_BATCH_KEYS``: ids, mask and token types ``[B, L]``, labels ``[B]``, weights ``[B]``)."""
    module = model_for_head(model, head)

    def head_flops(task_type, batch):
        b, length = batch["input_ids"].shape
        return 3 * flops.encoder_forward_flops(model, b, length)

    return Objective("finetune", module, "sequence_classification", STAGES["finetune"],
                     make_step=lambda t, tx, groups: make_head_step(module, tx, head, dropout),
                     batch_keys=lambda t: HEAD_BATCH_KEYS, flops=head_flops, merge_encoder=merge_head_encoder,
                     meta={"head": head.to_dict(), **meta})


def make_head_step(model: nn.Module, tx: optax.GradientTransformation, head: HeadConfig, dropout: bool):
    """``(state, batch, rng) -> (state, metrics)``; the loss is the head's weighted loss."""
    loss_fn = loss_for_head(head)

    def step(state, batch, rng):
        def compute(params):
            logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                 batch["token_type_ids"], deterministic=not dropout, rngs={"dropout": rng})
            return loss_fn(logits, batch["labels"], batch["weights"])

        (loss, metrics), grads = jax.value_and_grad(compute, has_aux=True)(state.params)
        return steps.apply_updates(tx, state, grads, loss, metrics)

    return step


def merge_head_encoder(fresh: dict, encoder_params) -> dict:
    """``fresh`` head-model params with ``bert`` replaced by ``encoder_params`` (``heads.merge_encoder_params``:
    a pooler the encoder lacks stays fresh, one the head does not use is dropped), cast to the model's
    parameter dtypes."""
    try:
        merged = merge_encoder_params(fresh, encoder_params)
    except HeadError as err:
        raise ConfigError(f"initial encoder parameters do not fit the head model: {err}") from err
    return {**merged, "bert": jax.tree.map(lambda x, t: jnp.asarray(x, t.dtype), merged["bert"], fresh["bert"])}

