#!/usr/bin/env bash
# Regenerates every figure of the documentation (docs/*.png) and the web page's screenshot (docs/web_page.png) from the
# shipped weights, with seeded requests (the same weights give the same pictures, to within one 8-bit level in a few
# pixels where float sums differ between runs): `bash docs/make_figures.sh`, or `make figures`.
# It starts the service (`python -m app`, the checkpoints in weights/) on 127.0.0.1:$PORT (8000: the address the
# screenshot's curl commands show) and stops it at the end; URL=http://host:port uses a server already running instead.
# PYTHON: the interpreter with the dev extras (default .venv/bin/python, what `make install-dev` makes).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
case $PYTHON in */*) PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;; esac  # absolute: we cd
PORT=${PORT:-8000}
cd "$ROOT/docs"

if [ -z "${URL:-}" ]; then
  URL=http://127.0.0.1:$PORT
  if curl -s -o /dev/null "$URL/health"; then
    echo "something already answers on $URL: stop it, or set PORT (another port) or URL (to use it)" >&2
    exit 1
  fi
  (cd .. && exec "$PYTHON" -m app --host 127.0.0.1 --port "$PORT") &
  server=$!
  trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
  for _ in $(seq 300); do
    curl -sf -o /dev/null "$URL/ready" && break
    kill -0 "$server" 2>/dev/null || { echo "the service exited before it was ready" >&2; exit 1; }
    sleep 1
  done
  curl -sf -o /dev/null "$URL/ready" || { echo "the service was not ready within 300 s" >&2; exit 1; }
fi
faces=../tests/data/faces
post() { curl -sf -X POST "$URL$1" -H 'Content-Type: application/json' -d "$2" -o "$3"; echo "$3"; }

post /generate/vae '{"n": 32, "seed": 1}' vae_samples.png
curl -sf -X POST "$URL/vae/reconstruct" -F images=@$faces/000001.jpg -F images=@$faces/000002.jpg \
     -F images=@$faces/000003.jpg -F images=@$faces/182637.jpg -o vae_reconstructions.png && echo vae_reconstructions.png
post /generate/dcgan '{"n": 32, "seed": 1}' dcgan_samples.png
post /generate/acgan '{"n": 8, "seed": 1, "toggle": "Smiling"}' acgan_smiling_pairs.png
post /generate/acgan '{"n": 8, "seed": 1, "toggle": "Smiling", "strength": 1}' acgan_smiling_pairs_strength1.png
post /generate/acgan '{"n": 8, "seed": 2, "toggle": "Male"}' acgan_male_pairs.png
# the shipped model's three codes (what each moves: code_effects in the checkpoint's metrics)
for code in 0 1 2; do post /generate/infogan "{\"rows\": 4, \"code\": $code, \"seed\": 1}" infogan_code$code.png; done
post /generate/glow '{"n": 16, "seed": 1, "temperature": 0.3}' glow_samples.png
curl -sf -X POST "$URL/glow/interpolate" -F face_a=@$faces/000001.jpg -F face_b=@$faces/182637.jpg -F steps=8 \
     -o glow_interpolation.png && echo glow_interpolation.png
# 000002 (not smiling, no glasses): Smiling, then Eyeglasses, from -1 (off) to +1 (on)
curl -sf -X POST "$URL/glow/manipulate" -F face=@$faces/000002.jpg -F attribute=Smiling -F strengths=-1,-0.5,0,0.5,1 \
     -o glow_manipulation_smiling.png && echo glow_manipulation_smiling.png
curl -sf -X POST "$URL/glow/manipulate" -F face=@$faces/000002.jpg -F attribute=Eyeglasses -F strengths=-1,-0.5,0,0.5,1 \
     -o glow_manipulation_eyeglasses.png && echo glow_manipulation_eyeglasses.png
# a real photo that is not a CelebA frame (align=auto finds and aligns the face): Smiling and Male moved, then a morph
# to a CelebA face; the headers say which frames the artefact guard served at a reduced strength
photo=../tests/data/photos/astronaut.jpg
for attribute in Smiling Male; do
  curl -sf -X POST "$URL/glow/manipulate" -F face=@$photo -F attribute=$attribute -F strengths=-1,-0.5,0,0.5,1 \
       -o glow_photo_${attribute,,}.png && echo glow_photo_${attribute,,}.png
done
curl -sf -X POST "$URL/glow/interpolate" -F face_a=@$photo -F face_b=@$faces/000001.jpg -F steps=8 \
     -o glow_photo_interpolation.png && echo glow_photo_interpolation.png
# the condition at the default strength: the same seed asked for Male off, then on
post /generate/glow '{"n": 8, "seed": 3, "temperature": 0.3, "attributes": {"Male": false}}' glow_male_off.png
post /generate/glow '{"n": 8, "seed": 3, "temperature": 0.3, "attributes": {"Male": true}}' glow_male_on.png
# a photo that is not a CelebA frame through align=auto (in-process, with weights/; its numbers go to
# runs/alignment/alignment_astronaut.json, quoted on docs/faces.md)
(cd .. && "$PYTHON" -m training alignment figure --weights weights --out docs/alignment_astronaut.png)
# the web page after a few seeded requests (Playwright driving Debian's chromium, as tests/browser does)
"$PYTHON" page_screenshot.py --url "$URL"
