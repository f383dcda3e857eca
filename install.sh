#!/usr/bin/env bash
# Create (or update) the project's own virtual environment in .venv and install StableFace into it.
#   ./install.sh            the engine
#   ./install.sh dev        the engine plus test tools (ruff, mypy, pytest) and, where apt-get can
#                           be used (root), the system programs the tests drive: Debian's chromium
#                           and chromium-driver (browser test), ffmpeg (Y4M pipe test), haproxy (scale-out test),
#                           pulseaudio, pulseaudio-utils, libasound2-plugins, libportaudio2 (virtual microphone test)
#   ./install.sh dev,pipecat,mic  the same plus pipecat-ai and sounddevice (./test.sh uses this)
# Environment: PYTHON (interpreter to build the venv with, 3.11 or 3.12),
#              TORCH_SPEC (default torch==2.13.0; e.g. a CPU-only or CUDA build of your choice).
set -euo pipefail
cd "$(dirname "$0")"

extras="${1:-}"
venv=".venv"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
    for candidate in python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)'; then
            echo "$candidate"; return
        fi
    done
    echo "install.sh: error: need Python 3.11 or 3.12 (set PYTHON=/path/to/python)" >&2
    exit 1
}

if [[ ! -x "$venv/bin/python" ]]; then
    python="$(pick_python)"
    echo "install.sh: creating $venv with $("$python" --version)" >&2
    "$python" -m venv "$venv"
fi

install_test_programs() {
    local missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
    command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
    # The virtual microphone and microphone-capture tests: a headless PulseAudio server, its
    # command-line clients, ALSA's pulse plugin and PortAudio (what sounddevice opens).
    command -v pulseaudio >/dev/null 2>&1 || missing+=(pulseaudio)
    command -v pactl >/dev/null 2>&1 || missing+=(pulseaudio-utils)
    compgen -G "/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so" >/dev/null || missing+=(libasound2-plugins)
    ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || missing+=(libportaudio2)
    if [[ ${#missing[@]} -eq 0 ]]; then return; fi
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "install.sh: note: ${missing[*]} not installed (needs apt-get as root); their tests skip" >&2
        return
    fi
    echo "install.sh: installing ${missing[*]} (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >/dev/null ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null; } ||
        echo "install.sh: note: could not install ${missing[*]}; their tests skip" >&2
}

if [[ "$extras" == *dev* ]]; then install_test_programs; fi

stamp="$venv/.installed-$( (cat pyproject.toml; echo "$extras $torch_spec") | sha256sum | cut -c1-16)"
if [[ -f "$stamp" ]]; then
    exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Environments made before the face mesh moved to ONNX carry mediapipe and its two OpenCV builds,
# which would shadow opencv-python-headless's cv2: take them out once.
if "$venv/bin/pip" show --quiet mediapipe >/dev/null 2>&1; then
    echo "install.sh: removing mediapipe and its OpenCV builds (the face mesh now runs on ONNX Runtime)" >&2
    "$venv/bin/pip" uninstall --quiet --yes mediapipe opencv-contrib-python opencv-python >/dev/null
fi
# torch first and alone: with it in place, the project's torch>=2.4 range installs nothing more.
"$venv/bin/pip" install --quiet "$torch_spec"
target="."
if [[ -n "$extras" ]]; then target=".[$extras]"; fi
"$venv/bin/pip" install --quiet -e "$target"
rm -f "$venv"/.installed-*
touch "$stamp"
echo "install.sh: installed into $venv" >&2
