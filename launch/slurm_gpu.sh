#!/usr/bin/env bash
# Train on a SLURM GPU cluster: one task per node, all GPUs of a node in that task.
#
#   sbatch --nodes=2 launch/slurm_gpu.sh WORKDIR GIN_FILE [extra launch.train flags...]
#   e.g. sbatch --nodes=1 launch/slurm_gpu.sh /shared/runs/de-en/pairs gin/runs/de_en_8gpu_pairs.gin
#
# Submit from the repository's root on a shared filesystem. Before `srun`, the batch script builds .venv
# there once (launch/install_env.sh: a Python >= 3.11 through uv, requirements/runtime.txt, jax[cuda12] at
# the lock's jax version; JAX_EXTRA= installs the lock's CPU jax instead), under a lock file so jobs that
# start together install once; later jobs find the stamp and skip it. A managed Python, if uv needs one,
# goes to .uv-python/ beside .venv so that every node sees it. Then srun starts launch.train on every node:
# jax.distributed.initialize() reads SLURM's environment (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS,
# SLURM_PROCID, SLURM_LOCALID), so no extra flags are needed. Re-submitting with the same WORKDIR resumes
# from its latest checkpoint.
#SBATCH --job-name=bilingual
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,14p' "$0"; exit 2; fi
WORKDIR=$1; GIN_FILE=$2; shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
export UV_PYTHON_INSTALL_DIR=${UV_PYTHON_INSTALL_DIR:-$PWD/.uv-python}
flock .venv.lock launch/install_env.sh "${JAX_EXTRA-cuda12}"

export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
# jax's SLURM detection gives each task only GPU $SLURM_LOCALID (it assumes one task per GPU); this script
# runs one task per node with all of the node's GPUs, so name them all.
if [ -n "${SLURM_GPUS_ON_NODE:-}" ] && [ -z "${JAX_LOCAL_DEVICE_IDS:-}" ]; then
  JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((SLURM_GPUS_ON_NODE - 1))); export JAX_LOCAL_DEVICE_IDS
fi
srun .venv/bin/python -m launch.train --gin_file="$GIN_FILE" --workdir="$WORKDIR" "$@"
