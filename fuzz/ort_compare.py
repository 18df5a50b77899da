"""Runs a differential case's graph and its optimized form (written by the differential test's
minimizer with ONNXSMITH_DIFF_SAVE=DIR) in ONNX Runtime on the same seeded inputs, to tell a
wrong rewrite from a tract bug (when tract says they differ and ONNX Runtime says they agree):

    bench/.venv/bin/python fuzz/ort_compare.py DIR/seed-N.original.onnx DIR/seed-N.optimized.onnx

Prints, per output, the largest difference between the two models in ONNX Runtime.
"""
import sys

import numpy as np
import onnx
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
    feeds = inputs(onnx.load(a))
    ra, rb = run(a, feeds), run(b, feeds)
    for name, x in ra.items():
        y = rb[name]
        d = float(np.max(np.abs(x.astype(np.float64) - y))) if x.size else 0.0
        print(f"{name}: shape {list(x.shape)}, max |original - optimized| in ORT {d:.3e}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
