#!/usr/bin/env bash
# Train every recipe on the GPU(s) of this host within a fixed budget each, from the packed faces, so that a lent GPU
# window is used at once: `make train-gpu` (TRAIN_GPU_SECONDS per recipe, default 120; FACES: the archive, made from
# DATA by `python -m training pack` when missing). Checkpoints are rewritten every epoch, so a recipe stopped by the
# budget still leaves its last epoch's checkpoint in runs/<family>-NNNNN/; `run --resume` continues it later.
# Each recipe runs on as many GPUs as divide its batch size (scripts/gpu_plan.py says when that is fewer than the
# host has). A recipe stopped by its budget is expected; one that fails otherwise makes the script exit 1 at the end.
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
DATA=${DATA:-../shared/data/celeba-mini}
FACES=${FACES:-.cache/celeba64.safetensors}
SECONDS_EACH=${TRAIN_GPU_SECONDS:-120}
GPUS=${GPUS:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')}
if [ "$GPUS" -lt 1 ]; then
  echo "train_gpu.sh: no CUDA GPU is visible (torch.cuda.device_count() is 0); nothing to train on" >&2
  exit 1
fi
[ -f "$FACES" ] || "$PYTHON" -m training pack --data "$DATA" --out "$FACES"
plan=$("$PYTHON" scripts/gpu_plan.py "$GPUS" training/recipes/{classifier,vae,dcgan,acgan,infogan,glow}.toml)
failed=()
while read -r recipe processes; do
  precision=bf16
  [ "$recipe" = glow ] && precision=fp32  # the flow's exact invertibility wants fp32
  echo "== $recipe: $SECONDS_EACH s on $processes of $GPUS GPU(s), $precision"
  status=0
  timeout --signal INT "$SECONDS_EACH" "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$processes" \
    -m training run "training/recipes/$recipe.toml" --device cuda --precision "$precision" \
    --set "data=$FACES" --set threads=4 --set channels-last=true || status=$?
  if [ "$status" -eq 124 ]; then
    echo "== $recipe stopped by its $SECONDS_EACH s budget (its last epoch's checkpoint is kept)"
  elif [ "$status" -ne 0 ]; then
    echo "== $recipe FAILED (exit $status)" >&2
    failed+=("$recipe")
  fi
done <<< "$plan"
ls -d runs/*-[0-9][0-9][0-9][0-9][0-9] 2>/dev/null | tail -6 || true
if [ "${#failed[@]}" -gt 0 ]; then
  echo "train_gpu.sh: failed: ${failed[*]}" >&2
  exit 1
fi
