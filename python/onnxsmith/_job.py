"""onnxsmith.optimize: the library's optimize job on a path, bytes or a ModelProto."""

import functools
import json
import os
import tempfile
import warnings

from . import _native
from ._native import Error


class CheckFailed(Error):
    """The result disagrees with the original: nothing was written or returned.

    The message is what the CLI prints for the failed check; ``report`` is the job's report,
    the dict ``--report`` writes (``report["check"]`` holds the comparison).
    """

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


def optimize(
    model,
    output=None,
    *,
    quantize=None,
    calib=None,
    precision=None,
    prune=None,
    target=None,
    check=True,
    **options,
):
    """Runs onnxsmith's ``optimize`` job on ``model`` and returns ``(model, report)``.

    ``model`` is a path (``str`` or ``os.PathLike``), the serialized model (``bytes``), or an
    object with ``SerializeToString`` (an ``onnx.ModelProto``). The result is:

    - written to ``output`` when it is given (external data as the CLI writes it: past 2 GiB,
      or with ``external_data=True``); the first item returned is then ``output`` as a str;
    - else of the kind that came in: a ModelProto for a ModelProto, bytes for bytes; for a
      path, an ``onnx.ModelProto`` when onnx is installed, else bytes (a result that needs
      external data, past 2 GiB, asks for ``output``).

    ``report`` is the dict that ``onnxsmith optimize --report`` writes.

    Every option of ``onnxsmith optimize`` is a keyword, named as the flag with dashes turned
    to underscores, and its default is the CLI's: ``quantize="int8"`` is ``--quantize int8``,
    ``check=False`` is ``--no-check``, ``bisect=True`` is ``--bisect``, a list repeats the flag
    (``exclude=["Conv_3", "Gemm"]``), a dict gives ``name:value`` pairs with shapes as lists
    (``input_shape={"x": [1, 3, 224, 224]}``). ``python -m onnxsmith optimize --help`` lists
    them all.

    Raises ``onnxsmith.Error`` with the CLI's message for bad input or an unknown option, and
    ``onnxsmith.CheckFailed`` (carrying the report) when the result disagrees with the
    original. A result that tract could not run comes back with a ``RuntimeWarning`` saying
    it is UNVERIFIED. The GIL is released while the job runs; progress shows on stderr only
    when it is a terminal (``quiet=True`` hides it).

    Models over 2 GB: pass paths. A ModelProto whose tensors live in external data files
    cannot be read from memory and raises ``onnxsmith.Error`` saying so.
    """
    flags = _flags(
        dict(
            quantize=quantize,
            calib=calib,
            precision=precision,
            prune=prune,
            target=target,
            check=check,
            **options,
        )
    )
    if isinstance(model, (str, os.PathLike)):
        return _optimize_path(os.fspath(model), output, flags)
    data, from_string = _serialized(model)
    out = None if output is None else os.fspath(output)
    # The job takes the model out of the list: holding no other reference to it, it can free the
    # serialized model once the result no longer reads it.
    boxed = [data]
    del data
    result, outcome = _native.optimize_bytes(boxed, out, flags)
    report = _finish(outcome)
    if out is not None:
        return out, report
    return (from_string(result) if from_string else result), report


def _optimize_path(path, output, flags):
    # `--` ends the flags: a path that starts with a dash is still the input.
    if output is not None:
        out = os.fspath(output)
        return out, _finish(_native.optimize_file(["-o", out, *flags, "--", path]))
    with tempfile.TemporaryDirectory(prefix="onnxsmith-") as tmp:
        out = os.path.join(tmp, "model.onnx")
        report = _finish(_native.optimize_file(["-o", out, *flags, "--", path]))
        if os.path.exists(out + ".data"):
            raise Error(
                "the result keeps its tensors in external data (past 2 GiB, or external_data=True), "
                "which cannot come back in memory: give output= to write it"
            )
        with open(out, "rb") as f:
            data = f.read()
    # The file it names is gone with the temporary directory.
    report.pop("output", None)
    try:
        import onnx
    except ImportError:
        return data, report
    return onnx.ModelProto.FromString(data), report


def _serialized(model):
    """The model's bytes, and how to turn the result back into the kind that came in."""
    if isinstance(model, bytes):
        return model, None
    if isinstance(model, (bytearray, memoryview)):
        return bytes(model), None
    serialize = getattr(model, "SerializeToString", None)
    if serialize is None:
        raise Error(
            f"model must be a path, bytes or an object with SerializeToString (an onnx.ModelProto), "
            f"not {type(model).__name__}"
        )
    try:
        data = serialize()
    except Exception as e:
        # protobuf raises EncodeError or ValueError, by version, for a message past 2 GB.
        raise Error(
            f"cannot serialize the model ({type(e).__name__}: {e}): protobuf holds at most 2 GB; "
            f"save it with external data (onnx.save(model, path, save_as_external_data=True)) "
            f"and pass the path"
        ) from e
    return data, getattr(type(model), "FromString", None)


def _finish(outcome):
    """The report as a dict; raises CheckFailed when the check failed."""
    report_json, passed, text = outcome
    report = json.loads(report_json)
    if not passed:
        raise CheckFailed(text.rstrip(), report)
    for note in report.get("notes", []):
        if note.startswith("warning: "):
            warnings.warn(note[len("warning: ") :], stacklevel=3)
    if report["check"]["status"] == "unverified":
        warnings.warn(
            f"UNVERIFIED: {report['check']['reason']}: nothing proves the result computes what "
            f"the original did",
            RuntimeWarning,
            stacklevel=3,
        )
    return report


@functools.lru_cache(maxsize=None)
def _flag_kinds():
    """Each long flag of `onnxsmith optimize`, and whether it takes a value."""
    return dict(_native.optimize_flags())


def _flags(options):
    """Keyword arguments as `onnxsmith optimize` flags. None leaves an option at its default;
    a name that is no flag still becomes one, so that the CLI's parser names it in its error."""
    kinds = _flag_kinds()
    args = []
    for key, value in options.items():
        if value is None:
            continue
        name = key.replace("_", "-")
        if kinds.get(name) is False:
            if value:
                args.append(f"--{name}")
        elif kinds.get(f"no-{name}") is False:
            if not value:
                args.append(f"--no-{name}")
        else:
            for text in _texts(value):
                args += [f"--{name}", text]
    return args


def _texts(value):
    if isinstance(value, dict):
        return [f"{k}:{_shape(v)}" for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [_text(v) for v in value]
    return [_text(value)]


def _shape(value):
    if isinstance(value, (list, tuple)):
        return "x".join(str(d) for d in value)
    return _text(value)


def _text(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)
