#!/usr/bin/env bash
# The main job on the built-in dataset with the quick profile: generate the procedural
# dataset and verify it against its manifest.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/demo}
CATEGORY=${CATEGORY:-bottle}
regtool() { .venv/bin/regtool "$@"; }

regtool --seed 0 make-dataset --out "$RUN/dataset" --config configs/quick.toml
regtool check-dataset "$RUN/dataset"
echo "demo: dataset and contact sheets in $RUN/dataset (e.g. $RUN/dataset/$CATEGORY/contact_sheet.png)"
