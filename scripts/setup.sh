#!/usr/bin/env bash
# Install segtool and what its tests need into a virtual environment, .venv/
# (created on first use; activate it with `. .venv/bin/activate`). Set PYTHON
# to install into another interpreter instead (e.g. PYTHON=python3 in a
# container).
# Without an NVIDIA GPU we pin torch==2.13.0: the CPU build (a bare `torch`
# requirement can pull a multi-GB CUDA build). With a GPU, pip picks the CUDA
# build. Set SEGTOOL_TORCH to override the torch requirement.
# Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
else
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  PY=.venv/bin/python
fi
if [ -n "${SEGTOOL_TORCH:-}" ]; then
  torch_req="$SEGTOOL_TORCH"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  torch_req="torch>=2.1"
else
  torch_req="torch==2.13.0"
fi
"$PY" -m pip install --quiet --disable-pip-version-check "$torch_req"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
"$PY" -c "import segtool, torch; print('segtool', segtool.__version__, '· torch', torch.__version__, '· cuda' if torch.cuda.is_available() else '· cpu')"
if [ -z "${PYTHON:-}" ]; then
  echo "installed into .venv: activate it with  . .venv/bin/activate"
fi
