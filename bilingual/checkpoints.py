"""The on-disk checkpoint layout, shared by the trainer, the exporter and the ``Encoder`` API.

A checkpoint directory is an orbax ``CheckpointManager`` root::

    <dir>/<step>/model/     parameters of the trained model (orbax StandardSave of a pytree)
    <dir>/<step>/meta/      JSON: {"encoder_config": {...}, "model": "encoder" | "masked_lm", ...}
    <dir>/<step>/...        the trainer adds its own items (optimiser state, data position)

``model`` holds ``JinaBert`` parameters (``"encoder"``) or ``JinaBertForMaskedLM`` parameters
(``"masked_lm"``: ``{"bert": ..., "cls": ...}``). ``load_encoder`` returns the encoder part either way.
Orbax writes each step atomically (a temporary directory renamed on commit), so a step directory that
exists and has its commit marker is complete; anything else is reported, never half-loaded.
"""

from __future__ import annotations

import pathlib
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bilingual.config import EncoderConfig

MODEL_KINDS = ("encoder", "masked_lm")


class CheckpointError(RuntimeError):
    """A missing, partial or inconsistent checkpoint; the message names the path."""


def as_path(path) -> epath.Path:
    """A local path made absolute, or a remote one (``gs://...``) as is; both as ``etils.epath.Path``."""
    text = str(path)
    return epath.Path(text) if "://" in text else epath.Path(pathlib.Path(text).absolute())


def encoder_config_from_dict(values: dict[str, Any]) -> EncoderConfig:
    return EncoderConfig(**values)


def _manager(directory: epath.Path, read_only: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(read_only=read_only, create=not read_only)
    # All items a step may hold (the trainer adds opt_state and data); only those asked for are read.
    return ocp.CheckpointManager(directory, options=options, item_names=("model", "meta", "opt_state", "data"))


def save_encoder(directory, step: int, config: EncoderConfig, params, *, model_kind: str = "encoder",
                 extra_meta: Optional[dict] = None) -> epath.Path:
    """Write ``params`` and ``config`` as step ``step`` under ``directory`` (blocking)."""
    if model_kind not in MODEL_KINDS:
        raise ValueError(f"model_kind must be one of {MODEL_KINDS}, got {model_kind!r}")
    directory = as_path(directory)
    meta = {"encoder_config": config.to_dict(), "model": model_kind, **(extra_meta or {})}
    with _manager(directory, read_only=False) as manager:
        manager.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(params),
                                                   meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()
    return directory / str(step)


def resolve_step(path) -> tuple[epath.Path, int]:
    """``path`` is a checkpoint root (latest step is taken) or a step directory inside one."""
    path = as_path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if path.name.isdigit() and (path / "meta").exists():
        return path.parent, int(path.name)
    steps = sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    if not steps:
        raise CheckpointError(f"no finished checkpoint steps under {path} (expected <step>/model and <step>/meta)")
    return path, steps[-1]


def load_meta(path) -> dict:
    root, step = resolve_step(path)
    with _manager(root, read_only=True) as manager:
        try:
            restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as err:  # orbax raises several types for damaged directories
            raise CheckpointError(f"cannot read metadata of checkpoint {root / str(step)}: {err}") from err
    return dict(restored.meta)


def load_encoder(path, *, shardings=None) -> tuple[EncoderConfig, Any]:
    """Restore ``(config, encoder_params)`` from a checkpoint root or step directory.

    Parameters come back as numpy arrays unless ``shardings`` (a tree of ``jax.sharding.Sharding`` for
    the *stored* model tree) is given. For a masked-LM checkpoint or a fine-tuned head (``finetune`` stage)
    only the encoder (``bert`` subtree) is returned, so either can start another stage or embed texts.
    """
    root, step = resolve_step(path)
    meta = load_meta(root / str(step))
    config = encoder_config_from_dict(meta["encoder_config"])
    with _manager(root, read_only=True) as manager:
        try:
            if shardings is None:
                metadata = manager.item_metadata(step)["model"]
                target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata)
                restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))
            else:
                restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(shardings)))
        except Exception as err:
            raise CheckpointError(f"cannot restore parameters of checkpoint {root / str(step)}: {err}") from err
    params = restored.model
    if meta["model"] != "encoder":  # masked-LM or a fine-tuned head: the encoder is the "bert" subtree
        params = params["bert"]
        if not config.add_pooler:  # a CLS classification head adds the BERT pooler; the encoder has none
            params = {k: v for k, v in params.items() if k != "pooler"}
    return config, params
