#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create (or reuse) the VM, install this repository on every worker,
# run the same launch.train command on all workers, logs and checkpoints in a GCS bucket.
#
#   launch/tpu_vm.sh NAME ZONE ACCELERATOR GCS_WORKDIR GIN_FILE [extra launch.train flags...]
#   e.g. launch/tpu_vm.sh bilingual-v4 us-central2-b v4-64 gs://my-bucket/runs/de-mlm gin/runs/de_en_tpu_v4_64.gin
#
# Needs: gcloud, a project with TPU quota, a bucket. jax.distributed finds the other workers by itself on
# TPU VMs; the workdir is a gs:// path (orbax and tf.io.gfile write to it directly), so a preempted slice
# resumes from the bucket when the script is run again. Data paths in gin may be gs:// too.
set -euo pipefail
if [ $# -lt 5 ]; then sed -n '2,12p' "$0"; exit 2; fi
NAME=$1; ZONE=$2; ACCELERATOR=$3; WORKDIR=$4; GIN_FILE=$5; shift 5
VERSION=${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}
REPO_URL=${REPO_URL:-$(git config --get remote.origin.url)}
REF=${REF:-$(git rev-parse HEAD)}

if ! gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$ACCELERATOR" --version "$VERSION"
fi

on_all() { gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$1"; }

on_all "set -e; test -d bilingual || git clone $REPO_URL bilingual; cd bilingual && git fetch -q origin && git checkout -q $REF \
  && python3 -m venv .venv && .venv/bin/pip install -q -r requirements/lock.txt \
  && .venv/bin/pip install -q 'jax[tpu]==0.10.2' && .venv/bin/pip install -q --no-deps -e ."

ARGS="--gin_file=$GIN_FILE --workdir=$WORKDIR"
for a in "$@"; do ARGS+=" $(printf '%q' "$a")"; done
on_all "cd bilingual && .venv/bin/python -m launch.train $ARGS 2>&1 | tee -a train-\$(hostname).log"
