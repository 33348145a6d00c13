"""Every artifact the project writes or reads: orbax checkpoints of every kind and Hugging Face exports.

A checkpoint root is an orbax ``CheckpointManager`` directory::

    <root>/<step>/model      the stored model tree (orbax StandardSave, restored straight into shards)
    <root>/<step>/meta       JSON: encoder_config, model kind, step, tokenizer, and what the writer adds
    <root>/<step>/opt_state  optimiser state (trainer checkpoints)
    <root>/<step>/data       JSON: the batch iterator's position (trainer checkpoints)
    <root>/tokenizer/        the run's tokenizer, copied once; ``meta["tokenizer"]`` names it relative to root

Model kinds (``meta["model"]``): ``"encoder"`` (``JinaBert`` parameters), ``"masked_lm"``
(``{"bert", "cls"}``), ``"sequence_classification"`` (a fine-tuned head, ``{"bert", "classifier"}``,
``meta["head"]`` its ``HeadConfig``). ``load_encoder`` returns the encoder of any of them, or of a Hugging
Face export directory: this module is the one place that tells the two apart (``is_hf_directory``) and the
one place that strips heads. Orbax commits each step atomically (a temporary directory renamed when
complete), so unfinished saves are never listed; a step missing an item, or whose arrays cannot be read,
raises ``CheckpointError`` naming the step and, where known, the parameter; nothing is half-loaded.

Orbax has no content check, so every save records ``meta["checksums"]`` (``bilingual.checksums``: exact,
per array of ``model`` and ``opt_state``) and every restore recomputes them: a changed array raises
``CheckpointError`` naming its path. Checkpoints written before checksums load with a logged warning. In a
multi-process run every process saves and restores together, so every process computes the same checksums
and raises the same errors.
"""

from __future__ import annotations

import logging
import pathlib
import re
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from bilingual import checksums
from bilingual.process_states import ProcessCountMismatch, ProcessStateRestore, ProcessStateSave
from bilingual.config import ConfigError, EncoderConfig

log = logging.getLogger("bilingual.artifacts")

MODEL_KINDS = ("encoder", "masked_lm", "sequence_classification")
ITEMS = ("model", "opt_state", "meta", "data")
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt")


class CheckpointError(RuntimeError):
    """A missing, partial or inconsistent checkpoint; the message names the path."""


def as_path(path) -> epath.Path:
    """A local path made absolute, or a remote one (``gs://...``) as is; both as ``etils.epath.Path``."""
    text = str(path)
    return epath.Path(text) if "://" in text else epath.Path(pathlib.Path(text).absolute())


def is_hf_directory(path) -> bool:
    """True for a Hugging Face model directory (``config.json`` with ``model.safetensors``)."""
    path = as_path(path)
    return (path / "config.json").exists() and (path / "model.safetensors").exists()


def manager(root, *, read_only: bool = True, keep: Optional[int] = None,
            async_save: bool = False) -> ocp.CheckpointManager:
    """The one orbax manager factory: every item a step may hold; only those asked for are read."""
    options = ocp.CheckpointManagerOptions(read_only=read_only, create=not read_only, max_to_keep=keep,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(as_path(root), options=options, item_names=ITEMS)


# ------------------------------------------------------------------------------------------- reading


def resolve_step(path) -> tuple[epath.Path, int]:
    """``path`` is a checkpoint root (its latest step is taken) or a step directory inside one; the step
    must hold ``model`` and ``meta``."""
    path = as_path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if path.name.isdigit() and any((path / name).exists() for name in (*ITEMS, "_CHECKPOINT_METADATA")):
        root, step = path.parent, int(path.name)
    else:
        steps = sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
        if not steps:
            raise CheckpointError(f"no finished checkpoint steps under {path} (expected <step>/model and "
                                  "<step>/meta)")
        root, step = path, steps[-1]
    require_items(root / str(step), ("model", "meta"))
    return root, step


def require_items(step_dir: epath.Path, items) -> None:
    """A step directory lacking one of ``items`` is incomplete: say which."""
    missing = [name for name in items if not (step_dir / name).exists()]
    if missing:
        raise CheckpointError(f"checkpoint step {step_dir} is incomplete (missing {', '.join(missing)})")


def restore_failure(step_dir, err: BaseException) -> CheckpointError:
    """One line for an orbax / TensorStore failure: its innermost reason, and the parameter it names."""
    chain, seen = [], err
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.exceptions[0] if isinstance(seen, BaseExceptionGroup) else seen.__cause__ or seen.__context__
    log.debug("restoring %s failed", step_dir, exc_info=err)
    text = "\n".join(str(e) for e in chain)
    first_line = (str(chain[-1]).split("See full TensorStore details")[0].strip().splitlines() or [""])[0]
    reason = f"{type(chain[-1]).__name__}: {re.sub(r'Error reading .*? in OCDBT database at .*?: ', '', first_line)}"
    param = re.search(r'Error reading "([^"/]+)/', text) or re.search(r"'path': '([^'/]+)/'", text)
    if not param:
        return CheckpointError(f"checkpoint {step_dir} cannot be restored ({reason}); nothing was loaded")
    item = re.search(rf"{re.escape(str(step_dir))}/(\w+)/", text)
    where = f"{item.group(1) if item else 'array'} {param.group(1).replace('.', '/')}"
    return CheckpointError(f"checkpoint {step_dir} is damaged: cannot read {where} ({reason}); nothing was loaded")


def verify_checksums(step_dir, meta: dict, restored: dict) -> None:
    """Compare each restored item (``{"model": tree, ...}``) with the checksums recorded in ``meta``."""
    recorded = meta.get("checksums")
    if recorded is None:
        log.warning("checkpoint %s records no checksums (written before they were): loaded unverified", step_dir)
        return
    for item, tree in restored.items():
        bad = checksums.mismatches(recorded[item], tree)
        if bad:
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise CheckpointError(f"checkpoint {step_dir} is damaged: {item} array(s) {', '.join(bad[:5])}{more} "
                                  "do not match the checksums recorded at save time; nothing was loaded")


def load_meta(path) -> dict:
    """The ``meta`` JSON of a checkpoint root (latest step) or step directory."""
    root, step = resolve_step(path)
    with manager(root) as m:
        try:
            restored = m.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as err:  # orbax raises several types for damaged directories
            raise restore_failure(root / str(step), err) from None
    return dict(restored.meta)


def encoder_config_of(meta: dict) -> EncoderConfig:
    return EncoderConfig(**meta["encoder_config"])


def load_model_tree(path, *, shardings=None) -> tuple[EncoderConfig, dict, Any]:
    """``(config, meta, stored model tree)`` of a checkpoint root (latest step) or step directory.

    The tree comes back as numpy arrays, or placed by ``shardings`` (a tree of ``jax.ShapeDtypeStruct`` with
    shardings, matching the stored tree). For ``masked_lm`` it is ``{"bert", "cls"}``, for a head ``{"bert", ...}``.
    """
    root, step = resolve_step(path)
    meta = load_meta(root / str(step))
    with manager(root) as m:
        try:
            if shardings is None:
                target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), m.item_metadata(step)["model"])
            else:
                target = shardings
            restored = m.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))
        except Exception as err:  # orbax raises several types for damaged directories
            raise restore_failure(root / str(step), err) from None
    verify_checksums(root / str(step), meta, {"model": restored.model})
    return encoder_config_of(meta), meta, restored.model


def encoder_subtree(model_kind: str, config: EncoderConfig, tree):
    """The ``JinaBert`` parameters inside a stored tree of ``model_kind`` (the one place heads are stripped).

    A masked-LM or a fine-tuned head keeps the encoder under ``bert``; a CLS classification head adds the
    BERT pooler there, which the embedding encoder does not have (``config.add_pooler`` False).
    """
    if model_kind not in MODEL_KINDS:
        raise CheckpointError(f"unknown model kind {model_kind!r}; expected one of {MODEL_KINDS}")
    if model_kind == "encoder":
        return tree
    params = tree["bert"]
    return params if config.add_pooler else {k: v for k, v in params.items() if k != "pooler"}


def load_encoder(path, *, shardings=None) -> tuple[EncoderConfig, Any]:
    """``(config, encoder params)`` of an orbax checkpoint of any kind or of a Hugging Face export."""
    if is_hf_directory(path):
        from bilingual.export.hf_import import import_hf  # the export package owns the HF layout

        config, params, _extras = import_hf(pathlib.Path(str(path)))
        return config, params
    config, meta, tree = load_model_tree(path, shardings=shardings)
    return config, encoder_subtree(meta["model"], config, tree)


def load_matching_encoder(path, model: EncoderConfig, key: str) -> Any:
    """Encoder parameters at ``path`` after checking they have the architecture of ``model``; a mismatch
    raises ``ConfigError`` naming ``key`` (the config field that gave the path) and every differing field."""
    found, params = load_encoder(path)
    different = found.architecture_differences(model)
    if different:
        raise ConfigError(f"{key}={str(path)!r} holds a different architecture (checkpoint vs run): {different}")
    return params


def load_classifier(path):
    """``(encoder config, head config, meta, params)`` of a fine-tuned head checkpoint (root or step)."""
    from bilingual.heads import HeadConfig

    config, meta, tree = load_model_tree(path)
    if meta.get("model") != "sequence_classification":
        raise CheckpointError(f"{as_path(path)} is a {meta.get('model')!r} checkpoint, not a fine-tuned "
                              "'sequence_classification' one")
    return config, HeadConfig(**meta["head"]), meta, tree


# ------------------------------------------------------------------------------------------- writing


def record_tokenizer(root, tokenizer) -> Optional[str]:
    """Copy the tokenizer directory ``tokenizer`` into ``<root>/tokenizer`` once (process 0 only);
    returns the relative name to put in ``meta["tokenizer"]``, or None without a tokenizer."""
    if tokenizer is None:
        return None
    source, target = as_path(tokenizer), as_path(root) / TOKENIZER_DIR
    if not (source / "tokenizer.json").exists():
        raise ConfigError(f"tokenizer={str(tokenizer)!r}: no tokenizer.json there")
    if jax.process_index() == 0 and source != target:
        target.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            if (source / name).exists() and not (target / name).exists():
                (source / name).copy(target / name)
    return TOKENIZER_DIR


def find_tokenizer(path) -> pathlib.Path:
    """The tokenizer recorded with a checkpoint: ``meta["tokenizer"]`` (or the older ``"tokenizer_dir"``),
    relative to the root; else a ``tokenizer/`` folder in the step, the root or beside the root."""
    root, step = resolve_step(path)
    meta = load_meta(root / str(step))
    candidates = []
    for key in ("tokenizer", "tokenizer_dir"):
        if meta.get(key):
            recorded = pathlib.Path(meta[key])
            candidates.append(recorded if recorded.is_absolute() else pathlib.Path(str(root)) / recorded)
    local = pathlib.Path(str(root))
    candidates += [local / str(step) / TOKENIZER_DIR, local / TOKENIZER_DIR, local.parent / TOKENIZER_DIR]
    for candidate in dict.fromkeys(candidates):
        if (candidate / "tokenizer.json").is_file():
            return candidate
    raise CheckpointError(f"no tokenizer recorded with checkpoint {root / str(step)} (pass tokenizer=..., or "
                          f"train with TrainConfig.tokenizer set); looked in: {', '.join(map(str, candidates))}")


def save_model(root, step: int, config: EncoderConfig, params, *, model_kind: str = "encoder",
               extra_meta: Optional[dict] = None, tokenizer=None) -> epath.Path:
    """Write ``params`` and ``config`` as step ``step`` under ``root`` (blocking); returns the step dir.

    Refuses a step that already exists rather than leaving the old parameters there in silence.
    """
    if model_kind not in MODEL_KINDS:
        raise ValueError(f"model_kind must be one of {MODEL_KINDS}, got {model_kind!r}")
    root = as_path(root)
    meta = {"encoder_config": config.to_dict(), "model": model_kind, "step": step, **(extra_meta or {}),
            "checksums": {"model": checksums.tree_checksums(params)}}
    recorded = record_tokenizer(root, tokenizer)
    if recorded:
        meta["tokenizer"] = recorded
    with manager(root, read_only=False) as m:
        if step in m.all_steps():
            raise CheckpointError(f"{root / str(step)} already exists; choose another directory or step")
        m.save(step, args=ocp.args.Composite(model=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)))
        m.wait_until_finished()
    return root / str(step)


class TrainCheckpointer:
    """Train state, metadata and each process's data position per step, keep-N (``keep``) with async saves.

    ``save`` returns whether a step was written; ``restore`` reads every array straight into its shards.
    """

    def __init__(self, root, *, keep: int = 3, async_save: bool = True, tokenizer=None):
        self.directory = as_path(root)
        self.manager = manager(self.directory, read_only=False, keep=keep, async_save=async_save)
        self.tokenizer = record_tokenizer(self.directory, tokenizer)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state, meta: dict, data_state: Optional[dict], *, force: bool = False) -> bool:
        """Every process calls this with the same state (the checksums are computed on the devices)."""
        step = int(state.step)
        sums = {"model": checksums.tree_checksums(state.params), "opt_state": checksums.tree_checksums(state.opt_state)}
        meta = {**meta, "step": step, **({"tokenizer": self.tokenizer} if self.tokenizer else {}), "checksums": sums}
        return self.manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
            meta=ocp.args.JsonSave(meta), data=ProcessStateSave(data_state or {})), force=force)

    def read_meta(self, step: int) -> dict:
        """The ``meta`` of ``step`` alone (to check a run against it before restoring any array)."""
        require_items(self.directory / str(step), ITEMS)
        try:
            return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
        except Exception as err:  # orbax raises several types for damaged directories
            raise restore_failure(self.directory / str(step), err) from None

    def restore(self, step: int, target) -> tuple[Any, dict, dict]:
        """``(state, meta, data state)`` of ``step``, checked against its checksums; ``target`` is a
        ``TrainState`` of ``jax.ShapeDtypeStruct`` with shardings."""
        step_dir = self.directory / str(step)
        require_items(step_dir, ITEMS)
        data = self.read_data_state(step)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                model=ocp.args.StandardRestore(target.params),
                opt_state=ocp.args.StandardRestore(target.opt_state), meta=ocp.args.JsonRestore()))
        except Exception as err:  # orbax raises many types for damaged or foreign directories
            raise restore_failure(step_dir, err) from None
        meta = dict(restored.meta)
        verify_checksums(step_dir, meta, {"model": restored.model, "opt_state": restored.opt_state})
        step_array = jax.device_put(np.asarray(meta["step"], np.int32), target.step.sharding)
        state = type(target)(step=step_array, params=restored.model, opt_state=restored.opt_state)
        return state, meta, data

    def read_data_state(self, step: int) -> dict:
        """This process's data iterator state at ``step`` (``bilingual.process_states``); a checkpoint of
        another number of processes is a ``CheckpointError`` saying both counts."""
        step_dir = self.directory / str(step)
        try:
            return dict(self.manager.restore(step, args=ocp.args.Composite(data=ProcessStateRestore())).data)
        except Exception as err:
            cause = err
            while cause is not None and not isinstance(cause, ProcessCountMismatch):
                cause = cause.__cause__ or cause.__context__
            if cause is not None:
                raise CheckpointError(f"checkpoint {step_dir}: {cause}") from None
            raise restore_failure(step_dir, err) from None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
