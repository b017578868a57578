#!/usr/bin/env bash
# The main job: set up lifevit, then train the CPU-scale ViT without and with LIFE on Fashion-MNIST
# (5,000 class-balanced training images, the full 10,000-image test set, 20 epochs) and print the comparison.
#
#   bash scripts/main_job.sh            # run folders under runs/fashion_mnist-n5000/, table in runs/comparison.md
#
# The two models train at the same time, one process and one thread each (faster on 2 cores than one after
# the other with 2 threads). Finished runs are read back, interrupted ones resumed, so a second call only
# prints the table. Environment: LIFEVIT_RUNS (default runs), LIFEVIT_JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${LIFEVIT_VENV:-.venv}"
RUNS="${LIFEVIT_RUNS:-runs}"
start=$(date +%s)
"$VENV/bin/lifevit" compare \
    --models vit_lite_patch4_28 vit_lite_patch4_28_life \
    --dataset fashion_mnist \
    --config configs/fashion_mnist/vit_lite_life.yaml \
    --runs-dir "$RUNS" \
    --jobs "${LIFEVIT_JOBS:-2}" \
    --table "$RUNS/comparison.md"
echo "[main job] done in $(( $(date +%s) - start )) s (plus setup); run folders in $RUNS/fashion_mnist-n5000/"
