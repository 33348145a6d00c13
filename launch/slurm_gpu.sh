#!/usr/bin/env bash
# Train on a SLURM GPU cluster: one task per node, all GPUs of a node in that task.
#
#   sbatch --nodes=2 launch/slurm_gpu.sh WORKDIR GIN_FILE [extra launch.train flags...]
#   e.g. sbatch --nodes=1 launch/slurm_gpu.sh /shared/runs/de-multitask gin/runs/de_en_8gpu.gin
#
# Expects the repository checked out on a shared filesystem with .venv built and JAX for CUDA installed
# (`.venv/bin/pip install "jax[cuda12]==0.10.2"`). jax.distributed.initialize() reads SLURM's
# environment (SLURM_JOB_ID, node list, task ids), so no extra flags are needed. Re-submitting with the
# same WORKDIR resumes from its latest checkpoint.
#SBATCH --job-name=bilingual
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,11p' "$0"; exit 2; fi
WORKDIR=$1; GIN_FILE=$2; shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
srun .venv/bin/python -m launch.train --gin_file="$GIN_FILE" --workdir="$WORKDIR" "$@"
