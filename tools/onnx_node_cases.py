#!/usr/bin/env python3
"""Writes ONNX's backend node tests for the CNN operators into tests/data/onnx_node/.

Recent `onnx` wheels no longer ship the node test data, but the generators that made it
are in the package (`onnx.backend.test.case.node`). This collects every node test whose
graph holds a CNN operator cnn's import is meant to read and no operator outside that
family, with float32 data of rank at most 4 only, and writes each as the ONNX test layout.

A node test passes a layer's parameters (a Conv's weights, a Gemm's B and C, a Reshape's
shape) as graph inputs; a network has them as initializers. Each graph input that feeds a
parameter position, or holds integers, is made an initializer with the test's values;
the rest stay inputs. Layout:

    tests/data/onnx_node/<test name>/model.onnx
    tests/data/onnx_node/<test name>/input_<i>.npy, output_<i>.npy

The outputs are recomputed at full precision by onnx's reference evaluator (see
`expected_outputs`).

numpy is seeded first, so the same `onnx` version writes the same files. The files are
committed (CI installs no `onnx`); rerun this after changing the selection:

    python3 -m venv /tmp/onnxenv && /tmp/onnxenv/bin/pip install onnx
    /tmp/onnxenv/bin/python tools/onnx_node_cases.py
"""

import pathlib
import shutil
import sys
import warnings

import numpy as np

# The operators of the list (convolutional networks, opsets 7 to 21).
CNN_OPS = {
    "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean",
    "BatchNormalization", "Gemm", "MatMul", "Flatten", "Reshape", "Relu", "Clip",
    "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softmax", "Gelu", "Erf",
    "Add", "Mul", "Concat", "Split", "Transpose", "Dropout", "Identity", "LRN",
    "LayerNormalization",
}
# What may appear beside them: constants, and the arithmetic of expanded functions
# (GELU's erf form, HardSwish, LayerNormalization).
HELPERS = {"Constant", "Div", "Sub", "Sqrt", "Pow", "Max", "Min", "Cast", "Shape",
           "Gather", "Unsqueeze", "Squeeze", "ConstantOfShape", "Equal", "Where",
           "CastLike", "Exp", "Neg", "ReduceMean"}


# Per operator, the input positions that are parameters rather than activations.
PARAMETER_INPUTS = {
    "Conv": {1, 2}, "BatchNormalization": {1, 2, 3, 4}, "Gemm": {1, 2}, "MatMul": {1},
    "Clip": {1, 2}, "Reshape": {1}, "LayerNormalization": {1, 2}, "Split": {1},
    "Dropout": {1, 2}, "ReduceMean": {1}, "Unsqueeze": {1}, "Squeeze": {1},
}


def bake_parameters(onnx, model, inputs):
    """The model with its parameter inputs as initializers; the runtime inputs' values."""
    graph = model.graph
    parameters = set()
    for node in graph.node:
        for position, name in enumerate(node.input):
            if position in PARAMETER_INPUTS.get(node.op_type, ()):
                parameters.add(name)
    kept, values = [], []
    for value_info, array in zip(list(graph.input), inputs):
        if value_info.name in parameters or array.dtype != np.float32:
            graph.initializer.append(onnx.numpy_helper.from_array(array, value_info.name))
        else:
            kept.append(value_info)
            values.append(array)
    del graph.input[:]
    graph.input.extend(kept)
    return model, values


def expected_outputs(model, inputs, outputs, case):
    """The outputs at full precision: onnx's reference evaluator on the written model.

    Some tests give their expected outputs as literals to four decimals
    (`averagepool_2d_ceil_last_window_starts_on_pad`); comparing with those at 1e-5 says
    nothing. The evaluator's outputs are kept when they agree with the test's own within
    its tolerance, else the test's (and a note is printed)."""
    from onnx.reference import ReferenceEvaluator

    try:
        names = [i.name for i in model.graph.input]
        computed = ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))
    except Exception as error:  # noqa: BLE001 - any failure falls back to the test's data
        print(f"onnx_node_cases: {case.name}: the reference evaluator failed ({error}); the test's outputs kept")
        return list(outputs)
    agree = len(computed) == len(outputs) and all(
        c.shape == o.shape and np.allclose(c, o, rtol=case.rtol, atol=case.atol) for c, o in zip(computed, outputs)
    )
    if not agree:
        print(f"onnx_node_cases: {case.name}: the reference evaluator disagrees with the test; the test's outputs kept")
        return list(outputs)
    return [np.asarray(c, dtype=np.float32) for c in computed]


def main() -> int:
    root = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "onnx_node"
    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import onnx
        import onnx.numpy_helper
        from onnx.backend.test.case.node import collect_testcases

        cases = collect_testcases()
    if root.exists():
        shutil.rmtree(root)
    written = 0
    for case in cases:
        if case.kind != "node":
            continue
        ops = {node.op_type for node in case.model.graph.node}
        if not ops & CNN_OPS or not ops <= CNN_OPS | HELPERS:
            continue
        # Training mode, 3-D data (rank 5) and integer data are out of scope.
        if "training" in case.name:
            continue
        inputs, outputs = case.data_sets[0]
        if any(not isinstance(a, np.ndarray) for a in list(inputs) + list(outputs)):
            continue
        model, inputs = bake_parameters(onnx, case.model, list(inputs))
        arrays = list(inputs) + list(outputs)
        if not inputs or any(a.dtype != np.float32 or a.ndim > 4 for a in arrays):
            continue
        directory = root / case.name
        directory.mkdir(parents=True)
        onnx.save(model, directory / "model.onnx")
        for i, array in enumerate(inputs):
            np.save(directory / f"input_{i}.npy", np.ascontiguousarray(array))
        for i, array in enumerate(expected_outputs(model, inputs, outputs, case)):
            np.save(directory / f"output_{i}.npy", np.ascontiguousarray(array))
        written += 1
    print(f"onnx_node_cases: {written} tests written to {root} (onnx {onnx.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
