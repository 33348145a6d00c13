"""Multi-host start-up through ``jax.distributed.initialize``.

* Explicit: ``coordinator_address``, ``num_processes`` and ``process_id`` given (flags of ``launch.train``).
* Auto-detected (``detected_cluster``):

  - ``slurm``: inside ``srun`` (jax's ``SlurmCluster`` reads ``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``,
    ``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID``); ``ompi``: under Open MPI's ``mpirun``;
  - ``cloud-tpu``: jax found a TPU at import (libtpu and TPU chips): on a GCE TPU VM jax reads the workers
    from the metadata server, on GKE from ``TPU_WORKER_ID`` / ``TPU_WORKER_HOSTNAMES``;
  - ``tpu-env``: a slice's ``TPU_WORKER_ID`` and ``TPU_WORKER_HOSTNAMES`` (or ``TPU_PROCESS_ADDRESSES``) are
    set but jax found no TPU, e.g. CPU stand-ins of a slice (``tests/standins/gcloud``). jax's TPU detection
    only runs on a TPU, so the coordinator, process count and id are computed here from those variables as
    jax computes them (``tpu_env_params``; checked against jax's ``GkeTpuCluster`` in the tests).

  For the first three ``jax.distributed.initialize()`` is called with no arguments and jax reads the cluster.
* Otherwise a single process; nothing is initialised.

CPU collectives are set to ``cpu_collectives`` (gloo) first in every multi-process case: the setting only
chooses how the CPU client talks to its peers, so it is harmless on TPU and GPU hosts.

After it, ``jax.devices()`` lists every device of every process and the mesh spans them all; each process
feeds its own rows of the global batch (``bilingual.training.sharded.put_batch``).
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional

import jax

log = logging.getLogger("bilingual.distributed")

# jax/_src/clusters/slurm_cluster.py: all five must be set (srun sets them; a bare sbatch script has no step)
_SLURM_ENV = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
TPU_COORDINATOR_PORT = "8482"  # jax/_src/clusters/cloud_tpu_cluster.py's fixed port


def _on_cloud_tpu() -> bool:
    """Whether jax's import-time Cloud TPU set-up found libtpu and TPU chips (then jax detects the slice)."""
    try:
        from jax._src import cloud_tpu_init
    except ImportError:  # pragma: no cover - jax internals moved
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def _tpu_hosts(environ: Mapping[str, str]) -> Optional[str]:
    value = environ.get("TPU_PROCESS_ADDRESSES")  # jax reads this one first, then TPU_WORKER_HOSTNAMES
    return value if value is not None else environ.get("TPU_WORKER_HOSTNAMES")


def detected_cluster(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    if all(name in environ for name in _SLURM_ENV):
        return "slurm"
    if "OMPI_COMM_WORLD_SIZE" in environ:
        return "ompi"
    if _on_cloud_tpu():
        return "cloud-tpu"
    if "TPU_WORKER_ID" in environ and _tpu_hosts(environ):
        return "tpu-env"
    return None


def tpu_env_params(environ: Mapping[str, str] = os.environ) -> tuple[str, int, int]:
    """(coordinator address, process count, process id) from a TPU slice's variables, as jax's
    ``BaseTpuCluster`` computes them: the coordinator is ``MEGASCALE_COORDINATOR_ADDRESS`` or the first worker
    at port 8482 (``JAX_COORDINATOR_PORT`` overrides it), one process per worker per slice."""
    hosts = str(_tpu_hosts(environ)).split(",")
    slices = int(environ.get("MEGASCALE_NUM_SLICES") or 1)
    slice_id = int(environ.get("MEGASCALE_SLICE_ID") or 0)
    host = (environ.get("MEGASCALE_COORDINATOR_ADDRESS") or hosts[0]).split(":")[0]
    port = environ.get("JAX_COORDINATOR_PORT") or TPU_COORDINATOR_PORT
    worker = environ["TPU_WORKER_ID"]
    if not worker.strip().isdigit():  # libtpu writes a warning sentence here when it cannot tell the worker
        raise ValueError(f"TPU_WORKER_ID={worker!r} is no worker number: set it to this host's index in "
                         "TPU_WORKER_HOSTNAMES, or unset TPU_WORKER_ID and TPU_WORKER_HOSTNAMES for one process")
    return f"{host}:{port}", len(hosts) * slices, int(worker) + slice_id * len(hosts)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, cpu_collectives: str = "gloo") -> None:
    """Initialise multi-process JAX if asked for or if a cluster launcher is detected.

    ``cpu_collectives`` selects the CPU collective implementation (needed for multi-process CPU runs).
    Already initialised (a caller set up ``jax.distributed`` itself): nothing is done, whatever the arguments.
    """
    if jax.distributed.is_initialized():
        log.info("jax.distributed already initialised: process %d of %d", jax.process_index(),
                 jax.process_count())
        return
    explicit = [coordinator_address, num_processes, process_id]
    cluster = None
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("multi-host: give all of coordinator_address, num_processes and process_id, or none")
    else:
        cluster = detected_cluster()
        if cluster is None:
            return
        if cluster == "tpu-env":
            coordinator_address, num_processes, process_id = tpu_env_params()
    # Only affects CPU devices; must not query the backend here (that would initialise it too early).
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if cluster in ("slurm", "ompi", "cloud-tpu"):
        log.info("cluster environment detected (%s); jax.distributed reads it", cluster)
        jax.distributed.initialize()
    else:
        if cluster:
            log.info("TPU slice variables without a TPU runtime: coordinator %s, process %d of %d",
                     coordinator_address, process_id, num_processes)
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    log.info("process %d of %d; %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
