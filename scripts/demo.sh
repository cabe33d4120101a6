#!/usr/bin/env bash
# The main job on the built-in dataset with the quick profile (one category, 2-core CPU):
# generate -> build-shapespace -> train-unet -> evaluate, then print where the report is.
# RUN (output folder) and CATEGORY can be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/demo}
CATEGORY=${CATEGORY:-bottle}
CONFIG=${CONFIG:-configs/quick.toml}
regtool() { .venv/bin/regtool "$@"; }

regtool --seed 0 make-dataset --out "$RUN/dataset" --categories "$CATEGORY" --config "$CONFIG"
regtool --seed 0 build-shapespace --dataset "$RUN/dataset" --category "$CATEGORY" \
  --out "$RUN/$CATEGORY/shapespace.npz" --config "$CONFIG"
regtool --seed 0 train-unet --dataset "$RUN/dataset" --category "$CATEGORY" \
  --out "$RUN/$CATEGORY/unet.pt" --config "$CONFIG"
regtool --seed 0 evaluate --dataset "$RUN/dataset" --category "$CATEGORY" \
  --shapespace "$RUN/{category}/shapespace.npz" --unet "$RUN/{category}/unet.pt" \
  --out "$RUN/evaluation" --config "$CONFIG"
echo "demo: report in $RUN/evaluation/report.md (chart: $RUN/evaluation/errors.png); made with" \
  "the quick profile ($CONFIG: 600-step U-Net, 20 iterations), so its numbers differ from the" \
  "README's Table 1, which uses the default (CPU) profile on all four categories"
