"""A model over 2 GiB: generates one of about 2.5 GB with external data (a Conv and a
BatchNormalization to fuse, a Shape-computed Reshape target, constant Adds and a scaled weight
to fold, then large Gemms), times `onnxsmith convert` and `onnxsmith optimize` (checked and
--no-check) with wall time and peak RSS, checks that each output keeps its tensors in external
data, and runs each in ONNX Runtime against the original's outputs. Writes the "Models over
2 GiB" section of bench/RESULTS.md and deletes the generated files.

    bash bench/setup.sh && cargo build --release && bench/.venv/bin/python bench/bigmodel.py
"""
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, binary, max_abs_diff, measure, ort_session  # noqa: E402

WORK = ROOT / "bench" / "work" / "bigmodel"
HIDDEN = 8192
LAYERS = 9  # HIDDEN x HIDDEN Gemms: 256 MiB each
CONV_IN, CONV_OUT, SIDE, CLASSES = 256, 1024, 16, 1000
# Tensors start on page boundaries in the data file, as a mapping reader prefers.
ALIGN = 4096
SECTION = "## Models over 2 GiB"


class DataFile:
    """Writes tensors one after another into the external-data file, never holding them all."""

    def __init__(self, path):
        self.path, self.f, self.offset = path, open(path, "wb"), 0

    def add(self, name, array):
        pad = -self.offset % ALIGN
        self.f.write(b"\0" * pad)
        self.offset += pad
        raw = np.ascontiguousarray(array, np.float32).tobytes()
        self.f.write(raw)
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape,
                        data_location=TensorProto.EXTERNAL)
        for k, v in (("location", self.path.name), ("offset", self.offset), ("length", len(raw))):
            t.external_data.add(key=k, value=str(v))
        self.offset += len(raw)
        return t


def generate(path):
    rng = np.random.default_rng(0)
    data = DataFile(path.with_name(path.name + ".data"))
    he = lambda shape, fan_in: (rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / fan_in))
    small = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)
    inits, nodes = [], []
    inits.append(data.add("conv_w", he((CONV_OUT, CONV_IN, 3, 3), CONV_IN * 9)))
    inits += [small("bn_g", rng.uniform(0.5, 1.5, CONV_OUT)), small("bn_b", rng.normal(0, 0.1, CONV_OUT)),
              small("bn_m", rng.normal(0, 0.1, CONV_OUT)), small("bn_v", rng.uniform(0.5, 1.5, CONV_OUT))]
    nodes += [helper.make_node("Conv", ["img", "conv_w"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("BatchNormalization", ["c", "bn_g", "bn_b", "bn_m", "bn_v"], ["bn"]),
              helper.make_node("Relu", ["bn"], ["r0"]),
              helper.make_node("GlobalAveragePool", ["r0"], ["gap"]),
              # Reshape to [batch, -1] with the target computed from Shape: folded by shape.
              helper.make_node("Shape", ["gap"], ["gap_shape"]),
              helper.make_node("Gather", ["gap_shape", "zero"], ["batch"], axis=0),
              helper.make_node("Concat", ["batch", "minus_one"], ["flat_shape"], axis=0),
              helper.make_node("Reshape", ["gap", "flat_shape"], ["h0"])]
    inits += [numpy_helper.from_array(np.array([0], np.int64), "zero"),
              numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    widths = [CONV_OUT] + [HIDDEN] * (LAYERS + 1) + [CLASSES]
    h = "h0"
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        w = f"w{i}"
        if i == 1:
            # A weight stored at twice its size and halved by a Mul of constants: folded.
            inits += [data.add("w1_raw", 2 * he((fan_out, fan_in), fan_in)), small("half", 0.5)]
            nodes.append(helper.make_node("Mul", ["w1_raw", "half"], [w]))
        else:
            inits.append(data.add(w, he((fan_out, fan_in), fan_in)))
        # A bias as the sum of two constants: folded.
        inits += [small(f"b{i}a", rng.normal(0, 0.05, fan_out)), small(f"b{i}b", rng.normal(0, 0.05, fan_out))]
        nodes.append(helper.make_node("Add", [f"b{i}a", f"b{i}b"], [f"b{i}"]))
        out = "logits" if fan_out == CLASSES else f"h{i + 1}"
        nodes.append(helper.make_node("Gemm", [h, w, f"b{i}"], [out + ("" if out == "logits" else "_pre")],
                                      transB=1))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out + "_pre"], [out]))
        h = out
    data.f.close()
    graph = helper.make_graph(
        nodes, "big", [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", CONV_IN, SIDE, SIDE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path.stat().st_size + data.path.stat().st_size


def files_of(path):
    return [p for p in (path, path.with_name(path.name + ".data")) if p.exists()]


def size_of(path):
    return sum(p.stat().st_size for p in files_of(path))


def ops(path):
    m = onnx.load(str(path), load_external_data=False)
    counts = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def agrees(ref, out):
    """The exact rule of `optimize`'s check, element-wise against the original's outputs."""
    worst = 0.0
    for a, b in zip(ref, out):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(1.0, float(np.abs(a).max()))
        excess = np.abs(a - b) - (1e-5 * scale + 1e-4 * np.abs(a))
        worst = max(worst, float(excess.max()))
    return worst <= 0


def main():
    exe = binary()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    src = WORK / "big.onnx"
    try:
        total = generate(src)
        print(f"generated {src}: {total / 1e9:.2f} GB, {ops(src)}")
        feeds = {"img": np.random.default_rng(1).standard_normal((1, CONV_IN, SIDE, SIDE), np.float32)}
        ref = ort_session(src).run(None, feeds)
        rows = []
        runs = [("convert", ["convert", str(src), "-o"]),
                ("optimize --no-check", ["optimize", str(src), "--no-check", "-o"]),
                ("optimize (checked)", ["optimize", str(src), "-o"])]
        for label, args in runs:
            out = WORK / "out.onnx"
            wall, rss, _ = measure([exe, *args, str(out)], 1)
            external = out.with_name(out.name + ".data").exists() and out.stat().st_size < 2**31
            got = ort_session(out).run(None, feeds)
            rows.append((label, wall, rss, size_of(out), external, max_abs_diff(ref, got), agrees(ref, got),
                         ops(out)))
            print(rows[-1])
            for p in files_of(out):
                p.unlink()
        write_results(total, ops(src), rows)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


def write_results(total, before, rows):
    fmt = lambda c: ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
    lines = [SECTION, "",
             f"`bench/bigmodel.py`: a generated model of {total / 1e9:.2f} GB ({total / 2**30:.2f} GiB), "
             f"its tensors in external data: {fmt(before)}. One run each on this machine; peak RSS "
             "from /usr/bin/time (file pages of the mapped input that are resident count too). "
             "ORT: the output run in ONNX Runtime on one seeded input against the original's "
             "outputs, under the exact rule of `optimize`'s check (rtol 1e-4, atol 1e-5 × scale).", "",
             "| command | wall | peak RSS | RSS / model size | output size | external data | ORT max abs diff | ORT | ops after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, wall, rss, size, external, diff, ok, after in rows:
        lines.append(f"| `{label}` | {wall:.1f} s | {rss / 2**30:.2f} GiB | {rss / total:.2f} | "
                     f"{size / 1e9:.2f} GB | {'yes' if external else 'NO'} | {diff:.2e} | "
                     f"{'agrees' if ok else 'DIFFERS'} | {fmt(after)} |")
    results = ROOT / "bench" / "RESULTS.md"
    text = results.read_text()
    section = "\n".join(lines) + "\n"
    # Replace only this section: from its heading to the next one.
    pattern = re.compile(re.escape(SECTION) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    results.write_text(text)


if __name__ == "__main__":
    main()
