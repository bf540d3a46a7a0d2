#!/usr/bin/env python3
"""PyTorch as a second, optional oracle: cnnc's examples against torchvision's models.

For each model, builds torchvision's network with random weights, made realistic so that
a wrong binding or a wrong formula shows: BatchNorm statistics and affine parameters,
LayerNorm parameters, ConvNeXt's layer_scale and every bias randomized (torchvision
initializes many of them to 0, 1 or 1e-6). Saves its state_dict as safetensors exactly
as a user would, runs `cnnc run` on it on each target at -O0 and -O2, and compares with
PyTorch's output (relative L2 over the whole batch, and the argmax of each row).
Done when: the reference interpreter within 1e-5, cpu and gpu within 1e-4.

Needs torch, torchvision, safetensors and numpy (a multi-GB install, so not part of
tools/test.sh; the committed test tests/torchvision_names.rs checks the key names without
torch). Usage:
  python tools/torch_check.py [--cnnc target/release/cnnc] [--targets reference,cpu,gpu]
                              [--batch 2] [model ...]
"""
import argparse, pathlib, subprocess, sys, tempfile, time

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file

# The models and constructor arguments of the key fixtures; GoogLeNet also without
# transform_input, which examples/googlenet.cnn leaves out (not a parameter, so the keys
# do not show it).
from torchvision_keys import MODELS as KEY_MODELS

MODELS = {name: dict(kwargs) for name, kwargs in KEY_MODELS.items()}
MODELS["googlenet"]["transform_input"] = False

TOLERANCE = {"reference": 1e-5, "cpu": 1e-4, "gpu": 1e-4}


def realistic(model):
    """Randomizes what torchvision initializes to constants."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
                module.bias.uniform_(-0.1, 0.1)
            if hasattr(module, "layer_scale") and isinstance(module.layer_scale, torch.nn.Parameter):
                module.layer_scale.uniform_(0.05, 0.5)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cnnc", default="target/release/cnnc")
    parser.add_argument("--targets", default="reference,cpu,gpu")
    parser.add_argument("--levels", default="-O0,-O2")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    torch.manual_seed(0)
    failed = []
    worst = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for name in args.models:
            model = getattr(torchvision.models, name)(weights=None, **MODELS[name]).eval()
            realistic(model)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "w.safetensors")
            x = torch.randn(args.batch, 3, 224, 224)
            np.save(tmp / "x.npy", x.numpy())
            with torch.no_grad():
                expected = model(x).numpy()
            for target in args.targets.split(","):
                for level in args.levels.split(","):
                    started = time.time()
                    run = subprocess.run(
                        [args.cnnc, "run", f"examples/{name}.cnn", "--weights", tmp / "w.safetensors",
                         "--input", tmp / "x.npy", "--output", tmp / "y.npy", "--target", target, level],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                    if run.returncode != 0:
                        print(f"{name:>18} {target:>9} {level}: FAILED: {run.stderr.strip()}")
                        failed.append(f"{name} {target} {level}")
                        continue
                    got = np.load(tmp / "y.npy")
                    error = float(np.linalg.norm(got - expected) / np.linalg.norm(expected))
                    same = bool((got.argmax(1) == expected.argmax(1)).all())
                    ok = error <= TOLERANCE[target] and same
                    worst[target] = max(worst.get(target, 0.0), error)
                    if not ok:
                        failed.append(f"{name} {target} {level}")
                    print(f"{name:>18} {target:>9} {level}: relative L2 {error:.2e}, argmax "
                          f"{'same' if same else 'DIFFERENT'}{'' if ok else '  FAILED'} ({time.time() - started:.1f} s)",
                          flush=True)
    for target, error in worst.items():
        print(f"worst relative L2 on {target}: {error:.2e} (tolerance {TOLERANCE[target]:.0e})")
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
