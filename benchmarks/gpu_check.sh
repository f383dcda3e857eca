#!/usr/bin/env bash
# The GPU check: the one prepared command a lent GPU machine runs (an H100/H200, 16 cores, no
# internet, no TensorRT; the repo arrives without its .venv). At most 8 minutes, nothing
# downloaded; writes gpu-check.json and gpu-check.md into --out (default results/). What it
# measures: benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--sections a b ...] [--wheels DIR]
#   bash benchmarks/gpu_check.sh --fetch-wheels [DIR]     (on a machine that reaches PyPI)
#
# Python. $PYTHON if set; otherwise the first of .venv/bin/python, python3,
# /opt/torch/.venv/bin/python3 and python whose torch sees a CUDA device (--dry-run: the first with
# torch at all). On the lent machines the image's python3 (3.12, /opt/torch/.venv) holds torch with
# CUDA; the repo's .venv does not travel. No such Python: one line on stderr, exit status 3.
#
# Packages. That python lacks some of the project's packages (on the lent image: pydantic, av,
# aiortc and what aiortc needs). They are installed with pip, offline, from a folder of wheels
# (--wheels DIR; default .cache/gpu-check-wheels, ignored by git) into a scratch folder put first on
# PYTHONPATH; only wheels whose distribution the python does not have are installed. Fill that
# folder beforehand where pip reaches PyPI with --fetch-wheels (cp312, manylinux x86_64, ~45 MB)
# and carry it along (device run: carry [".cache/gpu-check-wheels"]). Without it the sections that
# need a missing package record the ImportError and the others still run.
#
# Time. The run stops itself at 8 minutes (GPU_CHECK_TOTAL_S, default 470 s, less in a dry run):
# the setup's time is taken off the Python run's budget, each section has its own budget inside it,
# and a SIGINT at the limit still leaves the report written so far.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
script="$repo/benchmarks/gpu_check.py"
dry_run=0
out="$repo/results"
wheels="$repo/.cache/gpu-check-wheels"
fetch=""
passthrough=()

usage() { sed -n '2,/^[^#]/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1; shift ;;
        --out) out="$2"; shift 2 ;;
        --wheels) wheels="$2"; shift 2 ;;
        --sections)
            shift
            passthrough+=(--sections)
            while [[ $# -gt 0 && "$1" != --* ]]; do passthrough+=("$1"); shift; done ;;
        --fetch-wheels)
            fetch="$wheels"
            if [[ $# -gt 1 && "$2" != --* ]]; then fetch="$2"; shift; fi
            shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -n "$fetch" ]]; then
    # Wheels for the lent image: CPython 3.12 on manylinux x86_64 (GPU_CHECK_PYTHON_VERSION to change).
    mkdir -p "$fetch"
    pip_python="${PYTHON:-$repo/.venv/bin/python}"
    [[ -x "$pip_python" ]] || pip_python=python3
    "$pip_python" -m pip download --quiet --only-binary=:all: \
        --python-version "${GPU_CHECK_PYTHON_VERSION:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$fetch" "pydantic>=2.6" "av>=14,<19" "aiortc>=1.9,<1.17" || exit 1
    rm -f "$fetch"/typing_extensions-*.whl  # the image has it
    echo "gpu_check.sh: wheels in $fetch: $(du -sh "$fetch" | cut -f1) (the device run's tree limit is 64 MiB, repo included)"
    exit 0
fi

started=$SECONDS
if [[ $dry_run == 1 ]]; then total="${GPU_CHECK_TOTAL_S:-150}"; else total="${GPU_CHECK_TOTAL_S:-470}"; fi

# --- a Python with torch (and a CUDA device, unless --dry-run)
probe='
import sys
if sys.version_info < (3, 11):
    print(f"Python {sys.version.split()[0]} (need 3.11 or later)"); sys.exit(1)
try:
    import torch
except Exception as exc:
    print(f"no torch ({type(exc).__name__}: {exc})"[:160]); sys.exit(1)
if sys.argv[1] == "1" and not torch.cuda.is_available():
    print(f"torch {torch.__version__} sees no CUDA device"); sys.exit(1)
print(f"torch {torch.__version__}")
'
need_cuda=$(( dry_run == 1 ? 0 : 1 ))
if [[ -n "${PYTHON:-}" ]]; then
    candidates=("$PYTHON")
else
    candidates=("$repo/.venv/bin/python" python3 /opt/torch/.venv/bin/python3 python)
fi
python=""
tried=()
for candidate in "${candidates[@]}"; do
    if ! command -v "$candidate" >/dev/null 2>&1; then
        tried+=("$candidate: not found")
        continue
    fi
    if said="$(timeout 120 "$candidate" -c "$probe" "$need_cuda" 2>/dev/null)"; then
        python="$candidate"
        python_note="$candidate (${said})"
        break
    fi
    tried+=("$candidate: ${said:-failed}")
done
if [[ -z "$python" ]]; then
    what=$([[ $need_cuda == 1 ]] && echo "torch with a CUDA device" || echo "torch")
    summary="$(IFS=';'; echo "${tried[*]}")"
    echo "gpu_check.sh: no Python here imports $what (tried ${summary//;/; }); set PYTHON=/path/to/python" >&2
    exit 3
fi

# --- the project's packages that python lacks, from carried wheels
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
setup="python $python_note"
missing="$("$python" "$script" --missing-modules 2>/dev/null)"
if [[ -n "$missing" ]]; then
    if compgen -G "$wheels/*.whl" >/dev/null; then
        site="${TMPDIR:-/tmp}/stableface-gpu-check-site"
        mapfile -t chosen < <("$python" "$script" --wheels-to-install "$wheels")
        if [[ ${#chosen[@]} -gt 0 ]]; then
            if "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --disable-pip-version-check --target "$site" "${chosen[@]}" >/dev/null 2>&1; then
                export PYTHONPATH="$site:$PYTHONPATH"
                setup="$setup; installed ${#chosen[@]} wheels from $wheels into $site"
            else
                setup="$setup; pip could not install the wheels from $wheels"
            fi
        fi
        missing="$("$python" "$script" --missing-modules 2>/dev/null)"
    fi
    [[ -n "$missing" ]] && setup="$setup; still missing: $missing (the sections that need them fail with the reason)"
fi
echo "gpu_check.sh: $setup" >&2
export STABLEFACE_GPU_CHECK_SETUP="$setup"

# --- the run, inside what is left of the total
left=$(( total - (SECONDS - started) ))
budget=$(( left - 15 ))
if [[ $budget -lt 20 ]]; then
    echo "gpu_check.sh: setup took $(( SECONDS - started )) s; no time left to run" >&2
    exit 4
fi
arguments=(--out "$out" --budget-s "$budget")
[[ $dry_run == 1 ]] && arguments+=(--dry-run)
export PYTHONUNBUFFERED=1
timeout --signal=INT --kill-after=15 "$(( left - 5 ))" \
    "$python" "$script" "${arguments[@]}" ${passthrough[@]+"${passthrough[@]}"}
status=$?
echo "gpu_check.sh: finished in $(( SECONDS - started )) s (status $status); report: $out/gpu-check.md" >&2
exit $status
