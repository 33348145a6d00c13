"""AdamW with linear warmup and linear/cosine decay, global-norm clipping, no decay on LayerNorm or biases."""

from __future__ import annotations

import dataclasses
from typing import Optional

import optax
from flax import traverse_util

from bilingual.config import ConfigError

DECAY_SCHEDULES = ("linear", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser hyper-parameters (RoBERTa-style defaults; ours, TRAINING.md leaves them open).

    ``total_steps`` is the length of the schedule (warmup included; None: the run's ``num_steps``, filled
    in by ``TrainConfig.resolved``); ``end_lr_ratio`` the final fraction of the peak learning rate.
    """

    learning_rate: float = 1e-4
    warmup_steps: int = 1000
    total_steps: Optional[int] = None
    decay: str = "linear"
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    max_grad_norm: float = 1.0

    def __post_init__(self):
        if self.decay not in DECAY_SCHEDULES:
            raise ConfigError(f"OptimizerConfig.decay must be one of {DECAY_SCHEDULES}, got {self.decay!r}")
        if self.warmup_steps < 0 or (self.total_steps is not None and
                                     (self.total_steps < 1 or self.warmup_steps > self.total_steps)):
            raise ConfigError(f"OptimizerConfig: need 0 <= warmup_steps ({self.warmup_steps}) <= total_steps "
                             f"({self.total_steps}) and total_steps >= 1")
        if self.learning_rate <= 0:
            raise ConfigError(f"OptimizerConfig.learning_rate must be > 0, got {self.learning_rate}")


def make_schedule(config: OptimizerConfig) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then ``decay`` to ``end_lr_ratio * peak`` at ``total_steps``."""
    if config.total_steps is None:
        raise ValueError("OptimizerConfig.total_steps is unset: resolve it first (TrainConfig.resolved)")
    peak, end = config.learning_rate, config.learning_rate * config.end_lr_ratio
    decay_steps = max(config.total_steps - config.warmup_steps, 1)
    if config.decay == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif config.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.end_lr_ratio)
    else:
        decay = optax.constant_schedule(peak)
    warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def decay_mask(params):
    """True where weight decay applies: kernels and embedding tables; False for LayerNorm and biases."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: path[-1] in ("kernel", "embedding") for path in flat})


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adamw(make_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                    weight_decay=config.weight_decay, mask=decay_mask),
    )
