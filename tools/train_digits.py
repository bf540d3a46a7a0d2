#!/usr/bin/env python3
"""Trains examples/digits.cnn on scikit-learn's 8x8 handwritten digits and writes
examples/digits/: the weights (safetensors, f32, with the .cnn's parameter names), the
held-out split as .npy, the accuracy measured on it, class labels and one PNG per digit.

Data: the UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin,
C. Kaynak, 1998), 1797 images of 8x8 pixels with values 0..16
(`sklearn.datasets.load_digits`).

The network's input is a pixel v in 0..16 stored as an 8-bit gray level
round(v / 16 * 255) and scaled to [0, 1] (level / 255): exactly what `cnnc run` makes of
the PNGs written here with `--mean 0 --std 1`.

Needs torch, safetensors, numpy, Pillow and scikit-learn (not needed by the tests, which
read the files this writes). Deterministic: CPU, fixed seeds, one thread.

    python tools/train_digits.py [--out examples/digits]
"""

import argparse
import os

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
EPOCHS = 60
BATCH = 64
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class Digits(nn.Module):
    """examples/digits.cnn; the attribute names give the state_dict the .cnn's names."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)
        self.dropout = nn.Dropout(0.25)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = self.dropout(x)
        return self.fc2(x)


def to_levels(pixels):
    """Pixels 0..16 -> 8-bit gray levels, as stored in the PNGs."""
    return np.round(pixels / 16.0 * 255.0).astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    parser.add_argument("--out", default=os.path.join(root, "examples", "digits"))
    args = parser.parse_args()

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    digits = load_digits()
    levels = to_levels(digits.images)  # [1797, 8, 8] uint8
    x = (levels.astype(np.float32) / np.float32(255.0))[:, None, :, :]  # [N, 1, 8, 8] in [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test, _, levels_test = train_test_split(
        x, y, levels, test_size=0.2, stratify=y, random_state=SEED
    )

    model = Digits()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for start in range(0, len(xt), BATCH):
            batch = order[start : start + BATCH]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[batch]), yt[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  loss {total / len(xt):.4f}")

    model.eval()
    with torch.no_grad():
        scores = model(torch.from_numpy(x_test)).numpy()
    predicted = scores.argmax(axis=1)
    correct = int((predicted == y_test).sum())
    accuracy = correct / len(y_test)
    print(f"held-out accuracy {accuracy:.4f} ({correct}/{len(y_test)})")

    os.makedirs(args.out, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(args.out, "digits.safetensors"))
    np.save(os.path.join(args.out, "test_x.npy"), np.ascontiguousarray(x_test, dtype=np.float32))
    np.save(os.path.join(args.out, "test_y.npy"), y_test.astype(np.float32))
    with open(os.path.join(args.out, "accuracy.txt"), "w") as f:
        f.write(f"{accuracy:.4f} {correct}/{len(y_test)}\n")
    with open(os.path.join(args.out, "labels.txt"), "w") as f:
        f.write("\n".join(LABELS) + "\n")

    # One held-out image per digit: the first that the model classifies correctly with
    # the largest margin among the first few, so that it is an unambiguous example.
    for digit in range(10):
        candidates = [i for i in range(len(y_test)) if y_test[i] == digit and predicted[i] == digit][:5]
        best = max(candidates, key=lambda i: np.sort(scores[i])[-1] - np.sort(scores[i])[-2])
        Image.fromarray(levels_test[best], mode="L").save(os.path.join(args.out, f"{digit}.png"))


if __name__ == "__main__":
    main()
