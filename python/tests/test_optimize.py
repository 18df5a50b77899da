"""onnxsmith.optimize on every kind of input, its options, its errors, and the CLI's bytes."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
from conftest import conv_bn_model, op_types

import onnxsmith

FUSED = ["Conv", "Relu", "Conv"]


def test_path_to_output(model_path, tmp_path):
    out = tmp_path / "out.onnx"
    result, report = onnxsmith.optimize(model_path, out)
    assert result == str(out)
    assert op_types(onnx.load(str(out))) == FUSED
    assert report["before"]["nodes"] == 5 and report["after"]["nodes"] == 3
    assert report["check"]["status"] == "verified"
    assert report["output"] == str(out)


def test_path_without_output_gives_a_model_proto(model_path):
    result, report = onnxsmith.optimize(str(model_path))
    assert isinstance(result, onnx.ModelProto)
    assert op_types(result) == FUSED
    # The temporary file it was written to is gone: the report names none.
    assert "output" not in report
    assert report["input"] == str(model_path)


def test_model_proto_in_model_proto_out(model):
    result, report = onnxsmith.optimize(model)
    assert isinstance(result, onnx.ModelProto)
    assert op_types(result) == FUSED
    onnx.checker.check_model(result)
    assert report["after"]["nodes"] == 3
    # The caller's model is untouched.
    assert op_types(model) == ["Conv", "BatchNormalization", "Relu", "Identity", "Conv"]


def test_bytes_in_bytes_out(model):
    for data in (model.SerializeToString(), bytearray(model.SerializeToString())):
        result, _ = onnxsmith.optimize(data)
        assert isinstance(result, bytes)
        assert op_types(onnx.ModelProto.FromString(result)) == FUSED


def test_any_object_with_serialize_to_string(model):
    class Holder:
        def __init__(self, data):
            self.data = data

        def SerializeToString(self):
            return self.data

        @classmethod
        def FromString(cls, data):
            return cls(data)

    result, _ = onnxsmith.optimize(Holder(model.SerializeToString()))
    assert isinstance(result, Holder)
    assert op_types(onnx.ModelProto.FromString(result.data)) == FUSED


def test_in_memory_to_output(model, tmp_path):
    out = tmp_path / "out.onnx"
    result, report = onnxsmith.optimize(model, out, external_data=True)
    assert result == str(out)
    assert (tmp_path / "out.onnx.data").exists()
    assert op_types(onnx.load(str(out))) == FUSED
    assert report["after"]["file_bytes"] == out.stat().st_size


def test_keywords_become_flags(model):
    # A list repeats the flag; underscores are dashes; a dict gives name:dims.
    result, report = onnxsmith.optimize(
        model,
        disable=["fuse-conv-bn", "eliminate-identity"],
        input_shape={"x": [2, 3, 8, 8]},
        samples=2,
        seed=7,
    )
    assert op_types(result) == ["Conv", "BatchNormalization", "Relu", "Identity", "Conv"]
    assert len(report["check"]["report"]["outputs"]) == 1
    _, report = onnxsmith.optimize(model, check=False)
    assert report["check"] == {"status": "skipped"}


def test_quantize(model):
    # Sixteen samples: ranges from four random ones clip the next samples often enough that
    # the check's worst of a hundred falls below 0.99, and the search keeps an op float.
    result, report = onnxsmith.optimize(model, quantize="int8", calib_random=16, target="openvino")
    ops = op_types(result)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert report["quantization"] is not None
    assert report["check"]["status"] == "verified"


# Half the channels of a small random model keep neither cosine 0.99 nor the argmax over
# channels at nine positions in ten: judge it more loosely.
PRUNE = dict(prune=0.5, prune_round_to=1, min_cosine=0.5, min_top1=0.5)


def test_prune(model):
    result, report = onnxsmith.optimize(model, **PRUNE)
    weights = {t.name: t for t in result.graph.initializer}
    # The first Conv made 8 channels: half are gone.
    assert weights[result.graph.node[0].input[1]].dims[0] == 4
    assert report["pruning"]["ratio"] == 0.5
    assert report["check"]["status"] == "verified"


def test_report_file_is_the_returned_dict(model, tmp_path):
    path = tmp_path / "r.json"
    _, report = onnxsmith.optimize(model, report=path)
    assert json.loads(path.read_text()) == report


def test_unknown_option_names_it(model):
    with pytest.raises(onnxsmith.Error, match="--precision"):
        onnxsmith.optimize(model, precision="fp8")
    with pytest.raises(onnxsmith.Error, match="--no-such-option"):
        onnxsmith.optimize(model, no_such_option=True)


def test_bad_values_carry_the_clis_message(model):
    with pytest.raises(onnxsmith.Error, match="invalid value 'gpu' for '--target"):
        onnxsmith.optimize(model, target="gpu")
    with pytest.raises(onnxsmith.Error, match="the ratio must lie strictly between 0 and 1"):
        onnxsmith.optimize(model, prune=1.5)
    with pytest.raises(onnxsmith.Error, match="--calib is for --quantize, --precision and --prune"):
        onnxsmith.optimize(model, calib="samples")
    with pytest.raises(onnxsmith.Error, match="--list-passes"):
        onnxsmith.optimize(model, list_passes=True)
    with pytest.raises(onnxsmith.Error, match="external_data is for a result written to a file"):
        onnxsmith.optimize(model, external_data=True)


def test_bad_input(tmp_path):
    with pytest.raises(onnxsmith.Error, match="missing.onnx"):
        onnxsmith.optimize(tmp_path / "missing.onnx")
    with pytest.raises(onnxsmith.Error, match="not a valid ONNX protobuf"):
        onnxsmith.optimize(b"\xff\xff\xff not onnx")
    with pytest.raises(onnxsmith.Error, match="the file is empty"):
        onnxsmith.optimize(b"")
    with pytest.raises(onnxsmith.Error, match="not int"):
        onnxsmith.optimize(42)


def test_model_proto_with_external_data_asks_for_a_path(model, tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, size_threshold=0)
    lazy = onnx.load(str(path), load_external_data=False)
    with pytest.raises(onnxsmith.Error, match="pass the model's path instead"):
        onnxsmith.optimize(lazy)
    # Given the path, the external data is read as the CLI reads it.
    result, _ = onnxsmith.optimize(path)
    assert op_types(result) == FUSED


def test_a_model_protobuf_cannot_serialize_asks_for_a_path():
    class TooLarge:
        def SerializeToString(self):
            raise ValueError("Message onnx.ModelProto exceeds maximum protobuf size of 2GB")

    with pytest.raises(onnxsmith.Error, match="pass the path"):
        onnxsmith.optimize(TooLarge())


def failing_options():
    """Options under which the check fails: int8 cannot be within 1e-9 of float."""
    return dict(quantize="int8", calib_random=4, no_fallback=True, max_error=1e-9)


def test_check_failed_carries_the_report(model, tmp_path):
    out = tmp_path / "out.onnx"
    with pytest.raises(onnxsmith.CheckFailed) as failed:
        onnxsmith.optimize(model, out, **failing_options())
    assert isinstance(failed.value, onnxsmith.Error)
    assert failed.value.report["check"]["status"] == "mismatch"
    assert "max error" in str(failed.value)
    assert not out.exists()


def test_no_progress_when_stderr_is_not_a_terminal(model, capfd):
    onnxsmith.optimize(model)
    assert capfd.readouterr().err == ""


def test_the_gil_is_released(tmp_path):
    """Another Python thread keeps running while a job runs: it never waits long for the GIL."""
    path = tmp_path / "resnet50.onnx"
    assert python_m("zoo", "resnet50", "-o", path).returncode == 0
    done = threading.Event()

    def job():
        onnxsmith.optimize(path, check=True)
        done.set()

    thread = threading.Thread(target=job)
    started = last = time.perf_counter()
    longest = 0.0
    thread.start()
    while not done.is_set():
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    thread.join()
    total = time.perf_counter() - started
    assert total > 0.2, "the job is too short to tell"
    assert longest < total / 4, f"the main thread stalled {longest:.3f} s of a {total:.3f} s job"


def run_cli(binary, *args):
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True)


OPTIONS = [
    ({}, []),
    (dict(disable=["fuse-conv-bn"], fold_limit=0), ["--disable", "fuse-conv-bn", "--fold-limit", "0"]),
    (dict(quantize="int8", calib_random=4), ["--quantize", "int8", "--calib-random", "4"]),
    (PRUNE, ["--prune", "0.5", "--prune-round-to", "1", "--min-cosine", "0.5", "--min-top1", "0.5"]),
]


@pytest.mark.parametrize("kwargs,flags", OPTIONS)
def test_byte_identical_to_the_cli(cli, model_path, tmp_path, kwargs, flags):
    cli_out = tmp_path / "cli.onnx"
    done = run_cli(cli, "optimize", model_path, "-o", cli_out, "--report", tmp_path / "cli.json", *flags)
    assert done.returncode == 0, done.stderr
    expected = cli_out.read_bytes()
    py_out = tmp_path / "py.onnx"
    _, report = onnxsmith.optimize(model_path, py_out, **kwargs)
    assert py_out.read_bytes() == expected
    data, _ = onnxsmith.optimize(model_path.read_bytes(), **kwargs)
    assert data == expected
    # A ModelProto is the CLI's file parsed (its own serializer would write repeated numbers
    # unpacked, as onnx.proto declares them, where ours packs them, so compare it parsed).
    proto, _ = onnxsmith.optimize(onnx.load(str(model_path)), **kwargs)
    assert proto == onnx.ModelProto.FromString(expected)
    cli_report = json.loads((tmp_path / "cli.json").read_text())
    del report["output"], cli_report["output"]
    assert untimed(report) == untimed(cli_report)


def untimed(report):
    """The report without what the clock says (`seconds`, each pass's `time`)."""
    if isinstance(report, dict):
        return {k: untimed(v) for k, v in report.items() if k not in ("seconds", "time")}
    if isinstance(report, list):
        return [untimed(v) for v in report]
    return report


def python_m(*args):
    return subprocess.run(
        [sys.executable, "-m", "onnxsmith", *map(str, args)], capture_output=True, text=True
    )


def test_python_m_runs_the_cli(cli, model_path, tmp_path):
    for args in (["optimize", "--list-passes"], ["inspect", model_path, "--json"], ["--version"]):
        ours, theirs = python_m(*args), run_cli(cli, *args)
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)
    for args in (["optimize", model_path], ["optimize", model_path, "-o", tmp_path / "o.onnx", "--precision", "fp8"]):
        ours, theirs = python_m(*args), run_cli(cli, *args)
        assert ours.returncode == theirs.returncode == 1
        assert ours.stderr == theirs.stderr and ours.stderr.startswith("error: ")
    out = tmp_path / "m.onnx"
    done = python_m("optimize", model_path, "-o", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout
    assert out.read_bytes() == onnxsmith.optimize(model_path.read_bytes())[0]


def test_python_m_exit_code_of_a_failed_check(model_path, tmp_path):
    flags = ["--quantize", "int8", "--calib-random", "4", "--no-fallback", "--max-error", "1e-9"]
    done = python_m("optimize", model_path, "-o", tmp_path / "o.onnx", *flags)
    assert done.returncode == 2
    assert not (tmp_path / "o.onnx").exists()


def test_import_is_quick():
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import onnxsmith"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    total = [line for line in done.stderr.splitlines() if line.rstrip().endswith("| onnxsmith")]
    cumulative_us = int(total[-1].split("|")[1])
    assert cumulative_us < 100_000


def test_inputs_npz_from_numpy(model, tmp_path):
    path = tmp_path / "inputs.npz"
    np.savez(path, x=np.ones((1, 3, 8, 8), np.float32))
    _, report = onnxsmith.optimize(model, inputs_npz=path)
    assert report["check"]["status"] == "verified"
