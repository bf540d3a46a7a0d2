#!/usr/bin/env python3
"""Exports torchvision's classification models with torch.onnx.export and imports each
with `cnnc import --check`, which prints the relative L2 error of the imported program
on the reference interpreter against ONNX Runtime on the exported model.

Needs torch and torchvision (a multi-GB install, kept outside the repository and CI),
onnxruntime, and a built cnnc (`cargo build`; CNNC names another binary). The .onnx,
.cnn and .safetensors files go to OUT_DIR (default /tmp/cnnc-torchvision-import); they
are not committed. Random weights (no download): the check compares two computations of
the same model, so trained weights are not needed.

Usage: python tools/torchvision_import.py [--out OUT_DIR] [model ...]
       (default: every model of tools/torchvision_keys.py)
"""
import argparse
import os
import pathlib
import subprocess
import sys

import torch
import torchvision

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from torchvision_keys import MODELS  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/cnnc-torchvision-import")
    parser.add_argument("models", nargs="*")
    args = parser.parse_args()
    root = pathlib.Path(__file__).resolve().parent.parent
    cnnc = os.environ.get("CNNC", str(root / "target" / "debug" / "cnnc"))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.models or MODELS:
        model = getattr(torchvision.models, name)(weights=None, **MODELS[name]).eval()
        onnx_path = out / f"{name}.onnx"
        x = torch.randn(1, 3, 224, 224)
        try:  # the TorchScript exporter (torch >= 2.9 defaults to dynamo)
            torch.onnx.export(model, x, str(onnx_path), opset_version=17, dynamo=False)
        except TypeError:  # torch < 2.5 has no `dynamo` argument
            torch.onnx.export(model, x, str(onnx_path), opset_version=17)
        result = subprocess.run(
            [cnnc, "import", str(onnx_path), "-o", str(out / f"{name}.cnn"), "--check"],
            capture_output=True,
            text=True,
        )
        print(f"{name}: exit {result.returncode}")
        print(result.stdout.strip() or result.stderr.strip())
        if result.returncode != 0:
            failed.append(name)
    print(f"{len(failed)} of {len(args.models or MODELS)} failed: {', '.join(failed)}" if failed else "all imported")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
