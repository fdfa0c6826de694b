#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) as one command, from any directory:
#   bash bench/gpu_check.sh             on one H100/H200, at most 8 minutes; JSON and log in $OUT when it is set
#   bash bench/gpu_check.sh --dry-run   on a CPU in seconds (tiny sizes)
# It needs a python with torch, numpy, scipy, transformers, safetensors, tqdm, pillow and pytest (nothing is
# fetched: GPU machines often have no network). Set PYTHON to choose one; by default the first of python3 and
# python that imports torch. Wheels left in .whl/ (see docs/PERFORMANCE.md) are installed to a temp folder first.
set -u
cd "$(dirname "$0")/.." || exit 1
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch" >/dev/null 2>&1; then
      PY="$candidate"; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "gpu_check.sh: error: no python with torch found; set PYTHON=/path/to/python" >&2
  exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  site="$(mktemp -d)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:$site"
fi
exec "$PY" bench/gpu_check.py "$@"
