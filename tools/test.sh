#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need when it is
# missing (a project-local Python venv with numpy and onnxruntime for the oracle),
# then runs `cargo test`. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-python.sh
cargo test --locked "$@"
