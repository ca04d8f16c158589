#!/usr/bin/env bash
# Regenerates the README's figures from a running server: `make serve` in one shell, then `bash docs/make_figures.sh`.
set -euo pipefail
URL=${URL:-http://127.0.0.1:8000}
cd "$(dirname "$0")"
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
# the condition at the default strength: the same seed asked for Male off, then on
post /generate/glow '{"n": 8, "seed": 3, "temperature": 0.3, "attributes": {"Male": false}}' glow_male_off.png
post /generate/glow '{"n": 8, "seed": 3, "temperature": 0.3, "attributes": {"Male": true}}' glow_male_on.png
