"""Models past 2 GB: paths carry them, protobuf objects cannot."""

import shutil
import tempfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxsmith

# Past protobuf's limit of 2 GiB in one message.
FLOATS = (2**31 + 2**26) // 4


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def write_big_model(folder):
    """model.onnx, y = x * w with w of FLOATS floats in model.onnx.data (written in chunks):
    nothing to fold or fuse, so the result is as large."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[FLOATS])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "model.onnx.data"), ("offset", "0"), ("length", str(FLOATS * 4))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    chunk = np.full(1 << 24, 0.5, np.float32).tobytes()
    with open(folder / "model.onnx.data", "wb") as f:
        left = FLOATS * 4
        while left:
            f.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [FLOATS])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    if shutil.disk_usage(tempfile.gettempdir()).free < 12 * 2**30:
        pytest.skip("needs 12 GiB of free disk for a 2.1 GB model, its result and their copies")
    return write_big_model(tmp_path_factory.mktemp("big"))


def test_paths_carry_a_model_past_2_gb(big_model, tmp_path):
    out = tmp_path / "out.onnx"
    result, report = onnxsmith.optimize(big_model, out, check=False)
    assert result == str(out)
    data = tmp_path / "out.onnx.data"
    assert data.stat().st_size >= FLOATS * 4
    written = onnx.load(str(out), load_external_data=False)
    assert [n.op_type for n in written.graph.node] == ["Mul"]
    assert written.graph.initializer[0].data_location == TensorProto.EXTERNAL
    assert report["after"]["file_bytes"] == out.stat().st_size
    # Without output, a result past 2 GiB cannot come back in memory.
    with pytest.raises(onnxsmith.Error, match="give output="):
        onnxsmith.optimize(big_model, check=False)


@pytest.mark.skipif(mem_available() < 8 * 2**30, reason="needs 8 GiB of memory for a 2.1 GB ModelProto")
def test_a_model_proto_past_2_gb_asks_for_a_path(big_model):
    # As users get one: onnx.load reads the external data into the ModelProto.
    model = onnx.load(str(big_model))
    with pytest.raises(onnxsmith.Error, match="save it with external data .* and pass the path"):
        onnxsmith.optimize(model)
