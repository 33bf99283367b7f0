#!/usr/bin/env bash
# Installs checkov (the static checker run on the rendered chart) into a virtual environment of its
# own, outside the repository: it has heavy, tightly pinned dependencies that must not mix with the
# project's .venv. Idempotent: a warm run only checks the version and prints the path.
#
#   helm/install-checkov.sh            -> prints the checkov binary's path on its last line
set -euo pipefail

CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
CACHE=${MLPERF_CACHE:-$HOME/.cache/mlperf-operator}
VENV=$CACHE/checkov-venv
PYTHON=${PYTHON:-python3}

if [[ -x $VENV/bin/checkov ]] && [[ $("$VENV/bin/checkov" --version 2>/dev/null) == "$CHECKOV_VERSION" ]]; then
    echo "$VENV/bin/checkov"
    exit 0
fi

echo "installing checkov $CHECKOV_VERSION into $VENV (once; a few minutes)" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
"$VENV/bin/python" -m pip install -q "checkov==$CHECKOV_VERSION" >&2
"$VENV/bin/checkov" --version >&2
echo "$VENV/bin/checkov"
