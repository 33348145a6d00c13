"""Multi-host start-up through ``jax.distributed.initialize``.

* Explicit: ``coordinator_address``, ``num_processes`` and ``process_id`` given (flags of ``launch.train``).
* Auto-detected: on Cloud TPU VMs and under SLURM / Open MPI style launchers, ``jax.distributed.initialize()``
  with no arguments reads the cluster environment.
* Otherwise a single process; nothing is initialised.

After it, ``jax.devices()`` lists every device of every process and the mesh spans them all; each process
feeds its own rows of the global batch (``bilingual.training.sharded.put_batch``).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import jax

log = logging.getLogger("bilingual.distributed")

_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def detected_cluster() -> Optional[str]:
    for name in _CLUSTER_ENV:
        if name in os.environ:
            return name
    return None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, cpu_collectives: str = "gloo") -> None:
    """Initialise multi-process JAX if asked for or if a cluster launcher is detected.

    ``cpu_collectives`` selects the CPU collective implementation (needed for multi-process CPU runs).
    """
    explicit = [coordinator_address, num_processes, process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("multi-host: give all of coordinator_address, num_processes and process_id, or none")
        # Only affects CPU devices; must not query the backend here (that would initialise it too early).
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    elif detected_cluster():
        log.info("cluster environment detected (%s); initialising jax.distributed", detected_cluster())
        jax.distributed.initialize()
    else:
        return
    log.info("process %d of %d; %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
