#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create (or reuse) the VM, install this repository on every worker,
# run the same launch.train command on all workers, logs and checkpoints in a GCS bucket.
#
#   launch/tpu_vm.sh NAME ZONE ACCELERATOR GCS_WORKDIR GIN_FILE [extra launch.train flags...]
#   e.g. launch/tpu_vm.sh bilingual-v4 us-central2-b v4-64 gs://my-bucket/runs/de-en/mlm gin/runs/de_en_tpu_v4_64_mlm.gin
#
# Needs: gcloud, a project with TPU quota, a bucket, and REF (default: this checkout's HEAD) pushed to
# REPO_URL (default: remote.origin.url): the workers clone REPO_URL and check out REF.
# Environment: TPU_SOFTWARE_VERSION (default tpu-ubuntu2204-base), JAX_EXTRA (default tpu: installs
# jax[tpu] at the lock's jax version; empty: the lock's CPU jax), BILINGUAL_PYTHON (default 3.11; or 3.12).
#
# Python: the image's python3 is 3.10 on tpu-ubuntu2204-base; launch/install_env.sh installs uv with that
# python's pip and lets `uv venv --python 3.11` use a CPython 3.11 on the VM or download uv's managed one
# (no apt, PPA or sudo; the same on every image). Workers get requirements/runtime.txt (no torch, mteb,
# sentence-transformers or pytest) plus jax[tpu].
#
# Re-running is safe and resumes: an existing VM is reused, an existing clone is moved to REF, the install
# is skipped when .venv's stamp matches the runtime lock (a recreated, preempted slice reinstalls), and
# launch.train resumes from the latest checkpoint in GCS_WORKDIR. jax.distributed finds the other workers by
# itself on TPU VMs (bilingual/training/distributed.py). Data paths in gin may be gs:// too.
set -euo pipefail
if [ $# -lt 5 ]; then sed -n '2,21p' "$0"; exit 2; fi
NAME=$1; ZONE=$2; ACCELERATOR=$3; WORKDIR=$4; GIN_FILE=$5; shift 5
VERSION=${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}
REPO_URL=${REPO_URL:-$(git config --get remote.origin.url)}
REF=${REF:-$(git rev-parse HEAD)}
JAX_EXTRA=${JAX_EXTRA-tpu}

if ! gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$ACCELERATOR" --version "$VERSION"
fi

on_all() { gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$1"; }

q() { printf '%q' "$1"; }
on_all "set -euo pipefail; test -d bilingual || git clone -q $(q "$REPO_URL") bilingual; cd bilingual; \
git fetch -q origin $(q "$REF"); git checkout -q --detach FETCH_HEAD; \
BILINGUAL_PYTHON=$(q "${BILINGUAL_PYTHON:-3.11}") launch/install_env.sh $(q "$JAX_EXTRA")"

ARGS="--gin_file=$(q "$GIN_FILE") --workdir=$(q "$WORKDIR")"
for a in "$@"; do ARGS+=" $(q "$a")"; done
on_all "set -o pipefail; cd bilingual && .venv/bin/python -m launch.train $ARGS 2>&1 | tee -a train-\$(hostname).log"
