#!/usr/bin/env python3
"""Interop check: does a model we (or any tool) wrote load and run where users deploy it?

    python bench/interop.py MODEL [REFERENCE] [--recipe NAME] [--tol 1e-4]

Runs onnx.checker (full check), ONNX Runtime CPU and OpenVINO CPU on seeded inputs, and compares
both with REFERENCE's outputs in ONNX Runtime (or with each other when no reference is given).
Exit code 0 when all pass, 1 otherwise."""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_inputs, max_abs_diff, ort_run  # noqa: E402


def openvino_run(path, feeds):
    import openvino as ov

    core = ov.Core()
    # Full precision: OpenVINO may otherwise pick bf16/f16 kernels, which is a deployment choice,
    # not something the model file decides.
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feeds)
    return [np.asarray(result[o]) for o in compiled.outputs]


def fails(run, path, feeds):
    try:
        run(path, feeds)
        return False
    except Exception:  # noqa: BLE001
        return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("reference", nargs="?")
    ap.add_argument("--recipe", help="input recipe name (default: the reference's or model's stem)")
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs diff allowed, relative to the output scale")
    args = ap.parse_args()
    import onnx

    ok = True
    try:
        onnx.checker.check_model(args.model, full_check=True)
        print(f"onnx.checker (full): ok")
    except Exception as e:  # noqa: BLE001
        print(f"onnx.checker (full): FAILED: {e}")
        ok = False
    recipe = args.recipe or Path(args.reference or args.model).stem
    feeds = make_inputs(args.model, recipe)
    results = {}
    for name, run in [("onnxruntime", ort_run), ("openvino", openvino_run)]:
        try:
            results[name] = run(args.model, feeds)
            print(f"{name}: loads and runs")
        except Exception as e:  # noqa: BLE001
            why = " ".join(str(e).split())[:300] or type(e).__name__
            if args.reference and fails(run, args.reference, feeds):
                print(f"{name}: cannot run it, nor the reference: a limit of {name}, not of this file ({why})")
                continue
            print(f"{name}: FAILED: {why}")
            ok = False
    expected = ort_run(args.reference, feeds) if args.reference else results.get("onnxruntime")
    if expected is not None:
        scale = max(float(np.max(np.abs(np.asarray(e, np.float64)), initial=0.0)) for e in expected) or 1.0
        for name, got in results.items():
            d = max_abs_diff(expected, got)
            verdict = "ok" if d <= args.tol * max(scale, 1.0) else "MISMATCH"
            ok &= verdict == "ok"
            what = "reference" if args.reference else "onnxruntime"
            print(f"{name} vs {what}: max abs diff {d:.3e} (output scale {scale:.3g}): {verdict}")
    print("interop: ok" if ok else "interop: FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
