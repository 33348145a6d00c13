#!/usr/bin/env bash
# Build .venv for training (not for the tests) in this checkout: a Python >= 3.11, requirements/runtime.txt
# (the runtime subset of requirements/lock.txt, same pins), JAX's accelerator extra, this project (--no-deps).
# launch/tpu_vm.sh runs it on every TPU worker; launch/slurm_gpu.sh once on the shared filesystem.
#
#   launch/install_env.sh [EXTRA]      EXTRA: tpu | cuda12 | '' (the lock's CPU jax only)
#
# Python: uv (pinned below) makes the venv. `uv venv --python 3.11` takes a CPython 3.11 already on the
# machine if there is one, otherwise downloads uv's managed CPython 3.11 (python-build-standalone) under
# $UV_PYTHON_INSTALL_DIR (default ~/.local/share/uv/python). So it works on images whose python3 is older
# (tpu-ubuntu2204-base has 3.10) with no apt-get, PPA or sudo. uv itself is installed with the image's pip
# (`python3 -m pip install --target`, any Python 3.8+ with pip) unless the pinned uv is already on PATH.
# BILINGUAL_PYTHON overrides the request (3.12, or an interpreter's path).
#
# Idempotent: .venv/.bilingual-install holds a hash of the runtime lock and the settings below; when it
# matches, nothing is installed (a re-run on the same VM costs a second). Otherwise .venv is rebuilt from
# scratch, which takes seconds when uv's cache (UV_CACHE_DIR, default ~/.cache/uv) is warm.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA=${1-}
UV_VERSION=0.13.9
PYTHON_REQUEST=${BILINGUAL_PYTHON:-3.11}
STAMP=.venv/.bilingual-install
JAX_PIN=$(grep -E '^jax==' requirements/runtime.txt)           # e.g. jax==0.10.2
ACCELERATOR=${EXTRA:+jax[$EXTRA]==${JAX_PIN#jax==}}              # e.g. jax[tpu]==0.10.2, or nothing
WANT="runtime.txt=$(sha256sum requirements/runtime.txt | cut -d' ' -f1) accelerator=${ACCELERATOR:-none} python=$PYTHON_REQUEST uv=$UV_VERSION"

if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "install_env: .venv is up to date ($WANT); nothing to install"
  exit 0
fi

if command -v uv >/dev/null && [ "$(uv --version | cut -d' ' -f2)" = "$UV_VERSION" ]; then
  UV=uv
else
  UV_HOME=${BILINGUAL_UV_HOME:-$HOME/.local/bilingual-uv-$UV_VERSION}
  UV=$UV_HOME/bin/uv
  if [ ! -x "$UV" ]; then
    PIP_PYTHON=$(command -v python3 || command -v python) || { echo "install_env: no python3 to install uv with" >&2; exit 1; }
    "$PIP_PYTHON" -m pip --version >/dev/null 2>&1 \
      || { echo "install_env: $PIP_PYTHON has no pip: install python3-pip, or put uv $UV_VERSION on PATH" >&2; exit 1; }
    PIP_ROOT_USER_ACTION=ignore "$PIP_PYTHON" -m pip install -q --disable-pip-version-check --target "$UV_HOME" "uv==$UV_VERSION"
  fi
fi

echo "install_env: building .venv ($WANT)"
rm -f "$STAMP"
"$UV" venv -q --clear --python "$PYTHON_REQUEST" .venv
.venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "install_env: .venv has Python $(.venv/bin/python -V); 3.11 or 3.12 is needed" >&2; exit 1; }
# One resolve: the lock's pins and the accelerator extra together, so the extra cannot move a pinned package.
"$UV" pip install -q --python .venv/bin/python -r requirements/runtime.txt ${ACCELERATOR:+"$ACCELERATOR"}
"$UV" pip install -q --python .venv/bin/python --no-deps -e .
echo "$WANT" > "$STAMP"
echo "install_env: .venv ready: $(.venv/bin/python -V), $("$UV" pip freeze -q --python .venv/bin/python | grep -cv '^-e') packages${ACCELERATOR:+, $ACCELERATOR}"
