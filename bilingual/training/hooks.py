"""Trainer hooks: called after every step, each decides for itself whether to act.

    hook.start(event) -> dict | None      once, before the first step this process runs (after init/resume)
    hook(event)       -> dict | None      after every step

A hook returns scalars to log, each name carrying the hook's one prefix (``eval/``, ``dev/``), or None; the
trainer writes them to TensorBoard and the console unchanged. Hooks run in order: the trainer's metrics
hook, the caller's hooks (evaluation), then the checkpoint hook, so a best-checkpoint rule sees this step's
evaluation in ``event.logged``.

Cadence: ``due(step, every, event)`` is true every ``every`` steps and at the final step (``event.last``),
whatever ``num_steps`` is, so the last step always evaluates and saves. An early stop (SIGTERM,
``stop_after``) sets ``event.stopping``: metrics flush and a checkpoint is saved, evaluation is skipped.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import numpy as np


@dataclasses.dataclass
class StepEvent:
    """What a hook sees. ``step`` counts finished updates (0 in ``start``); arrays are host-local."""

    step: int
    num_steps: int
    state: Any  # steps.TrainState, sharded over the mesh
    mesh: Any
    model_config: Any  # EncoderConfig
    encoder_params: Callable[[], Any]  # the JinaBert parameters inside state.params
    last: bool = False  # the run's final step
    stopping: bool = False  # an early stop: save and flush, skip evaluation
    task_type: Optional[str] = None
    metrics: Optional[dict] = None  # this step's device metrics
    batch: Optional[dict] = None  # this step's host-local arrays
    started: float = 0.0  # time.perf_counter() when the step began
    logged: dict = dataclasses.field(default_factory=dict)  # what earlier hooks returned this step


def due(step: int, every: int, event: StepEvent) -> bool:
    """Every ``every`` steps (0: never on cadence) and always at the final step."""
    return event.last or (every > 0 and step % every == 0)


class Hook:
    """Base class: override ``__call__`` (and ``start`` when something must happen before step one)."""

    def start(self, event: StepEvent) -> Optional[dict]:
        return None

    def __call__(self, event: StepEvent) -> Optional[dict]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def gathered(params):
    """``params`` as every process can read them whole: on several processes the arrays span devices of
    other hosts, so each process receives a full host copy (an all-gather); on one process, unchanged."""
    if jax.process_count() == 1:
        return params
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)


class EvalHook(Hook):
    """Runs ``evaluate(step, model_config, encoder_params) -> {name: value}`` every ``every_n_steps`` and at
    the final step; returns the values as ``<prefix><name>``."""

    def __init__(self, evaluate: Callable[[int, Any, Any], dict], every_n_steps: int, prefix: str = "eval/"):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.evaluate, self.every, self.prefix = evaluate, every_n_steps, prefix

    def __call__(self, event: StepEvent) -> Optional[dict]:
        if event.stopping or not due(event.step, self.every, event):
            return None
        values = self.evaluate(event.step, event.model_config, gathered(event.encoder_params()))
        return {f"{self.prefix}{name}": float(value) for name, value in values.items()}


class CheckpointHook(Hook):
    """Saves the train state with its metadata and data position.

    Without ``best``: every ``every`` steps, at the final step and on an early stop (keep-N by the
    checkpointer). With ``best`` (a logged metric name, higher is better, NaN never best): only on steps
    where that metric strictly improves, so the kept checkpoint is the best one.
    """

    def __init__(self, checkpointer, *, every: int, meta: Callable[[StepEvent], dict],
                 data_state: Callable[[], Optional[dict]], best: Optional[str] = None):
        self.checkpointer, self.every, self.meta, self.data_state = checkpointer, every, meta, data_state
        self.best, self.best_value = best, -math.inf

    def __call__(self, event: StepEvent) -> Optional[dict]:
        if self.best is not None:
            if self.best not in event.logged:
                return None
            value = event.logged[self.best]
            value = -math.inf if np.isnan(value) else value
            if value <= self.best_value:
                return None
            self.best_value = value
        elif not (event.stopping or due(event.step, self.every, event)):
            return None
        force = event.last or event.stopping or self.best is not None
        self.checkpointer.save(event.state, self.meta(event), self.data_state(), force=force)
        return None

    def close(self) -> None:
        self.checkpointer.close()
