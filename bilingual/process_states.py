"""One JSON state per process in a checkpoint item: where each host's data iterator stands.

Every process reads its own shard of the data, so every process has its own position; orbax's ``JsonSave``
writes the primary process's value only, which would hand host 0's position to every host on restore. This
orbax handler (laid out like grain's ``CheckpointHandler``) writes ``process_<i>-of-<n>.json`` from each
process ``i`` of ``n`` into the item directory, and reads back the file of the restoring process::

    manager.save(step, args=ocp.args.Composite(..., data=ProcessStateSave(iterator.get_state())))
    state = manager.restore(step, args=ocp.args.Composite(..., data=ProcessStateRestore())).data

A restore onto another number of processes raises ``ProcessCountMismatch`` naming both counts: another
host layout reads other shards, so no saved position applies (resume with the same process count).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


class ProcessCountMismatch(ValueError):
    """The checkpoint holds the states of another number of processes than the restoring run has."""


def file_name(process_index: int, process_count: int) -> str:
    return f"process_{process_index}-of-{process_count}.json"


class ProcessStateHandler(ocp.CheckpointHandler):
    """Saves and restores one JSON-serialisable state per process (module docstring)."""

    def save(self, directory: epath.Path, args: "ProcessStateSave") -> None:
        path = epath.Path(directory) / file_name(jax.process_index(), jax.process_count())
        path.write_text(json.dumps(args.state, sort_keys=True))

    def restore(self, directory: epath.Path, args: Optional["ProcessStateRestore"] = None) -> dict:
        directory = epath.Path(directory)
        index, count = jax.process_index(), jax.process_count()
        path = directory / file_name(index, count)
        if not path.exists():
            saved = sorted({int(m[2]) for p in directory.iterdir() if (m := FILE.fullmatch(p.name))})
            if saved:
                raise ProcessCountMismatch(
                    f"{directory} holds the data states of {' or '.join(map(str, saved))} process(es); this run "
                    f"has {count}: resume with {saved[0]} process(es) (each host's data position belongs to "
                    f"its shard)")
            raise FileNotFoundError(f"{directory} holds no per-process data state ({path.name} is missing; "
                                    "written by an older version?)")
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path) -> Any:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(ProcessStateHandler, for_save=True)
@dataclasses.dataclass
class ProcessStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(ProcessStateHandler, for_restore=True)
@dataclasses.dataclass
class ProcessStateRestore(ocp.args.CheckpointArgs):
    pass
