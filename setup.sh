#!/usr/bin/env bash
# Creates .venv with everything clipjax, its tests and benchmarks need. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -r requirements-reference.txt
.venv/bin/python -m pip install -q --no-deps -e .
echo "setup.sh: .venv ready"
