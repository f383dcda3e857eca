#!/usr/bin/env bash
# Install into .venv (with the dev tools, the pipecat and mic extras) and run the checks: ruff, mypy, pytest.
# Extra arguments go to pytest, e.g. ./test.sh -k prepare   or   ./test.sh -m slow
# (the default run leaves out only `slow`; `-m "not realtime and not browser"` keeps the
# deterministic tiers alone).
set -euo pipefail
cd "$(dirname "$0")"
./install.sh dev,pipecat,mic
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff" >&2
ruff check .
echo "== mypy" >&2
mypy engines realtime offline_training stableface tests
echo "== pytest" >&2
pytest --durations=15 "$@"
