#!/usr/bin/env bash
# Install mondeq into the current Python.
#   scripts/setup.sh            the package and its command: what a user needs
#   scripts/setup.sh --data     also Debian's Fashion-MNIST package where apt is available
#   scripts/setup.sh --dev      also the test tools, the docs builder and the export runtimes (the test command, CI)
# The flags combine (scripts/setup.sh --dev --data).
# Puts the CPU build of torch 2.13.0 in place first where no torch is installed (a bare
# `torch` requirement would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=0
EXTRAS=""
for flag in "$@"; do
    case "$flag" in
        --data) DATA=1 ;;
        --dev) EXTRAS="[dev,docs,export]" ;;
        *) echo "scripts/setup.sh: unknown option $flag (use --data, --dev)" >&2; exit 2 ;;
    esac
done
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet torch==2.13.0 \
        || "$PY" -m pip install --quiet torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -m pip install --quiet -e ".$EXTRAS"
if [ "$DATA" = 1 ] && [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO=sudo
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
        || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
        || echo "could not install dataset-fashion-mnist; pass --data-dir to mondeq train" >&2
fi
