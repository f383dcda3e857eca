#!/usr/bin/env bash
# Install into .venv and run the main job.
# Until the live server lands (issue #7) the main job is the offline pipeline end to end: generate a
# synthetic talking-face video, then build an avatar dataset from it with `stableface prepare`.
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
export PATH="$PWD/.venv/bin:$PATH"
out="${1:-demo}"
mkdir -p "$out"
stableface synth --out "$out/talking_face.mp4" --seconds 8 --seed 0 --overwrite
stableface prepare "$out/talking_face.mp4" --out "$out/dataset" --overwrite
echo "open $out/dataset/ (frames/, shapes/, masks/, manifest.json)"
