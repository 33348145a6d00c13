"""The device mesh and the one table that maps logical axis names to mesh axes.

Mesh axes: ``data`` (pure data parallel), ``fsdp`` (data parallel with parameters and optimiser state
sharded), ``tensor`` (heads / mlp / vocab split). The batch is sharded over ``data`` and ``fsdp`` together.
Modules only name logical axes (``bilingual.modeling``); this file is the single place that decides where
they live. Flax assigns rules in order and uses each mesh axis at most once per array, so an activation
``(batch, length, embed)`` gets ``batch -> (data, fsdp)`` and leaves ``embed`` unsharded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed", "fsdp"),
    ("length", None),
    ("kv", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape. ``-1`` in at most one axis takes the remaining devices (``data=-1`` is the default)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise ValueError(f"MeshConfig: at most one axis may be -1, got {self}")
        for name, size in zip(MESH_AXES, sizes):
            if size == 0 or size < -1:
                raise ValueError(f"MeshConfig.{name} must be a positive size or -1, got {size}")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"MeshConfig {self}: {num_devices} devices are not divisible by the fixed axes ({known})")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"MeshConfig {self} needs {math.prod(sizes)} devices, but {num_devices} are available")
        return tuple(sizes)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules=LOGICAL_RULES) -> Iterator[None]:
    """Activate ``mesh`` and the logical rules, so ``with_logical_constraint`` in modules takes effect.

    Use it around tracing (``jax.jit(...)(...)`` calls or ``.lower``).
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def check_divisible(abstract_boxed, mesh: Mesh, rules=LOGICAL_RULES) -> None:
    """Fail early, naming the parameter, when a sharded dimension is not divisible by its mesh axes.

    ``abstract_boxed`` is ``jax.eval_shape(model.init, ...)`` output (with ``LogicallyPartitioned`` boxes).
    """
    specs = nn.get_partition_spec(abstract_boxed)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    shapes = nn.meta.unbox(abstract_boxed)
    problems = []
    for (path, spec), shape in zip(jax.tree_util.tree_leaves_with_path(mesh_specs, is_leaf=_is_spec),
                                   jax.tree_util.tree_leaves(shapes)):
        for dim, axes in zip(shape.shape, spec):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            size = math.prod(mesh.shape[a] for a in axes)
            if dim % size:
                problems.append(f"{jax.tree_util.keystr(path)} {tuple(shape.shape)}: dimension {dim} "
                                f"over mesh axes {axes} of size {size}")
    if problems:
        raise ValueError("parameters cannot be sharded on mesh " + str(dict(mesh.shape)) + ":\n  "
                         + "\n  ".join(problems))


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a batch array ``[batch, ...]``: batch over ``(data, fsdp)``, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def batch_divisor(mesh: Mesh) -> int:
    """The global batch must be a multiple of this (devices along ``data`` x ``fsdp``)."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
