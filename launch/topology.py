"""TPU slice names (``v4-64``, ``v5e-64``, ...) -> what an ahead-of-time compile for them needs.

A run file names its slice with one line, ``topology.name = 'v4-64'`` (registered in ``launch.configurables``);
``launch.compile_for`` compiles the run's training step for it on any machine (``libtpu`` describes the slice
without the hardware). The table follows the Cloud TPU slice names: for v4 and v5p the number is TensorCores
(two per chip, seen by JAX as one ``megacore`` device per chip), for v5e and v6e it is chips (one core each).
Topologies and chips-per-host bounds as in maxtext's ``accelerator_to_spec_map.py``; HBM per chip from the
Cloud TPU system-architecture pages (v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e 32 GiB).
"""

from __future__ import annotations

import dataclasses

from bilingual.config import ConfigError

GIB = 2 ** 30
HBM_PER_CHIP = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB}
_CHIP_CONFIG = {"v4": "megacore", "v5p": "megacore", "v5e": "default", "v6e": "default"}
# the name libtpu gives a generation in a topology string (``v5:2x2x1`` is v5p)
_TOPOLOGY_PREFIX = {"v4": "v4", "v5p": "v5", "v5e": "v5e", "v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """One slice: ``topology_name`` (``v4:2x4x4``), ``chip_config_name`` and ``chips_per_host_bounds`` are
    the arguments of ``jax.experimental.topologies.get_topology_desc``; ``wrap``: torus links per axis."""

    name: str
    generation: str
    shape: tuple[int, ...]
    wrap: tuple[bool, bool, bool] = (False, False, False)

    @property
    def topology_name(self) -> str:
        return f"{_TOPOLOGY_PREFIX[self.generation]}:{'x'.join(map(str, self.shape))}"

    @property
    def chip_config_name(self) -> str:
        return _CHIP_CONFIG[self.generation]

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        return (1, 1, 1) if self.chips == 1 else (2, 2, 1)

    @property
    def chips(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n

    @property
    def devices(self) -> int:
        """JAX devices of the slice: one per chip (megacore joins a v4 / v5p chip's two cores)."""
        return self.chips

    @property
    def hbm_bytes_per_device(self) -> int:
        return HBM_PER_CHIP[self.generation]


def _table() -> dict[str, Topology]:
    three_d = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
               256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16)}
    two_d = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
    table = {}
    for generation in ("v4", "v5p"):
        for chips, shape in three_d.items():
            wrap = (True, True, True) if chips >= 64 else (False, False, False)
            table[f"{generation}-{2 * chips}"] = Topology(f"{generation}-{2 * chips}", generation, shape, wrap)
    for generation in ("v5e", "v6e"):
        for chips, shape in two_d.items():
            wrap = (chips >= 256, chips >= 128, False)
            table[f"{generation}-{chips}"] = Topology(f"{generation}-{chips}", generation, shape, wrap)
    return table


TOPOLOGIES: dict[str, Topology] = _table()


def get(name: str, key: str = "topology.name") -> Topology:
    """The slice called ``name``; a ``ConfigError`` naming ``key`` and the known names otherwise."""
    if name not in TOPOLOGIES:
        raise ConfigError(f"{key}={name!r} is not a known TPU slice; expected one of {', '.join(TOPOLOGIES)}")
    return TOPOLOGIES[name]
