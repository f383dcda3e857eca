#!/usr/bin/env bash
# Install into .venv and run the main job.
# Until the live server lands (issue #7, default avatar #9) the main job is the offline pipeline end
# to end, on data the project makes itself: a synthetic talking face (scikit-image's public-domain
# astronaut portrait mouthing generated speech) → `stableface prepare` → a short `stableface train`
# of the tiny preset → `stableface render` of new speech into demo/talking.mp4.
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
export PATH="$PWD/.venv/bin:$PATH"
out="${1:-demo}"
mkdir -p "$out"
stableface synth --out "$out/talking_face.mp4" --seconds 12 --seed 0 --overwrite
stableface prepare "$out/talking_face.mp4" --out "$out/dataset" --overwrite
stableface train "$out/dataset" --out "$out/avatar" --preset tiny --steps 150 --val-every 50 --overwrite
stableface synth --out "$out/new_speech.mp4" --audio-out "$out/new_speech.wav" --seconds 6 --seed 1 --overwrite
stableface render "$out/avatar" "$out/new_speech.wav" --out "$out/talking.mp4" --overwrite
echo "done: $out/talking.mp4 (the avatar mouthing speech it never heard); dataset in $out/dataset, avatar in $out/avatar"
