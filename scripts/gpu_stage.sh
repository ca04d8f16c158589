#!/usr/bin/env bash
# Fit a GPU-check call under the device tool's 64 MiB limit on what travels: the tracked tree is about 76 MB, 70 of
# them weights, and the wheels add about 12. `keep FAMILY...` moves every other weights/*.safetensors into
# .gpu-stage/ (ignored: it does not travel); `restore` puts them back. Two calls cover every family:
#   scripts/gpu_stage.sh keep vae classifier dcgan      # ~38 MB of weights: the detector needs the classifier
#   scripts/gpu_stage.sh keep acgan infogan glow        # ~32 MB
#   scripts/gpu_stage.sh restore                        # always, after the calls
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=.gpu-stage
case "${1:-}" in
  keep)
    shift
    [ "$#" -gt 0 ] || { echo "usage: $0 keep FAMILY... | restore" >&2; exit 2; }
    "$0" restore
    mkdir -p "$STAGE"
    for path in weights/*.safetensors; do
      family=$(basename "$path" .safetensors)
      if [[ " $* " != *" $family "* ]]; then mv "$path" "$STAGE/"; fi
    done
    echo "weights kept for this call: $(cd weights && ls *.safetensors | tr '\n' ' ')"
    ;;
  restore)
    if [ -d "$STAGE" ]; then
      for path in "$STAGE"/*.safetensors; do [ -e "$path" ] && mv "$path" weights/; done
      rmdir "$STAGE"
    fi
    git diff --quiet -- weights || { echo "weights/ differs from the commit after restoring" >&2; exit 1; }
    ;;
  *)
    echo "usage: $0 keep FAMILY... | restore" >&2
    exit 2
    ;;
esac
