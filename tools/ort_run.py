#!/usr/bin/env python3
"""Run an ONNX model with ONNX Runtime and write every graph output as .npy.

Usage: ort_run.py MODEL.onnx OUT_DIR NAME=INPUT.npy...

Each NAME=FILE binds a graph input to an array read with numpy.load (converted to
float32). Every graph output is written to OUT_DIR/<sanitized name>.npy, and
OUT_DIR/index.json maps each output name to its file name (relative to OUT_DIR), so
names with '/', ':' or other characters unsafe in file names survive the round trip.

This is the oracle of tests/oracle.rs, so it runs on the CPU execution provider with
all graph optimizations disabled (ORT_DISABLE_ALL): each exported op is then evaluated
on its own, as written, and a disagreement points at the exporter or at the reference
interpreter rather than at a fusion (Conv+BatchNorm folding, Conv+activation fusion,
NCHWc layout rewriting) that reorders the floating-point arithmetic. Most fusions would
be blocked anyway by the intermediate outputs the test requests. The unoptimized CPU
kernels are fast enough for VGG-16 at batch 2.
"""

import json
import os
import re
import sys


def sanitize(name, used):
    base = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"
    if base.startswith("."):
        base = "_" + base
    candidate = base
    n = 1
    while candidate.lower() in used:
        candidate = f"{base}~{n}"
        n += 1
    used.add(candidate.lower())
    return candidate + ".npy"


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    model, out_dir, bindings = argv[1], argv[2], argv[3:]

    import numpy as np
    import onnxruntime as ort

    feeds = {}
    for binding in bindings:
        name, sep, path = binding.partition("=")
        if not sep or not name or not path:
            print(f"ort_run: expected NAME=FILE.npy, got {binding!r}", file=sys.stderr)
            return 2
        feeds[name] = np.ascontiguousarray(np.load(path), dtype=np.float32)

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])

    expected = [i.name for i in session.get_inputs()]
    missing = [n for n in expected if n not in feeds]
    unknown = [n for n in feeds if n not in expected]
    if missing or unknown:
        print(f"ort_run: model inputs {expected}; missing {missing}, unknown {unknown}", file=sys.stderr)
        return 2

    names = [o.name for o in session.get_outputs()]
    results = session.run(names, feeds)

    os.makedirs(out_dir, exist_ok=True)
    used = set()
    index = {}
    for name, value in zip(names, results):
        file = sanitize(name, used)
        np.save(os.path.join(out_dir, file), np.ascontiguousarray(value, dtype=np.float32))
        index[name] = file
    with open(os.path.join(out_dir, "index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
