"""simplify and slim called as onnxsim.simplify and onnxslim.slim are called."""

import inspect
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from conftest import conv_bn_model, op_types

import onnxsmith
from onnxsmith import _drop_ins

FUSED = ["Conv", "Relu", "Conv"]
UNFUSED = ["Conv", "BatchNormalization", "Relu", "Identity", "Conv"]

# onnxsim 0.8.1's simplify: its positional parameters in order, then its keyword-only ones
# with their defaults.
ONNXSIM_POSITIONAL = [
    "model",
    "check_n",
    "perform_optimization",
    "skip_fuse_bn",
    "overwrite_input_shapes",
    "test_input_shapes",
    "skipped_optimizers",
    "skip_constant_folding",
    "skip_shape_inference",
    "input_data",
    "dynamic_input_shape",
    "custom_lib",
    "include_subgraph",
    "unused_output",
    "tensor_size_threshold",
    "mutable_initializer",
]
ONNXSIM_KEYWORDS = dict(
    initializers_as_constants=True,
    inline_functions=False,
    import_custom_schemas=True,
    input_shapes=None,
    target_opset_version=None,
    extra_optimizers=None,
    custom_rewriter=None,
    function_rewrite_rules=None,
    check_rtol=1e-4,
    check_atol=1e-5,
    input_fill="random",
    providers=None,
    gemm_fusion_backend="ort_cpu",
    profile=None,
    ort_profile=None,
    merge_ort_profile=False,
    output_path=None,
    external_data_threshold="100MB",
)
# onnxslim 0.1.98's slim(model, *args, **kwargs): output_model is args[0] or a keyword.
ONNXSLIM_KEYWORDS = dict(
    model_check=False,
    input_shapes=None,
    inputs=None,
    outputs=None,
    no_shape_infer=False,
    skip_optimizations=None,
    dtype=None,
    skip_fusion_patterns=None,
    size_threshold=None,
    inspect=False,
    dump_to_disk=False,
    save_as_external_data=False,
    model_check_inputs=None,
    verbose=False,
)


def test_simplify_has_onnxsims_positional_parameters():
    params = list(inspect.signature(onnxsmith.simplify).parameters.values())
    positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == ONNXSIM_POSITIONAL


def test_simplify_takes_every_onnxsim_keyword_at_its_default(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result, ok = onnxsmith.simplify(model, **ONNXSIM_KEYWORDS)
    assert ok is True and op_types(result) == FUSED


def test_simplify_as_called_in_the_wild(model, model_path):
    # ultralytics: model_onnx, check = onnxsim.simplify(model_onnx)
    result, check = onnxsmith.simplify(model)
    assert check is True
    assert isinstance(result, onnx.ModelProto) and op_types(result) == FUSED
    result, check = onnxsmith.simplify(str(model_path))
    assert check and op_types(result) == FUSED
    # Positionally: check_n, perform_optimization, skip_fuse_bn, overwrite_input_shapes.
    result, check = onnxsmith.simplify(model, 3, True, False, {"x": [2, 3, 8, 8]})
    assert check and op_types(result) == FUSED


def test_simplify_options_that_map(model):
    assert op_types(onnxsmith.simplify(model, skip_fuse_bn=True)[0]) == [
        "Conv", "BatchNormalization", "Relu", "Conv"
    ]
    assert op_types(onnxsmith.simplify(model, perform_optimization=False)[0]) == UNFUSED
    skipped = ["fuse_bn_into_conv", "eliminate_identity"]
    assert op_types(onnxsmith.simplify(model, skipped_optimizers=skipped)[0]) == UNFUSED
    result, _ = onnxsmith.simplify(
        model,
        overwrite_input_shapes={"x": [1, 3, 8, 8]},
        test_input_shapes=["x:2,3,8,8"],
        input_data={"x": np.ones((1, 3, 8, 8), np.float32)},
        check_rtol=1e-3,
        check_atol=1e-4,
    )
    assert op_types(result) == FUSED


def test_simplify_unused_output():
    model = conv_bn_model(outputs=("y", "r"))
    result, _ = onnxsmith.simplify(model, unused_output=["r"])
    assert [o.name for o in result.graph.output] == ["y"]
    with pytest.raises(onnxsmith.Error, match="no output nope"):
        onnxsmith.simplify(model, unused_output=["nope"])


def test_simplify_output_path(model, model_path, tmp_path):
    out = tmp_path / "out.onnx"
    result, ok = onnxsmith.simplify(str(model_path), output_path=str(out))
    assert ok and op_types(result) == FUSED and out.exists()
    with pytest.raises(onnxsmith.Error, match="output_path needs model to be a file path"):
        onnxsmith.simplify(model, output_path=str(out))


def test_simplify_options_without_meaning(model):
    with pytest.warns(UserWarning, match="custom_lib='libcustom.so' has no meaning"):
        onnxsmith.simplify(model, custom_lib="libcustom.so")
    with pytest.warns(UserWarning, match="'no_such_pass' has no equivalent"):
        onnxsmith.simplify(model, skipped_optimizers=["no_such_pass"])
    with pytest.raises(onnxsmith.Error, match="mutable_initializer=True asks for a result"):
        onnxsmith.simplify(model, mutable_initializer=True)
    with pytest.raises(onnxsmith.Error, match="target_opset_version=21"):
        onnxsmith.simplify(model, target_opset_version=21)


def test_simplify_raises_on_a_failed_check(model):
    with pytest.raises(onnxsmith.CheckFailed):
        onnxsmith.simplify(model, quantize="int8", calib_random=4, no_fallback=True, max_error=1e-9)


def test_simplify_passes_onnxsmith_options_through(model):
    result, _ = onnxsmith.simplify(model, check=False, disable=["eliminate-identity"])
    assert op_types(result) == ["Conv", "Relu", "Identity", "Conv"]
    with pytest.raises(onnxsmith.Error, match="--certify"):
        onnxsmith.simplify(model, certify=True)


def test_slim_as_called_in_the_wild(model, model_path, tmp_path):
    # ultralytics: model_onnx = onnxslim.slim(model_onnx)
    result = onnxsmith.slim(model)
    assert isinstance(result, onnx.ModelProto) and op_types(result) == FUSED
    assert op_types(onnxsmith.slim(str(model_path))) == FUSED
    # Saved to a path, positionally or by name: None comes back.
    for call in (
        lambda out: onnxsmith.slim(str(model_path), out),
        lambda out: onnxsmith.slim(model, output_model=out),
    ):
        out = tmp_path / "slim.onnx"
        assert call(str(out)) is None
        assert op_types(onnx.load(str(out))) == FUSED
        out.unlink()


def test_slim_takes_every_onnxslim_keyword_at_its_default(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert op_types(onnxsmith.slim(model, **ONNXSLIM_KEYWORDS)) == FUSED


def test_slim_options_that_map(model, tmp_path):
    assert op_types(onnxsmith.slim(model, skip_fusion_patterns=["FusionConvBN"])) == [
        "Conv", "BatchNormalization", "Relu", "Conv"
    ]
    assert op_types(onnxsmith.slim(model, skip_optimizations=["graph_fusion"])) == [
        "Conv", "BatchNormalization", "Relu", "Conv"
    ]
    np.save(tmp_path / "x.npy", np.ones((1, 3, 8, 8), np.float32))
    result = onnxsmith.slim(
        model,
        model_check=True,
        input_shapes=["x:1,3,8,8"],
        model_check_inputs=[f"x:{tmp_path / 'x.npy'}"],
    )
    assert op_types(result) == FUSED
    out = tmp_path / "ext.onnx"
    assert onnxsmith.slim(model, str(out), save_as_external_data=True) is None
    assert (tmp_path / "ext.onnx.data").exists()


def test_slim_refusals_and_failures(model):
    with pytest.raises(onnxsmith.Error, match="inspection"):
        onnxsmith.slim([model])
    with pytest.raises(onnxsmith.Error, match="retype"):
        onnxsmith.slim(model, outputs=["y:fp16"])
    with pytest.raises(onnxsmith.Error, match="fp16 only"):
        onnxsmith.slim(model, dtype="fp32")
    # dtype fp16 is --precision fp16: weights stored in 16 bits, the interface kept.
    half = onnxsmith.slim(model, dtype="fp16")
    assert {t.data_type for t in half.graph.initializer} <= {onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64}
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    with pytest.warns(UserWarning, match="size_threshold=1024 has no meaning"):
        onnxsmith.slim(model, size_threshold=1024)
    # Never a silent None: a failed check raises.
    with pytest.raises(onnxsmith.CheckFailed):
        onnxsmith.slim(model, quantize="int8", calib_random=4, no_fallback=True, max_error=1e-9)


def test_mapped_pass_ids_exist():
    listing = subprocess.run(
        [sys.executable, "-m", "onnxsmith", "optimize", "--list-passes"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ids = {line.split()[1] for line in listing.splitlines()}
    tables = [_drop_ins.ONNXSIM_PASSES, _drop_ins.ONNXSLIM_PATTERNS, _drop_ins.ONNXSLIM_OPTIMIZATIONS]
    mapped = {i for t in tables for v in t.values() for i in v}
    mapped |= set(_drop_ins._FOLDING) | set(_drop_ins._FUSIONS)
    assert mapped <= ids, mapped - ids
    # Every fusion pass is one slim's graph_fusion skips.
    assert {i for i in ids if i.startswith("fuse-")} == set(_drop_ins._FUSIONS)
