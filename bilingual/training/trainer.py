"""The trainer: one loop for the three stages, read top to bottom.

    config -> checks that fail before compiling -> mesh, model, optimiser -> state (resumed, initialised
    from the previous stage, or fresh) -> per task type: compile once, print memory -> loop: batch, step,
    log, evaluate, checkpoint; SIGTERM saves and stops cleanly.

Stages (TRAINING.md): ``mlm`` trains ``JinaBertForMaskedLM``; ``pairs`` and ``multitask`` train
``JinaBert`` with contrastive / STS losses, each batch's ``task_type`` picking its compiled step.
The batch iterator is any object with ``__next__`` (dicts of host-local numpy arrays plus ``task`` and
``task_type`` strings, as ``tasks.batching`` yields) and ``get_state()`` / ``set_state(state)``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from typing import Any, Callable, Optional, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bilingual import checkpoints, flops, sharding
from bilingual.config import ConfigError, EncoderConfig
from bilingual.optim import OptimizerConfig, make_optimizer, make_schedule
from bilingual.training import sharded, steps
from bilingual.training.checkpointing import TrainCheckpointer
from bilingual.training.metrics_log import MetricsLog

log = logging.getLogger("bilingual.train")

# Fields that define the parameters; dropout, dtype, attention implementation may change between stages.
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                       "feed_forward_type", "type_vocab_size", "qk_layernorm", "layer_layout")
STAGES = {"mlm": ("mlm",), "pairs": ("pairs",), "multitask": ("pairs", "retrieval", "sts")}


class BatchIterator(Protocol):
    def __next__(self) -> dict: ...
    def get_state(self) -> dict: ...
    def set_state(self, state: dict) -> None: ...


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides its data. ``batch_size`` is the global batch."""

    stage: str
    model: EncoderConfig
    optimizer: OptimizerConfig
    num_steps: int
    batch_size: int
    step: steps.StepConfig = steps.StepConfig()
    mesh: sharding.MeshConfig = sharding.MeshConfig()
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    init_from: Optional[str] = None
    peak_flops_per_device: Optional[float] = None


def validate(config: TrainConfig, mesh) -> None:
    """One-line reasons for configurations that cannot work."""
    if config.stage not in STAGES:
        raise ConfigError(f"TrainConfig.stage={config.stage!r} is unknown; expected one of {tuple(STAGES)}")
    divisor = sharding.batch_divisor(mesh)
    if config.batch_size % divisor:
        raise ConfigError(f"TrainConfig.batch_size={config.batch_size} is not divisible by the "
                                 f"data-parallel size {divisor} (mesh {dict(mesh.shape)})")
    if config.batch_size % jax.process_count():
        raise ConfigError(f"TrainConfig.batch_size={config.batch_size} is not divisible by the "
                                 f"{jax.process_count()} processes")
    chunks = config.step.gradcache_chunks
    if chunks < 1 or (chunks > 1 and config.batch_size % (chunks * divisor)):
        raise ConfigError(f"StepConfig.gradcache_chunks={chunks}: the batch of {config.batch_size} must "
                                 f"split into {chunks} chunks x {divisor} batch shards")
    if config.num_steps < 1:
        raise ConfigError(f"TrainConfig.num_steps must be >= 1, got {config.num_steps}")
    if config.step.sts_loss not in ("pearson", "mse"):
        raise ConfigError(f"StepConfig.sts_loss={config.step.sts_loss!r}: expected 'pearson' or 'mse'")
    if config.init_from is not None and not checkpoints.as_path(config.init_from).exists():
        raise ConfigError(f"TrainConfig.init_from={config.init_from!r} does not exist (the previous "
                                 "stage's checkpoint directory or a Hugging Face export)")


def load_initial_encoder(path: str) -> tuple[EncoderConfig, Any]:
    """Encoder parameters from an orbax checkpoint (any stage) or a Hugging Face export directory."""
    path_obj = checkpoints.as_path(path)
    if (path_obj / "config.json").exists():
        from bilingual.export.hf_import import import_hf  # the HF layout, when an export is given
        config, params, _ = import_hf(path_obj)
        return config, params
    return checkpoints.load_encoder(path_obj)


def load_matching_encoder(path: str, model: EncoderConfig, key: str) -> Any:
    """Encoder parameters at ``path`` (``load_initial_encoder``), after checking they have the architecture
    of ``model``; ``key`` names the config field in the error."""
    init_config, encoder_params = load_initial_encoder(path)
    different = {f: (getattr(init_config, f), getattr(model, f)) for f in ARCHITECTURE_FIELDS
                 if getattr(init_config, f) != getattr(model, f)}
    if different:
        raise ConfigError(f"{key}={path!r} holds a different architecture (checkpoint vs run): {different}")
    return encoder_params


@dataclasses.dataclass
class TrainResult:
    state: steps.TrainState
    history: list[dict]
    workdir: Any  # etils.epath.Path


def train(config: TrainConfig, workdir, batches: BatchIterator, *,
          eval_hook: Optional[Callable[[int, EncoderConfig, Any], dict]] = None,
          operative_config: str = "", stop_after: Optional[int] = None) -> TrainResult:
    """Run (or resume) the stage in ``workdir`` until ``config.num_steps``.

    ``stop_after`` ends the loop early at that step with a checkpoint, as a preemption would (tests).
    """
    workdir = checkpoints.as_path(workdir)  # local or gs://
    mesh = sharding.make_mesh(config.mesh)
    validate(config, mesh)
    model = steps.model_for_stage(config.stage, config.model)
    tx = make_optimizer(config.optimizer)
    example_ids = jnp.zeros((1, 8), jnp.int32)
    shardings = sharded.state_shardings(model, tx, mesh, example_ids)

    workdir.mkdir(parents=True, exist_ok=True)
    if operative_config and jax.process_index() == 0:
        (workdir / "operative_config.gin").write_text(operative_config)
    checkpointer = TrainCheckpointer(workdir / "checkpoints", keep=config.keep_checkpoints,
                                     async_save=config.async_checkpoints)
    meta = {"encoder_config": config.model.to_dict(), "stage": config.stage,
            "model": "masked_lm" if config.stage == "mlm" else "encoder"}

    # State: resume this run, else start from the previous stage / an import, else fresh.
    resume_step = checkpointer.latest_step()
    if resume_step is not None:
        abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                nn.meta.unbox(sharded.abstract_state(model, tx, example_ids)), shardings)
        state, _, data_state = checkpointer.restore(resume_step, abstract)
        batches.set_state(data_state)
        log.info("resumed from %s at step %d", checkpointer.directory / str(resume_step), resume_step)
    else:
        encoder_params = None
        if config.init_from:
            encoder_params = load_matching_encoder(config.init_from, config.model, "TrainConfig.init_from")
        state, _ = sharded.init_state(model, tx, mesh, jax.random.key(config.seed), example_ids, encoder_params)

    groups = sharding.batch_divisor(mesh)
    step_fns = {t: (steps.make_mlm_step(model, tx, config.step) if t == "mlm"
                    else steps.make_contrastive_step(model, tx, t, config.step, groups=groups))
                for t in STAGES[config.stage]}
    compiled: dict[str, Any] = {}
    schedule = make_schedule(config.optimizer)
    peak = config.peak_flops_per_device or flops.device_peak_flops(jax.devices()[0]) or flops.measure_matmul_peak()
    metrics_log = MetricsLog(workdir / "tensorboard", total_steps=config.num_steps,
                             peak_flops=peak * jax.device_count())

    stop = {"signal": None}
    previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum)) \
        if _in_main_thread() else None
    history: list[dict] = []
    base_key = jax.random.key(config.seed)
    step = int(state.step)
    try:
        while step < config.num_steps:
            host_batch = next(batches)
            task_type = host_batch["task_type"]
            if task_type not in step_fns:
                raise ConfigError(f"stage {config.stage!r} got a batch of task type {task_type!r} "
                                         f"(task {host_batch.get('task')!r}); expected {tuple(step_fns)}")
            arrays = {k: v for k, v in host_batch.items() if k in steps.batch_keys(task_type)}
            global_batch = _global_shapes(arrays)
            if task_type not in compiled:
                compiled[task_type], memory = sharded.compile_step(step_fns[task_type], mesh, shardings, state,
                                                                   global_batch)
                log.info("compiled the %s step: %s", task_type, sharded.describe_memory(memory))
                print(f"[{config.stage}] compiled {task_type} step; {sharded.describe_memory(memory)}", flush=True)
            start = time.perf_counter()
            state, metrics = compiled[task_type](state, sharded.put_batch(mesh, arrays),
                                                 jax.random.fold_in(base_key, step))
            step += 1
            record = metrics_log.record(step, task_type, metrics, arrays, start,
                                        train_flops=_train_flops(config, task_type, global_batch),
                                        learning_rate=float(schedule(step - 1)),
                                        flush=step % config.log_every == 0 or step == config.num_steps)
            if record:
                history.append(record)
            if eval_hook and config.eval_every and (step % config.eval_every == 0 or step == config.num_steps):
                encoder = state.params["bert"] if config.stage == "mlm" else state.params
                metrics_log.write_eval(step, eval_hook(step, config.model, encoder))
            preempted = stop["signal"] is not None or (stop_after is not None and step >= stop_after)
            if step % config.checkpoint_every == 0 or step == config.num_steps or preempted:
                checkpointer.save(state, meta, batches.get_state(), force=preempted or step == config.num_steps)
            if preempted:
                log.warning("stopping at step %d (%s); checkpoint saved", step,
                            "SIGTERM" if stop["signal"] else "stop_after")
                break
    finally:
        checkpointer.close()
        metrics_log.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return TrainResult(state=state, history=history, workdir=workdir)


def _global_shapes(local: dict) -> dict:
    """Host-local arrays -> global ``ShapeDtypeStruct`` (the batch axis times the process count)."""
    n = jax.process_count()
    return {k: jax.ShapeDtypeStruct((v.shape[0] * n,) + v.shape[1:], v.dtype) for k, v in local.items()}


def _train_flops(config: TrainConfig, task_type: str, batch: dict) -> float:
    """Matmul FLOPs of one step on the global batch (3x forward; GradCache adds a forward)."""
    model = config.model
    if task_type == "mlm":
        b, length = batch["input_ids"].shape
        positions = b * (config.step.max_predictions or length)
        return 3 * (flops.encoder_forward_flops(model, b, length) + flops.mlm_head_forward_flops(model, positions))
    factor = 4 if config.step.gradcache_chunks > 1 else 3
    total = 0.0
    for ids_key, _ in steps.CONTRASTIVE_VIEWS[task_type].values():
        shape = batch[ids_key].shape
        total += flops.encoder_forward_flops(model, math.prod(shape[:-1]), shape[-1])
    return factor * total


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
