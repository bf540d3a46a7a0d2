#!/usr/bin/env python3
"""`cnnc import` on torchvision's classification models, exported as a user would.

For each model: torchvision's network with random, realistic weights (`torch_check.py`'s
`realistic`), exported with `torch.onnx.export` (opset 17, batch 1, 1x3x224x224, the
TorchScript exporter unless `--dynamo`), then `cnnc import MODEL.onnx --check`, which
runs the imported program on the reference interpreter and the ONNX file on ONNX
Runtime and prints the relative L2 error. Then `cnnc run` of the imported program on the
cpu target (and with `--gpu` the gpu target) against ONNX Runtime's output. Prints one line per model with the figures,
the length of the imported program and whether it uses blocks.

Done when (issue #18): reference within 1e-5, cpu within 1e-4. Needs torch, torchvision,
onnx and onnxruntime (a multi-GB install, not part of tools/test.sh); the .onnx files
are written to a temporary directory, not committed. Usage:
  python tools/torchvision_import.py [--cnnc target/release/cnnc] [--dynamo] [--gpu] [model ...]
"""
import argparse, pathlib, re, subprocess, sys, tempfile

import numpy as np
import onnxruntime as ort
import torch
import torchvision

from torch_check import MODELS, realistic

DEFAULT = ["resnet18", "resnet50", "vgg16", "squeezenet1_1", "densenet121", "googlenet", "mobilenet_v2",
           "mobilenet_v3_small", "mobilenet_v3_large", "alexnet", "resnet34", "efficientnet_b0",
           "shufflenet_v2_x1_0", "mnasnet1_0", "regnet_y_400mf", "resnext50_32x4d", "convnext_tiny"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cnnc", default="target/release/cnnc")
    parser.add_argument("--dynamo", action="store_true", help="torch.export-based exporter")
    parser.add_argument("--gpu", action="store_true", help="also run the gpu target (1e-4)")
    parser.add_argument("models", nargs="*")
    args = parser.parse_args()
    torch.manual_seed(0)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for name in args.models or DEFAULT:
            model = getattr(torchvision.models, name)(weights=None, **MODELS.get(name, {})).eval()
            realistic(model)
            x = torch.randn(1, 3, 224, 224)
            onnx_path = tmp / f"{name}.onnx"
            torch.onnx.export(model, (x,), str(onnx_path), opset_version=17, input_names=["input"],
                              output_names=["output"], dynamo=args.dynamo)
            program, weights = tmp / f"{name}.cnn", tmp / f"{name}.safetensors"
            imported = subprocess.run([args.cnnc, "import", str(onnx_path), "-o", str(program), "--weights-out",
                                       str(weights), "--check"], capture_output=True, text=True)
            if imported.returncode != 0:
                print(f"{name}: import failed (exit {imported.returncode}): {imported.stderr.strip()[:400]}")
                failures += 1
                continue
            text = program.read_text()
            check = re.search(r"relative L2[^0-9]*([0-9.e+-]+)", imported.stdout + imported.stderr)
            reference_error = float(check.group(1)) if check else float("nan")
            # The cpu (and gpu) target on the imported program against ONNX Runtime on the file.
            np.save(tmp / "x.npy", x.numpy())
            expected = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
                None, {"input": x.numpy()})[0]
            errors = {}
            for target in ["cpu"] + (["gpu"] if args.gpu else []):
                out = tmp / f"y_{target}.npy"
                run = subprocess.run([args.cnnc, "run", str(program), "--weights", str(weights), "--input",
                                      str(tmp / "x.npy"), "--target", target, "--output", str(out)],
                                     capture_output=True, text=True)
                if run.returncode != 0:
                    print(f"{name}: {target} run failed: {run.stderr.strip()[:400]}")
                    errors[target] = float("inf")
                    continue
                got = np.load(out).astype(np.float64)
                errors[target] = float(np.linalg.norm(got - expected) / np.linalg.norm(expected))
            cpu_error = max(errors.values())
            ok = reference_error <= 1e-5 and cpu_error <= 1e-4
            failures += not ok
            lines = len([l for l in text.splitlines() if l.strip()])
            blocks = len(re.findall(r"^\s*block\s", text, re.M))
            figures = ", ".join(f"{t} {e:.2e}" for t, e in errors.items())
            print(f"{name}: reference {reference_error:.2e}, {figures}; program {lines} lines, "
                  f"{blocks} block(s){'' if ok else '  <-- over tolerance'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
