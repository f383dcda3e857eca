#!/usr/bin/env bash
# Install into .venv and run the main job: the live avatar server (`stableface serve`), with the
# browser client at http://127.0.0.1:8080/ (open it, press Start, speak). Extra arguments go to
# `stableface serve`, e.g. ./run.sh --port 9000 --host 0.0.0.0 --cert cert.pem --key key.pem
#
# Until the bundled default avatar lands (issue #9), the first run builds a demo avatar from data the
# project makes itself (scikit-image's public-domain astronaut portrait mouthing generated speech:
# `stableface synth` → `prepare` → a short `train` of the tiny preset, about a minute on 2 cores)
# into .cache/demo-avatar and serves that; later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
export PATH="$PWD/.venv/bin:$PATH"
if [[ -f engines/default_avatar/avatar.json ]]; then
    exec stableface serve --avatar default "$@"
fi
demo=".cache/demo-avatar"
if [[ ! -f "$demo/avatar/avatar.json" ]]; then
    echo "run.sh: building the demo avatar once (about a minute)" >&2
    mkdir -p "$demo"
    stableface synth --out "$demo/talking_face.mp4" --seconds 12 --seed 0 --overwrite
    stableface prepare "$demo/talking_face.mp4" --out "$demo/dataset" --overwrite --quiet
    stableface train "$demo/dataset" --out "$demo/avatar" --preset tiny --steps 150 --val-every 50 \
        --overwrite --quiet
fi
exec stableface serve --avatar "demo=$demo/avatar" "$@"
