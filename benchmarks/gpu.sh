#!/usr/bin/env bash
# One prepared benchmark run on a single-GPU machine (H100/H200 class; about 5 minutes, capped at 8).
#
#   bash benchmarks/gpu.sh [--json out.json] [--set FIELD=VALUE ...]
#
# Prints the same table as `make bench`, with base-de in bf16 compute (f32 parameters):
#   * MLM step at 64 x 512 tokens and pair step with a global batch of 4096 pairs (GradCache, 16 chunks of 256):
#     tokens/s, MFU against the bf16 matmul peak measured in the same run and against the vendor peak;
#   * GradCache compiled memory at 256 vs 4096 pairs;
#   * inference, JAX versus the exported model in PyTorch (sentence-transformers, bf16 autocast) on the same GPU:
#     tokens/s at 32 x 128, and time and peak device memory for one 8192-token document.
# The input-pipeline row needs tensorflow/seqio; GPU images without them print it as "not run".
# Uses the machine's python3 (PYTHON=... to change) with jax[cuda], flax, optax, torch, transformers,
# sentence-transformers and tokenizers installed; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'PY'
import jax
print("jax", jax.__version__, "devices:", jax.devices())
if jax.default_backend() != "gpu":
    raise SystemExit("benchmarks/gpu.sh: JAX sees no GPU (backend %r); install jax[cuda12] or jax[cuda13]" % jax.default_backend())
PY
exec timeout "${BENCH_TIMEOUT:-480}" "$PY" benchmarks/suite.py --profile gpu "$@"
