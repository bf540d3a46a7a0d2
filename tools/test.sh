#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need when it is
# missing, then runs `cargo test`. This is the README's test command and what CI runs.
#  - a project-local Python venv with numpy and onnxruntime (the ONNX Runtime oracle);
#  - Mesa's software Vulkan driver (lavapipe) when no Vulkan driver is installed and we
#    may install Debian packages, so that the GPU tests run for real.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-python.sh
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test.sh: installing Mesa's Vulkan drivers (lavapipe) for the GPU tests" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
    else
        echo "test.sh: no Vulkan driver and no way to install one; GPU tests will skip" >&2
    fi
fi
# wgpu's Vulkan loader warns without a runtime directory; give it a private one.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="$(mktemp -d)"
    chmod 700 "$XDG_RUNTIME_DIR"
fi
cargo test --locked "$@"
