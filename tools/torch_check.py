#!/usr/bin/env python3
"""PyTorch as a second, optional oracle: cnnc's examples against torchvision's models.

For each model, builds torchvision's network with random weights (BatchNorm statistics
randomized so a wrong binding shows), saves its state_dict as safetensors exactly as a
user would, runs `cnnc run` on it at -O0 and -O2, and compares with PyTorch's output.
Needs torch, torchvision, safetensors and numpy (a multi-GB install, so not part of
tools/test.sh; the committed test tests/torchvision_names.rs checks the key names without
torch). Usage: python tools/torch_check.py [--cnnc target/release/cnnc] [model ...]
"""
import argparse, subprocess, sys, tempfile, pathlib

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file

MODELS = ["resnet18", "resnet34", "resnet50", "alexnet", "vgg16", "squeezenet1_1", "densenet121"]

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cnnc", default="target/release/cnnc")
    parser.add_argument("models", nargs="*", default=MODELS)
    args = parser.parse_args()
    torch.manual_seed(0)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for name in args.models:
            model = getattr(torchvision.models, name)(weights=None).eval()
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
                    module.weight.data.uniform_(0.5, 1.5)
                    module.bias.data.uniform_(-0.1, 0.1)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "w.safetensors")
            x = torch.randn(2, 3, 224, 224)
            np.save(tmp / "x.npy", x.numpy())
            with torch.no_grad():
                expected = model(x).numpy()
            for level in ["-O0", "-O2"]:
                subprocess.run([args.cnnc, "run", f"examples/{name}.cnn", "--weights", tmp / "w.safetensors",
                                "--input", tmp / "x.npy", "--output", tmp / "y.npy", level],
                               check=True, stdout=subprocess.DEVNULL)
                got = np.load(tmp / "y.npy")
                error = float(np.linalg.norm(got - expected) / np.linalg.norm(expected))
                same = bool((got.argmax(1) == expected.argmax(1)).all())
                worst = max(worst, error)
                print(f"{name:>14} {level}: relative L2 {error:.2e}, argmax {'same' if same else 'DIFFERENT'}")
    print(f"worst relative L2 error: {worst:.2e}")
    return 0 if worst <= 1e-4 else 1

if __name__ == "__main__":
    sys.exit(main())
