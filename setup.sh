#!/usr/bin/env bash
# Creates .venv with everything clipjax, its tests and benchmarks need. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"

# Real data with no network: Debian's Fashion-MNIST IDX files (/usr/share/datasets/fashion-mnist),
# read by the clipjax_fashion_mnist builder, its tests and configs/clip_fashion_mnist.py.
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } \
    || echo "setup.sh: could not install dataset-fashion-mnist (Fashion-MNIST tests will be skipped)" >&2
fi
# A browser for the search page's test: tests/test_search_web.py drives Debian's chromium through
# Playwright (Playwright's own browser download is not reachable). Without it that test is skipped.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    || echo "setup.sh: could not install chromium (the search page's browser test will be skipped)" >&2
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -r requirements-reference.txt
.venv/bin/python -m pip install -q --no-deps -e .
# The TPU compiler (libtpu, the version jax pins for jax[tpu]) for plan.py, kept out of .venv:
# with libtpu importable every `import jax` tries to initialise a TPU and prints errors.
# plan.py runs it in a subprocess with PYTHONPATH=.tpu-compiler.
[ -d .tpu-compiler/libtpu ] || .venv/bin/python -m pip install -q --target .tpu-compiler libtpu==0.0.42.1
echo "setup.sh: .venv ready"
