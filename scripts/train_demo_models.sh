#!/usr/bin/env bash
# Regenerate the three shipped demo models in Resources/Models/.
#
# Same data (shifted variants of the 2 mm MNI sample case: training seeds 1-40, validation
# seeds 41-44; evaluation uses 1001+), same network (MONAI UNet 8,16,32 + prototype head),
# same budget and seed; only the loss differs:
#   dicece          Dice + CE
#   dicece-hardace  Dice + CE + hard-binned mL1-ACE
#   dicece-softace  Dice + CE + soft-binned mL1-ACE
#
# Usage: scripts/train_demo_models.sh [extra calibseg-train options, e.g. --steps 20]
# Environment: PYTHON (default .venv/bin/python), MODELS (default Resources/Models),
#              ONLY (train just this one of the three names).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
MODELS="${MODELS:-Resources/Models}"
mkdir -p "$MODELS"

COMMON=(
    --sample mni-t1 --resolution 2 --train-seeds 1-40 --val-seeds 41-44
    --head prototype --channels 8,16,32 --strides 2,2 --res-units 0
    --feature-dim 16 --prototypes-per-class 4
    --patch 48 --batch 2 --warmup-steps 20 --steps 400 --last-layer-steps 20
    --lr 0.01 --last-layer-lr 0.001 --bins 20 --cluster-weight 0.5
    --seed 0 --threads 2 --push-cases 8 --overwrite
)

train() {
    local name="$1"; shift
    if [ -n "${ONLY:-}" ] && [ "$ONLY" != "$name" ]; then return 0; fi
    echo "[demo models] training $name" >&2
    "$PYTHON" -m CalibSegLib.cli train "${COMMON[@]}" "$@" --name "$name" -o "$MODELS/$name"
}

train dicece --calibration-loss none "$@"
train dicece-hardace --calibration-loss hard --calibration-weight 1 "$@"
train dicece-softace --calibration-loss soft --calibration-weight 1 "$@"
