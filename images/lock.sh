#!/usr/bin/env bash
# Regenerates the images' pinned, hashed requirement files from pyproject.toml's extras, for each image's
# Python and platform. Where the project's .venv exists, its versions constrain the lock, so an image
# installs exactly what the tests ran against. uv (from PyPI) lives in a venv of its own under the cache.
#
#   images/lock.sh            writes images/*/requirements.txt (commit them)
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=${UV_VERSION:-0.9.5}
TOOLS_VENV=${MLPERF_CACHE:-$HOME/.cache/mlperf-operator}/images-venv
if [[ ! -x $TOOLS_VENV/bin/uv ]] || [[ $("$TOOLS_VENV/bin/uv" --version) != "uv $UV_VERSION" ]]; then
    python3 -m venv "$TOOLS_VENV"
    "$TOOLS_VENV/bin/pip" install -q "uv==$UV_VERSION"
fi
UV=$TOOLS_VENV/bin/uv

constraints=()
if [[ -x .venv/bin/python ]]; then
    tested=$(mktemp)
    trap 'rm -f "$tested"' EXIT
    .venv/bin/python -m pip freeze --exclude-editable | grep -v '^-e ' > "$tested"
    constraints=(--constraint "$tested")
fi

lock() {  # lock OUT PYTHON EXTRAS...
    local out=$1 python=$2; shift 2
    local extras=()
    for e in "$@"; do extras+=(--extra "$e"); done
    echo "locking $out (Python $python; extras: $*)"
    "$UV" pip compile pyproject.toml "${extras[@]}" "${constraints[@]}" --python-version "$python" \
        --python-platform x86_64-manylinux_2_28 --generate-hashes --quiet \
        --custom-compile-command "images/lock.sh" -o "$out"
}

lock images/operator/requirements.txt 3.11 operator
lock images/harness-cpu/requirements.txt 3.11 harness
# The TensorRT container's Python; torch from PyPI brings its own CUDA libraries.
lock images/harness-gpu/requirements.txt 3.12 harness gpu
