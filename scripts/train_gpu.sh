#!/usr/bin/env bash
# Train every recipe on the GPU of this host within a fixed budget each, from the packed faces, so that a lent GPU
# window is used at once: `make train-gpu` (TRAIN_GPU_SECONDS per recipe, default 120; FACES: the archive, made from
# DATA by `python -m training pack` when missing). Checkpoints are rewritten every epoch, so a recipe stopped by the
# budget still leaves its last epoch's checkpoint in runs/<family>-NNNNN/; `run --resume` continues it later.
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data/celeba-mini}
FACES=${FACES:-.cache/celeba64.safetensors}
SECONDS_EACH=${TRAIN_GPU_SECONDS:-120}
GPUS=${GPUS:-$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')}
[ -f "$FACES" ] || "$PYTHON" -m training pack --data "$DATA" --out "$FACES"
for recipe in classifier vae dcgan acgan infogan glow; do
  precision=bf16
  [ "$recipe" = glow ] && precision=fp32  # the flow's exact invertibility wants fp32
  echo "== $recipe: $SECONDS_EACH s on $GPUS GPU(s), $precision"
  timeout --signal INT "$SECONDS_EACH" "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" \
    -m training run "training/recipes/$recipe.toml" --device cuda --precision "$precision" \
    --set "data=$FACES" --set threads=4 --set channels-last=true || echo "== $recipe stopped (budget or error: $?)"
done
ls -d runs/*-[0-9][0-9][0-9][0-9][0-9] | tail -6
