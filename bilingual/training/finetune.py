"""The ``finetune`` stage: full fine-tuning of a head model on one labelled task, epoch by epoch.

    data (``tasks.finetune_data.TaskData``) -> tokenise -> mesh, head model, AdamW (warmup + decay over
    ``num_epochs`` x steps per epoch) -> state (encoder from an MLM/pairs checkpoint or an HF export, or
    fresh: the untrained baseline) -> per epoch: shuffled train batches through the sharded jitted step,
    then dev predictions scored on the host -> the checkpoint of the best dev epoch is kept (orbax) ->
    test scored with the best parameters.

The step is ``sharded.compile_step`` like the other stages: parameters and optimiser state sharded by
their logical axes, the batch over ``(data, fsdp)``, the state donated; one compiled step per length bucket.
With several processes every process builds the same global batch and passes its own rows.
Dev/test predictions come back replicated, so every process scores them alike (process 0 writes files).

Checkpoints (``<workdir>/checkpoints/<epoch>/{model,meta}``): only the best epoch so far is kept (a new
one is written when the dev metric strictly improves, and the previous one deleted). ``meta`` holds
``encoder_config``, ``head``, ``labels``, ``task`` and the epoch's dev metrics. ``<workdir>/result.json``
holds the per-epoch history, the best epoch and the test metrics. Fine-tuned heads are throwaway
backbone probes: nothing here feeds embedding training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec
from scipy import stats
from sklearn.metrics import f1_score

from bilingual import checkpoints, sharding
from bilingual.config import ConfigError, EncoderConfig
from bilingual.heads import HeadConfig, HeadError, loss_for_head, merge_encoder_params, model_for_head
from bilingual.optim import OptimizerConfig, make_optimizer
from bilingual.training import sharded
from bilingual.training.steps import TrainState
from bilingual.training.trainer import load_matching_encoder
from bilingual.training import finetune_batches

log = logging.getLogger("bilingual.finetune")

BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels", "weights")
MODEL_KIND = "sequence_classification"


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning run. ``batch_size`` is the global batch; ``optimizer.warmup_steps`` and
    ``optimizer.total_steps`` are replaced by ``warmup_ratio`` and ``num_epochs`` x steps per epoch.
    ``init_from``: an orbax checkpoint of any stage or an HF export directory; None trains from a fresh
    initialisation (the untrained baseline). ``head.num_labels`` is set from the task's label list."""

    model: EncoderConfig
    head: HeadConfig
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=5e-5, warmup_steps=0, total_steps=1)
    batch_size: int = 32
    eval_batch_size: int = 0  # 0: batch_size
    num_epochs: int = 3
    warmup_ratio: float = 0.1
    max_length: int = 128
    mesh: sharding.MeshConfig = sharding.MeshConfig()
    seed: int = 0
    init_from: Optional[str] = None
    dropout: bool = True
    length_buckets: tuple[int, ...] = finetune_batches.DEFAULT_BUCKETS  # padded lengths (capped at max_length)
    eval_at_start: bool = False  # also score dev before training (history epoch 0; never selected)


@dataclasses.dataclass
class FinetuneResult:
    task: str
    metric: str
    head: HeadConfig  # as trained (num_labels from the task's labels)
    best_epoch: int
    dev: dict[str, float]  # dev metrics of the best epoch
    test: dict[str, float]  # test metrics with the best epoch's parameters
    history: list[dict]  # per epoch: train loss, dev metrics
    params: Any
    workdir: Any

    def to_json(self) -> dict:
        return {"task": self.task, "metric": self.metric, "head": self.head.to_dict(),
                "best_epoch": self.best_epoch, "dev": self.dev,
                "test": self.test, "history": self.history}


# ------------------------------------------------------------------------------------------ metrics


def score_predictions(head: str, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Host-side metrics. Classification: ``loss`` (mean cross-entropy), ``accuracy``, ``macro_f1``;
    regression: ``loss`` (MSE), ``spearman``, ``pearson`` (NaN for constant predictions)."""
    logits = np.asarray(logits, np.float64)
    if head == "regression":
        pred = logits.reshape(len(labels))
        gold = np.asarray(labels, np.float64)
        constant = np.ptp(pred) == 0 or np.ptp(gold) == 0
        return {"loss": float(np.mean((pred - gold) ** 2)),
                "spearman": float("nan") if constant else float(stats.spearmanr(pred, gold)[0]),
                "pearson": float("nan") if constant else float(stats.pearsonr(pred, gold)[0])}
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    pred = logits.argmax(axis=1)
    return {"loss": float(-np.mean(log_probs[np.arange(len(labels)), labels])),
            "accuracy": float(np.mean(pred == labels)),
            "macro_f1": float(f1_score(labels, pred, average="macro", labels=np.arange(logits.shape[1]),
                                       zero_division=0))}


def _selection_value(metrics: dict, metric: str) -> float:
    value = metrics[metric]
    return -np.inf if np.isnan(value) else value


# -------------------------------------------------------------------------------------------- steps


def make_finetune_step(model: nn.Module, tx: optax.GradientTransformation, head: HeadConfig, dropout: bool):
    """``(state, batch, rng) -> (state, metrics)``; the loss is the head's weighted loss."""
    loss_fn = loss_for_head(head)

    def step(state: TrainState, batch, rng):
        def compute(params):
            logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                 batch["token_type_ids"], deterministic=not dropout, rngs={"dropout": rng})
            return loss_fn(logits, batch["labels"], batch["weights"])

        (loss, metrics), grads = jax.value_and_grad(compute, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def merge_encoder(fresh: dict, encoder_params) -> dict:
    """``fresh`` head-model params with ``bert`` replaced by ``encoder_params`` (``heads.merge_encoder_params``:
    a pooler the encoder lacks stays fresh, one the head does not use is dropped), cast to the model's
    parameter dtypes. Traceable, so the sharded ``init`` places the result straight into its shards."""
    try:
        merged = merge_encoder_params(fresh, encoder_params)
    except HeadError as err:
        raise ConfigError(f"initial encoder parameters do not fit the head model: {err}") from err
    return {**merged, "bert": jax.tree.map(lambda x, t: jnp.asarray(x, t.dtype), merged["bert"], fresh["bert"])}


class BestCheckpoint:
    """Orbax manager keeping one step: the best dev epoch so far (``save`` only on a strict improvement)."""

    def __init__(self, directory):
        self.directory = checkpoints.as_path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("model", "meta"))

    def save(self, epoch: int, params, meta: dict) -> None:
        self.manager.save(epoch, args=ocp.args.Composite(model=ocp.args.StandardSave(params),
                                                         meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, epoch: int, target):
        restored = self.manager.restore(epoch, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))
        return restored.model

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def close(self) -> None:
        self.manager.close()


def load_classifier(path) -> tuple[EncoderConfig, HeadConfig, dict, Any]:
    """``(encoder config, head config, meta, params)`` of a fine-tuning checkpoint (root or step dir)."""
    root, step = checkpoints.resolve_step(path)
    meta = checkpoints.load_meta(root / str(step))
    if meta.get("model") != MODEL_KIND:
        raise checkpoints.CheckpointError(f"{root / str(step)} is a {meta.get('model')!r} checkpoint, not a "
                                          f"fine-tuned {MODEL_KIND!r} one")
    manager = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(read_only=True),
                                    item_names=("model", "meta"))
    with manager:
        metadata = manager.item_metadata(step)["model"]
        target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata)
        params = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target))).model
    return (checkpoints.encoder_config_from_dict(meta["encoder_config"]), HeadConfig(**meta["head"]), meta, params)


# --------------------------------------------------------------------------------------------- loop


def _local_rows(batch: dict) -> dict:
    n, i = jax.process_count(), jax.process_index()
    per = batch["input_ids"].shape[0] // n
    return {k: v[i * per:(i + 1) * per] for k, v in batch.items()}


def finetune(config: FinetuneConfig, workdir, data, tokenizer, *,
             report: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune on ``data.train``, select on ``data.dev``, score ``data.test`` (see the module doc).

    ``data``: a ``tasks.finetune_data.TaskData`` (``spec``, ``labels``, ``train``/``dev``/``test`` rows); the
    library reads only those fields, so it does not import the data package."""
    spec = data.spec
    head = config.head
    if head.task != spec.head:
        raise ConfigError(f"HeadConfig.task={head.task!r} but task {spec.name!r} is {spec.head!r}")
    if spec.head == "classification" and head.num_labels != len(data.labels):
        head = dataclasses.replace(head, num_labels=len(data.labels))
    workdir = checkpoints.as_path(workdir)
    mesh = sharding.make_mesh(config.mesh)
    divisor = sharding.batch_divisor(mesh) * jax.process_count()
    eval_batch = config.eval_batch_size or config.batch_size
    for name, value in (("batch_size", config.batch_size), ("eval_batch_size", eval_batch)):
        if value % divisor:
            raise ConfigError(f"FinetuneConfig.{name}={value} is not divisible by the data-parallel size "
                                     f"{divisor} (mesh {dict(mesh.shape)} x {jax.process_count()} processes)")
    if config.num_epochs < 1:
        raise ConfigError(f"FinetuneConfig.num_epochs must be >= 1, got {config.num_epochs}")
    if config.max_length > config.model.max_length:
        raise ConfigError(f"FinetuneConfig.max_length={config.max_length} exceeds the encoder's "
                                 f"max_length {config.model.max_length}")

    splits = {name: finetune_batches.tokenize(getattr(data, name), tokenizer, config.max_length)
              for name in ("train", "dev", "test")}
    steps_per_epoch = finetune_batches.num_batches(len(splits["train"]), config.batch_size, drop_remainder=True)
    if steps_per_epoch < 1:
        raise ConfigError(f"task {spec.name!r}: {len(splits['train'])} training rows are fewer than one "
                                 f"batch of {config.batch_size}")
    total_steps = steps_per_epoch * config.num_epochs
    optimizer = dataclasses.replace(config.optimizer, total_steps=total_steps,
                                    warmup_steps=int(round(config.warmup_ratio * total_steps)))
    tx = make_optimizer(optimizer)
    model = model_for_head(config.model, head)
    example_ids = jnp.zeros((1, 8), jnp.int32)
    shardings = sharded.state_shardings(model, tx, mesh, example_ids)

    encoder_params = None
    if config.init_from:
        encoder_params = load_matching_encoder(config.init_from, config.model, "FinetuneConfig.init_from")

    def init(key):
        params = nn.meta.unbox(model.init(key, example_ids)["params"])
        if encoder_params is not None:
            params = merge_encoder(params, encoder_params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    with sharding.sharding_context(mesh, sharding.LOGICAL_RULES):
        state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))

    step_fn = make_finetune_step(model, tx, head, config.dropout)
    compiled: dict[tuple, Any] = {}
    replicated = NamedSharding(mesh, PartitionSpec())
    predict = jax.jit(lambda params, b: model.apply({"params": params}, b["input_ids"], b["attention_mask"],
                                                    b["token_type_ids"], deterministic=True),
                      in_shardings=(shardings.params, {k: sharding.batch_sharding(mesh, 2) for k in BATCH_KEYS[:3]}),
                      out_shardings=replicated)

    def predictions(params, split) -> np.ndarray:
        out = np.zeros((len(split), head.num_labels), np.float32)
        for batch in finetune_batches.iterate_batches(split, eval_batch, buckets=config.length_buckets):
            arrays = sharded.put_batch(mesh, _local_rows({k: batch[k] for k in BATCH_KEYS[:3]}))
            with sharding.sharding_context(mesh, sharding.LOGICAL_RULES):
                logits = np.asarray(jax.device_get(predict(params, arrays)))
            keep = batch["index"] >= 0
            out[batch["index"][keep]] = logits[keep].reshape(int(keep.sum()), -1)
        return out

    meta = {"encoder_config": config.model.to_dict(), "model": MODEL_KIND, "head": head.to_dict(),
            "labels": list(data.labels) if data.labels else None, "task": dataclasses.asdict(spec),
            "max_length": config.max_length, "init_from": config.init_from}
    workdir.mkdir(parents=True, exist_ok=True)
    best_ckpt = BestCheckpoint(workdir / "checkpoints")
    if best_ckpt.steps():
        best_ckpt.close()
        raise ConfigError(f"{workdir / 'checkpoints'} already holds a fine-tuning run; use a new workdir")
    history: list[dict] = []
    best_epoch, best_value = 0, -np.inf
    base_key = jax.random.key(config.seed + 1)
    step = 0
    if config.eval_at_start:
        dev = score_predictions(spec.head, predictions(state.params, splits["dev"]), splits["dev"].labels)
        history.append({"epoch": 0, "step": 0, "train_loss": float("nan"), "dev": dev, "seconds": 0.0})
    try:
        for epoch in range(1, config.num_epochs + 1):
            start, losses = time.perf_counter(), []
            for batch in finetune_batches.iterate_batches(splits["train"], config.batch_size, shuffle=True,
                                                       seed=config.seed, epoch=epoch, drop_remainder=True,
                                                       buckets=config.length_buckets):
                arrays = {k: batch[k] for k in BATCH_KEYS}
                key = arrays["input_ids"].shape
                if key not in compiled:
                    global_shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in arrays.items()}
                    compiled[key], memory = sharded.compile_step(step_fn, mesh, shardings, state, global_shapes)
                    log.info("compiled the %s fine-tuning step for %s: %s", spec.name, key,
                             sharded.describe_memory(memory))
                state, metrics = compiled[key](state, sharded.put_batch(mesh, _local_rows(arrays)),
                                               jax.random.fold_in(base_key, step))
                step += 1
                losses.append(metrics["loss"])
            train_loss = float(np.mean(jax.device_get(losses)))
            dev = score_predictions(spec.head, predictions(state.params, splits["dev"]), splits["dev"].labels)
            record = {"epoch": epoch, "step": step, "train_loss": train_loss, "dev": dev,
                      "seconds": round(time.perf_counter() - start, 2)}
            history.append(record)
            value = _selection_value(dev, spec.metric)
            improved = value > best_value
            if improved:
                best_epoch, best_value = epoch, value
                best_ckpt.save(epoch, state.params, {**meta, "epoch": epoch, "dev": dev})
            report(f"[{spec.name}] epoch {epoch}/{config.num_epochs}: train loss {train_loss:.4f}, dev "
                   + ", ".join(f"{k} {v:.4f}" for k, v in dev.items()) + (" (best)" if improved else ""))
        if best_epoch == 0:
            raise ConfigError(f"task {spec.name!r}: the dev metric {spec.metric} was NaN in every epoch")
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state.params)
        best_params = best_ckpt.restore(best_epoch, target)
    finally:
        best_ckpt.close()
    test = score_predictions(spec.head, predictions(best_params, splits["test"]), splits["test"].labels)
    result = FinetuneResult(task=spec.name, metric=spec.metric, head=head, best_epoch=best_epoch,
                            dev=next(h["dev"] for h in history if h["epoch"] == best_epoch), test=test, history=history, params=best_params,
                            workdir=workdir)
    if jax.process_index() == 0:
        (workdir / "result.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    report(f"[{spec.name}] best dev epoch {best_epoch}; test " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
    return result
