"""Training metrics: a console progress line and TensorBoard event files (clu metric writers).

``MetricsLog`` is the trainer's first hook. Metrics stay on device between log points; every
``log_every`` steps (and at the final step or an early stop) they are fetched once, averaged over the
window and written with throughput (real tokens/s), MFU against the mesh's peak and an ETA.

Names are stable whatever the window holds: ``loss`` is the mean loss over the window's steps, and every
step metric is also written as ``<task_type>/<name>`` (``mlm/loss``, ``sts/sts_pearson``, ...), so a
multi-task run's curves never change tag when the mix of task types in a window changes. Scalars that other
hooks return (``eval/...``) are written by ``write`` with the names they come with. Only process 0 writes
event files.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np
from clu import metric_writers

from bilingual.training.hooks import Hook, StepEvent, due


class MetricsLog(Hook):
    """``flops(task_type, batch) -> float`` gives one step's FLOPs on the global batch (for MFU);
    ``learning_rate(step) -> float`` the schedule."""

    def __init__(self, logdir, *, total_steps: int, peak_flops: float, log_every: int,
                 flops: Callable[[str, dict], float], learning_rate: Callable[[int], float]):
        self.writer = metric_writers.create_default_writer(str(logdir), just_logging=jax.process_index() > 0,
                                                           asynchronous=False)
        self.total_steps, self.peak_flops, self.log_every = total_steps, peak_flops, log_every
        self.flops, self.learning_rate = flops, learning_rate
        self.window: list[tuple] = []
        self.history: list[dict] = []

    def __call__(self, event: StepEvent):
        tokens = sum(int(np.sum(v)) for k, v in event.batch.items() if k.endswith("mask")) * jax.process_count()
        self.window.append((event.task_type, event.metrics, tokens, self.flops(event.task_type, event.batch),
                            event.started))
        if not (event.stopping or due(event.step, self.log_every, event)):
            return None
        self.history.append(self._flush(event.step))
        return None

    def _flush(self, step: int) -> dict:
        fetched = jax.device_get([w[1] for w in self.window])
        elapsed = time.perf_counter() - self.window[0][4]
        learning_rate = float(self.learning_rate(step - 1))
        record = {"step": step, "learning_rate": learning_rate,
                  "tokens_per_s": sum(w[2] for w in self.window) / elapsed,
                  "mfu": sum(w[3] for w in self.window) / elapsed / self.peak_flops,
                  "seconds_per_step": elapsed / len(self.window),
                  "loss": float(np.mean([values["loss"] for values in fetched]))}
        by_type: dict[str, list] = {}
        for (task_type, *_), values in zip(self.window, fetched):
            by_type.setdefault(task_type, []).append(values)
        for task_type, values in by_type.items():
            for key in values[0]:
                record[f"{task_type}/{key}"] = float(np.mean([v[key] for v in values]))
        self.window.clear()
        eta = record["seconds_per_step"] * (self.total_steps - step)
        print(f"step {step}/{self.total_steps}  loss {record['loss']:.4f}  lr {learning_rate:.2e}  "
              f"{record['tokens_per_s']:.0f} tok/s  MFU {record['mfu']:.1%}  ETA {_hms(eta)}", flush=True)
        self.writer.write_scalars(step, {k: v for k, v in record.items() if k != "step"})
        return record

    def write(self, step: int, scalars: dict) -> None:
        """Write other hooks' scalars as named (they carry their own prefix) and print them."""
        if not scalars:
            return
        print(f"@ step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()), flush=True)
        self.writer.write_scalars(step, {k: float(v) for k, v in scalars.items()})

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
