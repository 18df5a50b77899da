"""Models the tests make, and the onnxsmith binary to compare with."""

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def conv_bn_model(outputs=("y",)):
    """x -> Conv(3->8) -> BatchNormalization -> Relu -> Identity -> Conv(8->4) -> y, opset 17:
    the BN fuses into the first Conv and the Identity goes, so 5 nodes become 3. With a second
    output name, the Relu's output is an output too."""
    rng = np.random.default_rng(0)

    def init(name, shape, low=-1.0, high=1.0):
        return numpy_helper.from_array(rng.uniform(low, high, shape).astype(np.float32), name)

    nodes = [
        # A string attribute too: its bytes are copied out of the serialized input.
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], auto_pad="NOTSET"),
        helper.make_node(
            "BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-5
        ),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Identity", ["r"], ["id"]),
        helper.make_node("Conv", ["id", "w2"], ["y"]),
    ]
    inits = [
        init("w1", (8, 3, 3, 3)),
        init("b1", (8,)),
        init("gamma", (8,), 0.5, 1.5),
        init("beta", (8,)),
        init("mean", (8,)),
        init("var", (8,), 0.5, 1.5),
        init("w2", (4, 8, 1, 1)),
    ]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])]
    if len(outputs) > 1:
        outs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 8, 8, 8]))
    graph = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        outs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def model():
    return conv_bn_model()


@pytest.fixture
def model_path(tmp_path, model):
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def op_types(model):
    return [n.op_type for n in model.graph.node]


@pytest.fixture(scope="session")
def cli():
    """The onnxsmith binary: $ONNXSMITH_BIN (CI sets it), else a cargo build's."""
    given = os.environ.get("ONNXSMITH_BIN")
    if given:
        assert Path(given).is_file(), f"ONNXSMITH_BIN={given} is not a file"
        return given
    root = Path(__file__).resolve().parents[2]
    targets = [os.environ.get("CARGO_TARGET_DIR"), root / "target"]
    for target in filter(None, targets):
        for profile in ("release", "debug"):
            candidate = Path(target) / profile / "onnxsmith"
            if candidate.is_file():
                return str(candidate)
    pytest.skip("no onnxsmith binary: build it with cargo or set ONNXSMITH_BIN")

