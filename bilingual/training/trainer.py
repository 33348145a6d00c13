"""The trainer: one loop for every stage, read top to bottom.

    config -> checks that fail before compiling -> workdir lock (``workdir_lock``: one run per workdir)
    -> mesh, objective (model, steps), optimiser -> state (resumed after checking the checkpoints hold the
    run's model, and verified against their checksums; initialised from the previous stage; or fresh)
    -> loop: batch, compile once per batch shape, step, hooks (metrics, evaluation, checkpoint: each decides
    when to act); SIGTERM saves and stops.

The objective (``objectives.py``) is all that differs between stages: ``mlm`` trains the masked-LM model,
``pairs`` / ``multitask`` the encoder with contrastive and STS losses, ``finetune`` a head model
(``finetune.py`` builds its objective, batches and dev hook and calls ``train``). The batch iterator is any
object with ``__next__`` (dicts of host-local numpy arrays plus ``task`` and ``task_type`` strings, as
``tasks.batching`` yields) and ``get_state()`` / ``set_state(state)``.

``TrainConfig.batch_size`` is always the global batch (every process passes its own
``batch_size / process_count`` rows). ``OptimizerConfig.total_steps`` defaults to ``num_steps``.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from typing import Any, Callable, Optional, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bilingual import artifacts, flops, sharding
from bilingual.config import ConfigError, EncoderConfig
from bilingual.optim import OptimizerConfig, make_optimizer, make_schedule
from bilingual.training import objectives, sharded, steps, workdir_lock
from bilingual.training.hooks import CheckpointHook, Hook, StepEvent
from bilingual.training.metrics_log import MetricsLog

log = logging.getLogger("bilingual.train")

STAGES = objectives.STAGES
DROPOUT_PRNGS = ("threefry2x32", "rbg", "unsafe_rbg")  # jax.random implementations (TrainConfig.dropout_prng)


class BatchIterator(Protocol):
    def __next__(self) -> dict: ...
    def get_state(self) -> dict: ...
    def set_state(self, state: dict) -> None: ...


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides its data. ``batch_size`` is the global batch.

    ``tokenizer``: the run's tokenizer directory, recorded with every checkpoint (and its vocabulary must
    fit ``model.vocab_size``). ``keep_best``: a logged metric name (e.g. ``dev/accuracy``); when set, a
    checkpoint is written only when that metric improves, so the kept one is the best (fine-tuning).
    ``dropout_prng``: the ``jax.random`` implementation of the per-step (dropout) key: ``threefry2x32``
    (the default, identical on every backend and sharding) or ``rbg`` / ``unsafe_rbg`` (XLA's
    RngBitGenerator). With ``encoder.remat`` on TPU threefry's bits defeat the rematerialisation: XLA
    keeps every layer's recomputed activations live at once (measured with libtpu for a v5e chip, tiny
    encoder, 4 layers, 8 x 512 tokens, hidden dropout 0.1: temporaries 341 MiB with remat against 158 MiB
    without; 12 MiB with ``rbg``); the TPU MLM run files use ``rbg``, the pairs and multi-task ones not
    (the pairs GradCache step keeps 10x more temporaries with it: README). Parameter initialisation always
    uses threefry, so this changes no starting point.
    """

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
    tokenizer: Optional[str] = None
    keep_best: Optional[str] = None
    peak_flops_per_device: Optional[float] = None
    dropout_prng: str = "threefry2x32"

    def resolved(self) -> "TrainConfig":
        """This config with derived values filled in: the schedule length defaults to ``num_steps``."""
        if self.optimizer.total_steps is None:
            return dataclasses.replace(self, optimizer=dataclasses.replace(self.optimizer, total_steps=self.num_steps))
        return self


def validate(config: TrainConfig, mesh) -> None:
    """One-line reasons for configurations that cannot work."""
    if config.stage not in STAGES:
        raise ConfigError(f"TrainConfig.stage={config.stage!r} is unknown; expected one of {tuple(STAGES)}")
    check_global_batch("TrainConfig.batch_size", config.batch_size, mesh)
    divisor = sharding.batch_divisor(mesh)
    chunks = config.step.gradcache_chunks
    if chunks < 1 or (chunks > 1 and config.batch_size % (chunks * divisor)):
        raise ConfigError(f"StepConfig.gradcache_chunks={chunks}: the batch of {config.batch_size} must "
                          f"split into {chunks} chunks x {divisor} batch shards")
    if config.num_steps < 1:
        raise ConfigError(f"TrainConfig.num_steps must be >= 1, got {config.num_steps}")
    if config.optimizer.total_steps < config.num_steps:
        raise ConfigError(f"OptimizerConfig.total_steps={config.optimizer.total_steps} is shorter than "
                          f"TrainConfig.num_steps={config.num_steps} (leave it unset: it defaults to num_steps)")
    if config.dropout_prng not in DROPOUT_PRNGS:
        raise ConfigError(f"TrainConfig.dropout_prng={config.dropout_prng!r}: expected one of {DROPOUT_PRNGS}")
    if config.step.sts_loss not in ("pearson", "mse"):
        raise ConfigError(f"StepConfig.sts_loss={config.step.sts_loss!r}: expected 'pearson' or 'mse'")
    if config.init_from is not None and not artifacts.as_path(config.init_from).exists():
        raise ConfigError(f"TrainConfig.init_from={config.init_from!r} does not exist (the previous "
                          "stage's checkpoint directory or a Hugging Face export)")
    if config.tokenizer is not None:
        size = tokenizer_size(config.tokenizer)
        if size > config.model.vocab_size:
            raise ConfigError(f"TrainConfig.tokenizer={config.tokenizer!r} has {size} tokens, more than "
                              f"encoder.vocab_size={config.model.vocab_size}")


def tokenizer_size(path: str) -> int:
    """Tokens in the tokenizer at ``path``; a missing or broken one is a ``ConfigError`` naming the key."""
    from bilingual import tokenizer as tokenizer_lib

    try:
        return tokenizer_lib.load(path).get_vocab_size()
    except (tokenizer_lib.TokenizerError, OSError, ValueError) as err:
        raise ConfigError(f"TrainConfig.tokenizer={path!r}: {err}") from err


def check_global_batch(key: str, value: int, mesh) -> None:
    """The one rule for a global batch: it splits evenly over the batch shards of the mesh and over the
    processes (each process passes ``value / process_count`` rows)."""
    divisor = sharding.batch_divisor(mesh)
    if value % divisor:
        raise ConfigError(f"{key}={value} is not divisible by the data-parallel size {divisor} "
                          f"(mesh {dict(mesh.shape)})")
    if value % jax.process_count():
        raise ConfigError(f"{key}={value} is not divisible by the {jax.process_count()} processes")


@dataclasses.dataclass
class TrainResult:
    state: steps.TrainState
    history: list[dict]  # the metrics log's records, one per log window
    workdir: Any  # etils.epath.Path


def train(config: TrainConfig, workdir, batches: BatchIterator, *, hooks: Sequence[Hook] = (),
          objective: Optional[objectives.Objective] = None, operative_config: str = "",
          checkpoint_meta: Optional[Callable[[StepEvent], dict]] = None,
          stop_after: Optional[int] = None) -> TrainResult:
    """Run (or resume) the stage in ``workdir`` until ``config.num_steps``.

    ``hooks`` (e.g. an ``EvalHook``) run after the metrics log and before the checkpoint hook every step.
    ``objective`` defaults to the one of ``config.stage``; ``checkpoint_meta(event)`` adds to the metadata
    of each checkpoint (fine-tuning records the epoch and its dev metrics). ``stop_after`` ends the loop
    early at that step with a checkpoint, as a preemption would (tests). Process 0 holds the workdir's lock
    until this returns or raises; a second run in the same workdir raises ``WorkdirLocked`` on every process.
    """
    config = config.resolved()
    workdir = artifacts.as_path(workdir)  # local or gs://
    mesh = sharding.make_mesh(config.mesh)
    validate(config, mesh)
    workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lock.hold(workdir):
        return _train(config, workdir, mesh, batches, hooks, objective, operative_config, checkpoint_meta,
                      stop_after)


def _train(config: TrainConfig, workdir, mesh, batches: BatchIterator, hooks: Sequence[Hook],
           objective: Optional[objectives.Objective], operative_config: str,
           checkpoint_meta: Optional[Callable[[StepEvent], dict]], stop_after: Optional[int]) -> TrainResult:
    """``train`` in a locked workdir; from the checkpointer's creation on, the hooks (and with them the
    checkpointer) are closed however it ends."""
    objective, tx, example_ids, shardings, step_fns = build_steps(config, mesh, objective)
    if operative_config and jax.process_index() == 0:
        (workdir / "operative_config.gin").write_text(operative_config)
    meta = {"encoder_config": config.model.to_dict(), "stage": config.stage, "model": objective.model_kind,
            **objective.meta}
    compiled: dict[tuple, Any] = {}
    peak = config.peak_flops_per_device or flops.device_peak_flops(jax.devices()[0]) or flops.measure_matmul_peak()
    metrics_log = MetricsLog(workdir / "tensorboard", total_steps=config.num_steps,
                             peak_flops=peak * jax.device_count(), log_every=config.log_every,
                             flops=lambda t, b: objective.flops(t, _global_shapes(b)),
                             learning_rate=make_schedule(config.optimizer))
    checkpointer = artifacts.TrainCheckpointer(
        workdir / "checkpoints", keep=1 if config.keep_best else config.keep_checkpoints,
        async_save=config.async_checkpoints and not config.keep_best, tokenizer=config.tokenizer)
    checkpoint_hook = CheckpointHook(checkpointer, every=config.checkpoint_every,
                                     meta=lambda event: {**meta, **(checkpoint_meta(event) if checkpoint_meta else {})},
                                     data_state=batches.get_state, best=config.keep_best)
    all_hooks = [metrics_log, *hooks, checkpoint_hook]

    def event_for(step, **fields) -> StepEvent:
        return StepEvent(step=step, num_steps=config.num_steps, state=state, mesh=mesh, model_config=config.model,
                         encoder_params=lambda: objective.encoder_params(state.params), **fields)

    stop = {"signal": None}
    previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum)) \
        if threading.current_thread() is threading.main_thread() else None
    base_key = jax.random.key(config.seed, impl=config.dropout_prng)
    try:
        state = _initial_state(config, objective, tx, mesh, example_ids, shardings, checkpointer, meta, batches)
        step = int(state.step)
        _run_hooks(all_hooks, event_for(step), metrics_log, start=True)
        while step < config.num_steps:
            host_batch = next(batches)
            task_type = host_batch["task_type"]
            if task_type not in step_fns:
                raise ConfigError(f"stage {config.stage!r} got a batch of task type {task_type!r} "
                                  f"(task {host_batch.get('task')!r}); expected {tuple(step_fns)}")
            arrays = {k: v for k, v in host_batch.items() if k in objective.batch_keys(task_type)}
            key = (task_type,) + tuple(sorted((k, v.shape) for k, v in arrays.items()))
            if key not in compiled:
                problem = steps.packed_batch_error(task_type, _global_shapes(arrays), sharding.batch_divisor(mesh),
                                                   config.step.gradcache_chunks)
                if problem:
                    raise ConfigError(problem)
                compiled[key], memory = sharded.compile_step(step_fns[task_type], mesh, shardings, state,
                                                             _global_shapes(arrays), rng_impl=config.dropout_prng)
                log.info("compiled the %s step: %s", task_type, sharded.describe_memory(memory))
                print(f"[{config.stage}] compiled {task_type} step; {sharded.describe_memory(memory)}", flush=True)
            start = time.perf_counter()
            state, metrics = compiled[key](state, sharded.put_batch(mesh, arrays), jax.random.fold_in(base_key, step))
            step += 1
            stopping = stop["signal"] is not None or (stop_after is not None and step >= stop_after)
            event = event_for(step, last=step == config.num_steps, stopping=stopping and step < config.num_steps,
                              task_type=task_type, metrics=metrics, batch=arrays, started=start)
            _run_hooks(all_hooks, event, metrics_log)
            if stopping:
                log.warning("stopping at step %d (%s); checkpoint saved", step,
                            "SIGTERM" if stop["signal"] else "stop_after")
                break
    finally:
        for hook in all_hooks:
            hook.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return TrainResult(state=state, history=metrics_log.history, workdir=workdir)


def build_steps(config: TrainConfig, mesh, objective: Optional[objectives.Objective] = None):
    """What the loop compiles, built once per run (and ahead of time by ``launch.compile_for``):
    ``(objective, tx, example_ids, state_shardings, step_fns)``, ``step_fns`` one uncompiled step per task
    type of the stage (``sharded.compile_step`` compiles one for a batch shape)."""
    objective = objective or objectives.for_stage(config.stage, config.model, config.step)
    tx = make_optimizer(config.optimizer)
    example_ids = jnp.zeros((1, 8), jnp.int32)
    shardings = sharded.state_shardings(objective.model, tx, mesh, example_ids)
    groups = sharding.batch_divisor(mesh)
    step_fns = {t: objective.make_step(t, tx, groups) for t in objective.task_types}
    return objective, tx, example_ids, shardings, step_fns


def _initial_state(config: TrainConfig, objective, tx, mesh, example_ids, shardings, checkpointer, meta: dict,
                   batches: BatchIterator) -> steps.TrainState:
    """Resume this run (after checking the checkpoints hold its model), else start from the previous stage
    or an import (``init_from``), else fresh."""
    resume_step = checkpointer.latest_step()
    if resume_step is None:
        encoder_params = None
        if config.init_from:
            encoder_params = artifacts.load_matching_encoder(config.init_from, config.model, "TrainConfig.init_from")
            if jax.process_index() == 0:
                print(f"[{config.stage}] encoder initialised from {config.init_from}", flush=True)
        state, _ = sharded.init_state(objective.model, tx, mesh, jax.random.key(config.seed), example_ids,
                                      encoder_params, merge=objective.merge_encoder)
        return state
    check_resumable(checkpointer.read_meta(resume_step), meta, config.model, checkpointer.directory)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            nn.meta.unbox(sharded.abstract_state(objective.model, tx, example_ids)), shardings)
    state, _, data_state = checkpointer.restore(resume_step, abstract)
    try:
        batches.set_state(data_state)
    except (ValueError, TypeError, KeyError) as err:
        raise artifacts.CheckpointError(f"checkpoint {checkpointer.directory / str(resume_step)}: its data "
                                        f"iterator state cannot be restored ({err})") from err
    log.info("resumed from %s at step %d", checkpointer.directory / str(resume_step), resume_step)
    return state


def check_resumable(recorded: dict, run_meta: dict, model: EncoderConfig, directory) -> None:
    """Before restoring: the checkpoints in ``directory`` hold the run's architecture, stage and model kind
    (every step of a workdir holds the same ones), else a ``ConfigError`` naming what differs."""
    different = artifacts.encoder_config_of(recorded).architecture_differences(model)
    different.update({key: (recorded.get(key), run_meta.get(key)) for key in ("stage", "model")
                      if recorded.get(key) != run_meta.get(key)})
    if different:
        raise ConfigError(f"the checkpoints in {directory} hold another model (checkpoint vs run): {different}; "
                          "every step there has it, so use another workdir or make the config match")


def _run_hooks(hooks: Sequence[Hook], event: StepEvent, metrics_log: MetricsLog, start: bool = False) -> None:
    """Each hook in order; what one returns is logged and visible to the next ones (``event.logged``)."""
    for hook in hooks:
        scalars = hook.start(event) if start else hook(event)
        if scalars:
            event.logged.update(scalars)
            metrics_log.write(event.step, scalars)


def _global_shapes(local: dict) -> dict:
    """Host-local arrays -> global ``ShapeDtypeStruct`` (the batch axis times the process count)."""
    n = jax.process_count()
    return {k: jax.ShapeDtypeStruct((v.shape[0] * n,) + v.shape[1:], v.dtype) for k, v in local.items()}
