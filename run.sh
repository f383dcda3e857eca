#!/usr/bin/env bash
# Install into .venv and run the main job: the live avatar server (`stableface serve`) on the bundled
# default avatar (engines/default_avatar/), with the browser client at http://127.0.0.1:8080/ (open
# it, press Start, speak). Extra arguments go to `stableface serve`, e.g.
#   ./run.sh --port 9000 --host 0.0.0.0 --cert cert.pem --key key.pem
#   ./run.sh --avatar my_avatar          # an avatar of your own, from `stableface train`
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
exec .venv/bin/stableface serve "$@"
