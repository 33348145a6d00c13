"""gin registrations for launch scripts: the library stays gin-free, launch binds it.

Names usable in gin files:
  encoder(preset, **overrides)        -> EncoderConfig            (bilingual.config.get_config)
  OptimizerConfig, StepConfig, MeshConfig, TrainConfig            (frozen dataclasses)
  data.name / data.split / data.options                           the batch iterator (tasks.batching)
  run.workdir_suffix, run.eval_suite, ...                         launch-level settings
  FinetuneConfig, TaskSpec, head.*, finetune_task.*              the ``finetune`` stage (TrainConfig.stage)
  topology.name                                                   the run's TPU slice (launch.compile_for)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import gin

from bilingual import config as model_config
from bilingual import optim, sharding
from bilingual.training import finetune, steps, trainer
from launch.cli import parse_gin as parse  # noqa: F401  (the launchers parse gin here)
from tasks import finetune_data

encoder = gin.external_configurable(model_config.get_config, "encoder")
OptimizerConfig = gin.external_configurable(optim.OptimizerConfig, "OptimizerConfig")
StepConfig = gin.external_configurable(steps.StepConfig, "StepConfig")
MeshConfig = gin.external_configurable(sharding.MeshConfig, "MeshConfig")
TrainConfig = gin.external_configurable(trainer.TrainConfig, "TrainConfig")
FinetuneConfig = gin.external_configurable(finetune.FinetuneConfig, "FinetuneConfig")
TaskSpec = gin.external_configurable(finetune_data.TaskSpec, "TaskSpec")


@gin.configurable("data")
def data_settings(name: str = gin.REQUIRED, split: str = "train", seed: int = 0,
                  options: Optional[dict[str, Any]] = None) -> dict:
    """Which task or mixture feeds the stage, and its options (sequence lengths, tokenizer, files...)."""
    return {"name": name, "split": split, "seed": seed, "options": dict(options or {})}


@gin.configurable("evaluation")
def evaluation_settings(suite: Optional[str] = None, data_root: Optional[str] = None,
                        tokenizer_dir: Optional[str] = None, limit: Optional[int] = None) -> dict:
    """Optional evaluation suite run by the trainer's hook every ``TrainConfig.eval_every`` steps
    (``data_root`` None: the bundled demo eval data; ``limit``: rows per task, for quick checks)."""
    return {"suite": suite, "data_root": data_root, "tokenizer_dir": tokenizer_dir, "limit": limit}


@gin.configurable("topology")
def topology_settings(name: Optional[str] = None) -> Optional[str]:
    """The TPU slice the run file is sized for (``launch.topology.TOPOLOGIES``: ``'v4-64'``, ``'v5e-64'``...);
    ``launch.compile_for`` compiles the run's step for it ahead of time. None: the run names no slice."""
    return name


@gin.configurable("head")
def head_settings(pooling: str = "cls", dropout: float = 0.1) -> dict:
    """Head settings of the ``finetune`` stage; the task (classification/regression) and the number of
    labels come from the task spec."""
    return {"pooling": pooling, "dropout": dropout}


@gin.configurable("finetune_task")
def finetune_task_settings(name: Optional[str] = None, spec: Optional[finetune_data.TaskSpec] = None,
                           data_root: Optional[str] = None, tokenizer_dir: str = gin.REQUIRED) -> dict:
    """The task of the ``finetune`` stage: a registered benchmark task ``name`` (``tasks.finetune_data.
    BENCHMARK_TASKS``) or a user ``spec`` (``@TaskSpec()``, paths relative to ``data_root`` or absolute).
    ``data_root`` None: ``../shared/data`` next to the repository when present, else ``data/finetune``."""
    if (name is None) == (spec is None):
        raise ValueError("finetune_task: give exactly one of name (a registered task) and spec (@TaskSpec())")
    task = spec if spec is not None else finetune_data.get_tasks([name])[0]
    return {"spec": task, "data_root": data_root, "tokenizer_dir": tokenizer_dir}


def stage() -> str:
    """``TrainConfig.stage`` as bound in the parsed gin files ('' when unbound)."""
    return _bound("TrainConfig.stage") or ""


def build_finetune(spec: finetune_data.TaskSpec, **overrides) -> finetune.FinetuneConfig:
    """The gin-configured ``FinetuneConfig`` with the head built for ``spec``."""
    from bilingual.heads import HeadConfig

    # without a label list the count comes from the train file (``finetune`` sets it)
    num_labels = 1 if spec.head == "regression" else max(spec.num_labels, 2)
    head = HeadConfig(task=spec.head, num_labels=num_labels, **head_settings())
    return FinetuneConfig(head=head, **overrides)


def build() -> tuple[trainer.TrainConfig, dict, dict]:
    """Instantiate the configured objects (after ``parse``), with the vocabulary size derived from the
    tokenizer (``TrainConfig.tokenizer``) unless ``encoder.vocab_size`` is bound, which must then agree."""
    config = TrainConfig()
    if config.tokenizer is not None:
        from bilingual.config import ConfigError

        size = trainer.tokenizer_size(config.tokenizer)
        bound = _bound("encoder.vocab_size")
        if bound is not None and bound != size:
            raise ConfigError(f"encoder.vocab_size={bound} but TrainConfig.tokenizer={config.tokenizer!r} has "
                              f"{size} tokens; leave encoder.vocab_size unset (it comes from the tokenizer)")
        config = dataclasses.replace(config, model=config.model.replace(vocab_size=size))
    return config, data_settings(), evaluation_settings()


def _bound(name: str):
    """The value bound to ``name`` in the parsed gin files, or None."""
    try:
        return gin.query_parameter(name)
    except ValueError:
        return None
