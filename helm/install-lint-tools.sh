#!/usr/bin/env bash
# Installs the chart's static checkers into a virtual environment of their own, outside the repository:
# checkov (heavy, tightly pinned dependencies that must not mix with the project's .venv) and
# promql-parser (checks the alert expressions). Idempotent: a warm run only checks the versions.
#
#   helm/install-lint-tools.sh        -> prints the venv's bin directory on its last line
set -euo pipefail

CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
PROMQL_PARSER_VERSION=${PROMQL_PARSER_VERSION:-0.11.0}
VENV=${MLPERF_CACHE:-$HOME/.cache/mlperf-operator}/chart-lint-venv
PYTHON=${PYTHON:-python3}
STAMP=$VENV/.versions
WANT="checkov==$CHECKOV_VERSION promql-parser==$PROMQL_PARSER_VERSION"

if [[ -x $VENV/bin/checkov ]] && [[ -f $STAMP ]] && [[ $(cat "$STAMP") == "$WANT" ]]; then
    echo "$VENV/bin"
    exit 0
fi

echo "installing $WANT into $VENV (once; about a minute)" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
# shellcheck disable=SC2086  # WANT is a list of requirements
"$VENV/bin/python" -m pip install -q $WANT >&2
"$VENV/bin/checkov" --version >&2
echo "$WANT" > "$STAMP"
echo "$VENV/bin"
