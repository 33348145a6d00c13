"""Trainer checkpoints: orbax ``CheckpointManager`` with async saves, keep-N, and the data position.

Layout (a superset of ``bilingual.checkpoints``, so ``load_encoder`` and the exporter read trainer
checkpoints directly)::

    <workdir>/checkpoints/<step>/model      parameters (sharded arrays, restored straight into shards)
    <workdir>/checkpoints/<step>/opt_state  optimiser state
    <workdir>/checkpoints/<step>/meta       JSON: encoder_config, model kind, stage, step
    <workdir>/checkpoints/<step>/data       JSON: the batch iterator's state
    <workdir>/operative_config.gin          the gin configuration the run used

Orbax commits a step atomically (a temporary directory renamed when complete), so unfinished saves are
never listed; a damaged finished step makes ``restore`` raise ``CheckpointError`` naming the step
directory, and nothing is half-loaded into the running state.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from bilingual.checkpoints import CheckpointError, as_path
from bilingual.training.steps import TrainState

ITEMS = ("model", "opt_state", "meta", "data")


class TrainCheckpointer:
    """Save and restore ``TrainState`` plus metadata and the data-iterator state."""

    def __init__(self, directory, *, keep: int = 3, async_save: bool = True):
        self.directory = as_path(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, state: TrainState, meta: dict, data_state: dict, *, force: bool = False) -> bool:
        step = int(state.step)
        return self.manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            meta=ocp.args.JsonSave({**meta, "step": step}),
            data=ocp.args.JsonSave(data_state)), force=force)

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict, dict]:
        """Restore ``step`` into ``target``: a TrainState of ``jax.ShapeDtypeStruct`` with shardings, so
        every array is read straight into its shards."""
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                model=ocp.args.StandardRestore(target.params),
                opt_state=ocp.args.StandardRestore(target.opt_state),
                meta=ocp.args.JsonRestore(), data=ocp.args.JsonRestore()))
        except Exception as err:  # orbax raises many types for damaged or foreign directories
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} is damaged or incompatible with this run "
                f"({type(err).__name__}: {err}); nothing was loaded. Remove that step directory to resume "
                "from an earlier one.") from err
        meta = dict(restored.meta)
        step_array = jax.device_put(np.asarray(meta["step"], np.int32), target.step.sharding)
        state = TrainState(step=step_array, params=restored.model, opt_state=restored.opt_state)
        return state, meta, dict(restored.data)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
