#!/usr/bin/env bash
# Set up lifevit on a fresh machine: a virtual environment in .venv with PyTorch, timm and lifevit itself,
# and the embedded default data set (Fashion-MNIST, Debian's dataset-fashion-mnist) when it is missing.
#
#   bash scripts/setup.sh            # runtime + test dependencies
#
# Environment: LIFEVIT_VENV (default .venv), LIFEVIT_TORCH (default "torch==2.14.1 torchvision==0.29.1";
# set it to e.g. "torch torchvision" for another platform), LIFEVIT_PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${LIFEVIT_VENV:-.venv}"
PY="${LIFEVIT_PYTHON:-python3}"
TORCH_SPEC="${LIFEVIT_TORCH:-torch==2.14.1 torchvision==0.29.1}"
FMNIST_DIR=/usr/share/datasets/fashion-mnist

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip || echo "[setup] could not upgrade pip (offline?); continuing"
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC (several GB the first time)"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q $TORCH_SPEC
fi
echo "[setup] installing lifevit and its dependencies"
"$VENV/bin/python" -m pip install -q -e ".[dev]"

if [ ! -f "$FMNIST_DIR/t10k-labels-idx1-ubyte.gz" ] && [ -z "${LIFEVIT_FASHION_MNIST:-}" ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist) with sudo"
        sudo -n apt-get update -qq >/dev/null 2>&1 || true
        sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "[setup] Fashion-MNIST was not found in $FMNIST_DIR and cannot be installed here."
        echo "        Either run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or download the four"
        echo "        *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist into a folder and pass"
        echo "        --data-root FOLDER (or set LIFEVIT_FASHION_MNIST=FOLDER before running setup)."
    fi
fi
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, timm, lifevit; print(f"torch {torch.__version__}, timm {timm.__version__}, lifevit {lifevit.__version__}")')"
