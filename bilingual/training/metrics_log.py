"""Training metrics: a console progress line and TensorBoard event files (clu metric writers).

Metrics stay on device between log points; every ``log_every`` steps they are fetched once, averaged
over the window, and written with throughput (real tokens/s), MFU against the mesh's peak and an ETA.
Only process 0 writes event files.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from clu import metric_writers


class MetricsLog:
    def __init__(self, logdir, *, total_steps: int, peak_flops: float):
        self.writer = metric_writers.create_default_writer(str(logdir), just_logging=jax.process_index() > 0,
                                                           asynchronous=False)
        self.total_steps = total_steps
        self.peak_flops = peak_flops
        self.window: list[tuple] = []
        self.started = time.perf_counter()
        self.first_step_time = None

    def record(self, step: int, task_type: str, metrics, batch: dict, start: float, *, train_flops: float,
               learning_rate: float, flush: bool):
        tokens = sum(int(np.sum(v)) for k, v in batch.items() if k.endswith("mask")) * jax.process_count()
        self.window.append((task_type, metrics, tokens, train_flops, start))
        if not flush:
            return None
        fetched = jax.device_get([m for _, m, _, _, _ in self.window])
        elapsed = time.perf_counter() - self.window[0][4]
        steps_in_window = len(self.window)
        record = {"step": step, "learning_rate": learning_rate,
                  "tokens_per_s": sum(w[2] for w in self.window) / elapsed,
                  "mfu": sum(w[3] for w in self.window) / elapsed / self.peak_flops,
                  "seconds_per_step": elapsed / steps_in_window}
        by_type: dict[str, list] = {}
        for (task_type_i, _, _, _, _), values in zip(self.window, fetched):
            by_type.setdefault(task_type_i, []).append(values)
        for task_type_i, values in by_type.items():
            for key in values[0]:
                mean = float(np.mean([v[key] for v in values]))
                record[key if len(by_type) == 1 else f"{task_type_i}/{key}"] = mean
        self.window.clear()
        eta = record["seconds_per_step"] * (self.total_steps - step)
        loss = record.get("loss", np.mean([v for k, v in record.items() if k.endswith("/loss")] or [np.nan]))
        print(f"step {step}/{self.total_steps}  loss {loss:.4f}  lr {learning_rate:.2e}  "
              f"{record['tokens_per_s']:.0f} tok/s  MFU {record['mfu']:.1%}  ETA {_hms(eta)}", flush=True)
        self.writer.write_scalars(step, {k: v for k, v in record.items() if k != "step"})
        return record

    def write_eval(self, step: int, metrics: dict) -> None:
        if not metrics:
            return
        print(f"eval @ step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()), flush=True)
        self.writer.write_scalars(step, {f"eval/{k}": float(v) for k, v in metrics.items()})

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
