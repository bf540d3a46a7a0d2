#!/usr/bin/env bash
# Creates the project-local Python environment the ONNX Runtime oracle needs
# (tests/oracle.rs, tools/ort_run.py): `.venv` at the repository root with numpy and
# onnxruntime. Idempotent: when `.venv` already imports both, it does nothing and
# prints nothing. PYTHON may name the interpreter that creates the venv (default python3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import numpy, onnxruntime' >/dev/null 2>&1; then
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "setup-python: creating $venv" >&2
    "$python" -m venv "$venv"
fi

echo "setup-python: installing numpy and onnxruntime into $venv" >&2
# Pinned so that oracle results are reproducible; bump deliberately.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy==2.4.6 onnxruntime==1.31.1

"$venv/bin/python" -c 'import numpy, onnxruntime; print("setup-python: numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__)' >&2
