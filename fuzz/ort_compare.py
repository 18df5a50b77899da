"""Runs a differential case's graph and its optimized form (written by the differential test's
minimizer with ONNXSMITH_DIFF_SAVE=DIR) in ONNX Runtime on the same seeded inputs, to tell a
wrong rewrite from a tract bug (when tract says they differ and ONNX Runtime says they agree):

    bench/.venv/bin/python fuzz/ort_compare.py DIR/seed-N.original.onnx DIR/seed-N.optimized.onnx

Prints, per output, the largest difference between the two models in ONNX Runtime. To tell
which of the two tract gets wrong, it also writes ONNX Runtime's outputs for the original as a
model of constants (seed-N.ort.onnx) and the inputs (seed-N.inputs.npz), so that

    onnxsmith verify DIR/seed-N.optimized.onnx DIR/seed-N.ort.onnx --inputs-npz DIR/seed-N.inputs.npz

judges tract's run of either graph against ONNX Runtime's.
"""
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper
import onnxruntime as ort

TYPES = {1: np.float32, 7: np.int64, 9: np.bool_, 11: np.float64}


def inputs(model, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(TYPES[t.elem_type])
    return feeds


def run(path, feeds):
    # ORT's own fusions (Conv+BatchNormalization among them) would compute both alike.
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, feeds)))


def main(a, b):
    model = onnx.load(a)
    feeds = inputs(model)
    ra, rb = run(a, feeds), run(b, feeds)
    for name, x in ra.items():
        y = rb[name]
        d = float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0
        print(f"{name}: shape {list(x.shape)}, max |original - optimized| in ORT {d:.3e}")
    stem = a.rsplit(".original.onnx", 1)[0]
    np.savez(f"{stem}.inputs.npz", **feeds)
    nodes = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(v)) for n, v in ra.items()]
    g = helper.make_graph(nodes, "ort", list(model.graph.input), list(model.graph.output))
    ref = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
    onnx.save(ref, f"{stem}.ort.onnx")


if __name__ == "__main__":
    main(*sys.argv[1:3])
