#!/usr/bin/env bash
# Install mondeq into the current Python. Puts the CPU build of torch 2.13.0 in place first
# where no torch is installed (a bare `torch` requirement would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet torch==2.13.0 \
        || "$PY" -m pip install --quiet torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -m pip install --quiet -e ".[dev]"
