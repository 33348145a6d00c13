"""The ``finetune`` stage: full fine-tuning of a head model on one labelled task, epoch by epoch.

    data (``tasks.finetune_data.TaskData``) -> tokenise -> the head objective (``objectives.head_objective``)
    and epoch batches -> ``trainer.train`` (the same loop, state init, sharded step, checkpoints and logging
    as every stage), with ``DevHook`` scoring dev at the end of each epoch and ``TrainConfig.keep_best``
    keeping the checkpoint of the best dev epoch -> test scored with the best parameters.

``FinetuneConfig`` counts in epochs; ``finetune`` turns it into a ``TrainConfig`` (steps = epochs x batches
per epoch, warmup = ``warmup_ratio`` of them, evaluation and logging once per epoch). One compiled step per
length bucket. With several processes every process builds the same global batch and passes its own rows;
dev/test predictions come back replicated, so every process scores them alike (process 0 writes files).

Checkpoints (``<workdir>/checkpoints/<step>/{model,meta,...}``): only the best epoch so far is kept (written
when the dev metric strictly improves). ``meta`` holds ``encoder_config``, ``head``, ``labels``, ``task``,
the epoch and its dev metrics. ``<workdir>/result.json`` holds the per-epoch history, the best epoch and the
test metrics. A fine-tuning workdir is not resumed (runs are minutes long). Fine-tuned heads are throwaway
backbone probes: nothing here feeds embedding training.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from scipy import stats
from sklearn.metrics import f1_score

from bilingual import artifacts, sharding
from bilingual.config import ConfigError, EncoderConfig
from bilingual.heads import HeadConfig
from bilingual.optim import OptimizerConfig
from bilingual.training import finetune_batches, objectives
from bilingual.training.hooks import Hook, StepEvent
from bilingual.training.trainer import TrainConfig, check_global_batch, train

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


# --------------------------------------------------------------------------------------------- loop


# --------------------------------------------------------------------------------- batches and hooks


class EpochBatches:
    """The train split's shuffled batches, epoch after epoch, as the trainer's batch iterator.

    Each process yields its own ``batch_size / process_count`` rows of the global batch. The state is
    ``{"epoch", "batch"}``; batches are a pure function of ``(seed, epoch)``, so ``set_state`` reopens the
    epoch and skips the batches already taken."""

    def __init__(self, split, batch_size: int, *, seed: int, buckets):
        self.split, self.batch_size, self.seed, self.buckets = split, batch_size, seed, buckets
        self.epoch, self.taken, self._batches = 1, 0, None

    def _open(self):
        self._batches = finetune_batches.iterate_batches(self.split, self.batch_size, shuffle=True, seed=self.seed,
                                                         epoch=self.epoch, drop_remainder=True, buckets=self.buckets)
        for _ in range(self.taken):
            next(self._batches)

    def __next__(self) -> dict:
        if self._batches is None:
            self._open()
        batch = next(self._batches, None)
        if batch is None:
            self.epoch, self.taken = self.epoch + 1, 0
            self._open()
            batch = next(self._batches)
        self.taken += 1
        return {**local_rows({k: batch[k] for k in objectives.HEAD_BATCH_KEYS}), "task": "finetune",
                "task_type": "head"}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "batch": self.taken}

    def set_state(self, state: dict) -> None:
        self.epoch, self.taken, self._batches = int(state["epoch"]), int(state["batch"]), None


def local_rows(batch: dict) -> dict:
    """This process's rows of a global batch that every process built alike."""
    n, i = jax.process_count(), jax.process_index()
    per = batch["input_ids"].shape[0] // n
    return {k: v[i * per:(i + 1) * per] for k, v in batch.items()}


class Predictor:
    """Logits ``[rows, num_labels]`` of a tokenised split, replicated on every process, in row order."""

    def __init__(self, model, mesh, param_shardings, num_labels: int, batch_size: int, buckets):
        self.mesh, self.num_labels, self.batch_size, self.buckets = mesh, num_labels, batch_size, buckets
        inputs = objectives.HEAD_BATCH_KEYS[:3]
        self.inputs = inputs
        self.fn = jax.jit(lambda params, b: model.apply({"params": params}, b["input_ids"], b["attention_mask"],
                                                        b["token_type_ids"], deterministic=True),
                          in_shardings=(param_shardings, {k: sharding.batch_sharding(mesh, 2) for k in inputs}),
                          out_shardings=NamedSharding(mesh, PartitionSpec()))

    def __call__(self, params, split) -> np.ndarray:
        from bilingual.training import sharded

        out = np.zeros((len(split), self.num_labels), np.float32)
        for batch in finetune_batches.iterate_batches(split, self.batch_size, buckets=self.buckets):
            arrays = sharded.put_batch(self.mesh, local_rows({k: batch[k] for k in self.inputs}))
            with sharding.sharding_context(self.mesh, sharding.LOGICAL_RULES):
                logits = np.asarray(jax.device_get(self.fn(params, arrays)))
            keep = batch["index"] >= 0
            out[batch["index"][keep]] = logits[keep].reshape(int(keep.sum()), -1)
        return out


class DevHook(Hook):
    """At the end of every epoch (and before training with ``at_start``): dev scored on the host,
    returned as ``dev/<metric>``; keeps the per-epoch history (train loss, dev metrics, seconds)."""

    def __init__(self, name: str, head_task: str, dev, steps_per_epoch: int, num_epochs: int, *,
                 at_start: bool, report: Callable[[str], None], selection: str):
        self.name, self.head_task, self.dev, self.steps_per_epoch = name, head_task, dev, steps_per_epoch
        self.num_epochs, self.at_start, self.report, self.selection = num_epochs, at_start, report, selection
        self.predictor: Optional[Predictor] = None
        self.history: list[dict] = []
        self.losses: list = []
        self.epoch_started = time.perf_counter()
        self.best = -np.inf

    def _score(self, event: StepEvent) -> dict:
        return score_predictions(self.head_task, self.predictor(event.state.params, self.dev), self.dev.labels)

    def start(self, event: StepEvent):
        self.epoch_started = time.perf_counter()
        if not self.at_start:
            return None
        dev = self._score(event)
        self.history.append({"epoch": 0, "step": 0, "train_loss": float("nan"), "dev": dev, "seconds": 0.0})
        return None  # epoch 0 is reported, never selected

    def __call__(self, event: StepEvent):
        self.losses.append(event.metrics["loss"])
        if event.step % self.steps_per_epoch:
            return None
        epoch = event.step // self.steps_per_epoch
        train_loss = float(np.mean(jax.device_get(self.losses)))
        dev = self._score(event)
        self.history.append({"epoch": epoch, "step": event.step, "train_loss": train_loss, "dev": dev,
                             "seconds": round(time.perf_counter() - self.epoch_started, 2)})
        value = _selection_value(dev, self.selection)
        improved = value > self.best
        self.best = max(self.best, value)
        self.report(f"[{self.name}] epoch {epoch}/{self.num_epochs}: train loss {train_loss:.4f}, dev "
                    + ", ".join(f"{k} {v:.4f}" for k, v in dev.items()) + (" (best)" if improved else ""))
        self.losses, self.epoch_started = [], time.perf_counter()
        return {f"dev/{k}": v for k, v in dev.items()}


# ---------------------------------------------------------------------------------------------- run


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
    workdir = artifacts.as_path(workdir)
    mesh = sharding.make_mesh(config.mesh)
    eval_batch = config.eval_batch_size or config.batch_size
    for name, value in (("batch_size", config.batch_size), ("eval_batch_size", eval_batch)):
        check_global_batch(f"FinetuneConfig.{name}", value, mesh)
    if config.num_epochs < 1:
        raise ConfigError(f"FinetuneConfig.num_epochs must be >= 1, got {config.num_epochs}")
    if config.max_length > config.model.max_length:
        raise ConfigError(f"FinetuneConfig.max_length={config.max_length} exceeds the encoder's "
                          f"max_length {config.model.max_length}")
    if (workdir / "checkpoints").exists() and any(p.name.isdigit() for p in (workdir / "checkpoints").iterdir()):
        raise ConfigError(f"{workdir / 'checkpoints'} already holds a fine-tuning run; use a new workdir")

    splits = {name: finetune_batches.tokenize(getattr(data, name), tokenizer, config.max_length)
              for name in ("train", "dev", "test")}
    steps_per_epoch = finetune_batches.num_batches(len(splits["train"]), config.batch_size, drop_remainder=True)
    if steps_per_epoch < 1:
        raise ConfigError(f"task {spec.name!r}: {len(splits['train'])} training rows are fewer than one "
                          f"batch of {config.batch_size}")
    total_steps = steps_per_epoch * config.num_epochs
    optimizer = dataclasses.replace(config.optimizer, total_steps=total_steps,
                                    warmup_steps=int(round(config.warmup_ratio * total_steps)))
    meta = {"labels": list(data.labels) if data.labels else None, "task": dataclasses.asdict(spec),
            "max_length": config.max_length, "init_from": config.init_from}
    objective = objectives.head_objective(config.model, head, dropout=config.dropout, meta=meta)
    run = TrainConfig(stage="finetune", model=config.model, optimizer=optimizer, num_steps=total_steps,
                      batch_size=config.batch_size, mesh=config.mesh, seed=config.seed, log_every=steps_per_epoch,
                      eval_every=steps_per_epoch, checkpoint_every=0, init_from=config.init_from,
                      keep_best=f"dev/{spec.metric}")
    predictor = Predictor(objective.model, mesh, _param_shardings(objective, optimizer, mesh), head.num_labels,
                          eval_batch, config.length_buckets)
    dev_hook = DevHook(spec.name, spec.head, splits["dev"], steps_per_epoch, config.num_epochs,
                       at_start=config.eval_at_start, report=report, selection=spec.metric)
    dev_hook.predictor = predictor
    epoch_meta = lambda event: {"epoch": event.step // steps_per_epoch,
                                "dev": {k[4:]: v for k, v in event.logged.items() if k.startswith("dev/")}}
    result = train(run, workdir, EpochBatches(splits["train"], config.batch_size, seed=config.seed,
                                              buckets=config.length_buckets),
                   hooks=[dev_hook], objective=objective, checkpoint_meta=epoch_meta)
    history = dev_hook.history
    trained = [h for h in history if h["epoch"] > 0]
    best = max(trained, key=lambda h: _selection_value(h["dev"], spec.metric))
    if np.isinf(_selection_value(best["dev"], spec.metric)):
        raise ConfigError(f"task {spec.name!r}: the dev metric {spec.metric} was NaN in every epoch")
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), result.state.params)
    _, _, best_params = artifacts.load_model_tree(workdir / "checkpoints", shardings=target)
    test = score_predictions(spec.head, predictor(best_params, splits["test"]), splits["test"].labels)
    outcome = FinetuneResult(task=spec.name, metric=spec.metric, head=head, best_epoch=best["epoch"],
                             dev=best["dev"], test=test, history=history, params=best_params, workdir=workdir)
    if jax.process_index() == 0:
        (workdir / "result.json").write_text(json.dumps(outcome.to_json(), indent=2) + "\n")
    report(f"[{spec.name}] best dev epoch {best['epoch']}; test " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
    return outcome


def _param_shardings(objective, optimizer: OptimizerConfig, mesh):
    from bilingual.optim import make_optimizer
    from bilingual.training import sharded

    example = np.zeros((1, 8), np.int32)
    return sharded.state_shardings(objective.model, make_optimizer(optimizer), mesh, example).params
