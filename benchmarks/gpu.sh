#!/usr/bin/env bash
# One prepared benchmark run on a single-GPU machine (H100/H200 class; about 7 minutes, capped at 9).
#
#   bash benchmarks/gpu.sh [--json out.json] [--set FIELD=VALUE ...]
#
# 1. `benchmarks/suite.py --profile gpu`: the same table as `make bench`, base-de in bf16 compute (f32 parameters):
#   * attention forward of one 8192-token document (12 heads of 64) per implementation: dense, chunked, cudnn
#     and the Pallas flash kernel (ALiBi in the kernel): warm time, compiled temporary and peak device memory;
#   * MLM step at 64 x 512 tokens and pair step with a global batch of 4096 pairs (GradCache, 16 chunks of 256):
#     tokens/s, MFU against the bf16 matmul peak measured in the same run (the goal: MLM >= 40%, pairs >= 35%)
#     and against the vendor peak;
#   * GradCache compiled memory at 256 vs 4096 pairs;
#   * inference, JAX versus the exported model in PyTorch (sentence-transformers, bf16 autocast) on the same GPU:
#     tokens/s at 32 x 128, and time and peak device memory for one 8192-token document (the goal: JAX's peak
#     below the export's; `auto` takes the flash kernel at that length).
# 2. `benchmarks/profile_step.py`: the base-de MLM step (64 x 512, bf16) timed with `auto` (cuDNN at 512) and
#    with the flash kernel, then one traced step; prints the 20 ops with the most device time and leaves the
#    Perfetto trace in $TRACE_DIR (default benchmarks/results/trace-<date>).
# The input-pipeline row needs tensorflow/seqio; GPU images without them print it as "not run".
# Uses the machine's python3 (PYTHON=... to change) with jax[cuda], flax, optax, torch, transformers,
# sentence-transformers and tokenizers installed; nothing is downloaded.
#
# Without a GPU, `GPU_SH_CHECK=1 bash benchmarks/gpu.sh` runs the same two commands on this machine's
# backend at the tiny preset and short lengths (a check that the script and its rows work, not a measurement).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TRACE_DIR=${TRACE_DIR:-benchmarks/results/trace-$(date +%F)}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [[ -n "${GPU_SH_CHECK:-}" ]]; then
  SUITE=(--preset tiny --sections attention,train,inference --set attention_lengths=256 --set mlm_batch=2
         --set pair_batch=16 --set pair_chunks=2 --set step_repeats=2 --set infer_repeats=1
         --set matmul_sizes=256,512 --set attention_impls=dense,chunked,cudnn,flash)
  PROFILE=(--preset tiny --batch 2 --length 128 --steps 2)
else
  "$PY" - <<'PY' || exit 1
import jax
print("jax", jax.__version__, "devices:", jax.devices())
if jax.default_backend() != "gpu":
    raise SystemExit("benchmarks/gpu.sh: JAX sees no GPU (backend %r); install jax[cuda12] or jax[cuda13]" % jax.default_backend())
PY
  SUITE=()
  PROFILE=(--preset base-de --batch 64 --length 512 --steps 5)
fi
timeout "${BENCH_TIMEOUT:-420}" "$PY" benchmarks/suite.py --profile gpu "${SUITE[@]}" "$@"
suite_status=$?
timeout "${PROFILE_TIMEOUT:-120}" "$PY" benchmarks/profile_step.py --compute_dtype bfloat16 --impls auto,flash \
  --trace "$TRACE_DIR" "${PROFILE[@]}"
profile_status=$?
exit $(( suite_status || profile_status ))
