"""Drop-ins shaped like ``onnxsim.simplify`` and ``onnxslim.slim``, over ``optimize``: replacing
the import is the whole change. Their options map to onnxsmith's where one does the same
work; the others are ignored with a warning when they would only tune the anchor's own
machinery, and refused (``onnxsmith.Error``) when they ask for a result onnxsmith does not make.
"""

import contextlib
import os
import tempfile
import warnings

from ._job import optimize
from ._native import Error

# The passes onnxsim still runs with perform_optimization=False: folding, and the cleanup
# after it.
_FOLDING = [
    "constant-to-initializer",
    "fold-reshape-target",
    "fold-shape",
    "fold-constants",
    "inline-constant-if",
    "dead-code",
]
# The passes that read inferred shapes.
_SHAPE_FOLDING = ["fold-shape", "fold-reshape-target"]
_FUSIONS = [
    "fuse-conv-bn",
    "fuse-gemm-bn",
    "fuse-pad-conv",
    "fuse-mul-conv",
    "fuse-conv-mul",
    "fuse-conv-add",
    "fuse-layer-norm",
    "fuse-gelu",
    "fuse-matmul-add",
]
_NOOPS = [
    "cast",
    "concat",
    "expand",
    "flatten",
    "pad",
    "reshape",
    "split",
    "transpose",
    "with_unit",
]

# onnx-optimizer passes (onnxsim's skipped_optimizers) and the onnxsmith passes that do their
# work. One of ours may do the work of several (eliminate-noop removes every kind of no-op):
# skipping any of them skips it.
ONNXSIM_PASSES = {
    "eliminate_identity": ["eliminate-identity"],
    "eliminate_nop_dropout": ["eliminate-dropout"],
    **{f"eliminate_nop_{kind}": ["eliminate-noop"] for kind in _NOOPS},
    "eliminate_deadend": ["dead-code"],
    "eliminate_unused_initializer": ["dead-code"],
    "eliminate_common_subexpression": ["cse"],
    "eliminate_duplicate_initializer": ["cse"],
    "eliminate_if_with_const_cond": ["inline-constant-if"],
    "extract_constant_to_initializer": ["constant-to-initializer"],
    "fuse_bn_into_conv": ["fuse-conv-bn"],
    "fuse_add_bias_into_conv": ["fuse-conv-add"],
    "fuse_pad_into_conv": ["fuse-pad-conv"],
    "fuse_pad_into_pool": ["fuse-pad-conv"],
    "fuse_consecutive_transposes": ["merge-transposes"],
    "fuse_consecutive_squeezes": ["merge-squeezes"],
    "fuse_consecutive_unsqueezes": ["merge-squeezes"],
    "fuse_matmul_add_bias_into_gemm": ["fuse-matmul-add"],
}

# onnxslim's skip_fusion_patterns and skip_optimizations, likewise.
ONNXSLIM_PATTERNS = {
    "EliminationConcat": ["eliminate-noop"],
    "EliminationReshape": ["merge-reshapes"],
    "EliminationSlice": ["eliminate-noop"],
    "EliminationTranspose": ["merge-transposes"],
    "EliminationUnsqueeze": ["merge-squeezes"],
    "FusionConvAdd": ["fuse-conv-add"],
    "FusionConvTransposeAdd": ["fuse-conv-add"],
    "FusionConvBN": ["fuse-conv-bn"],
    "FusionConvTransposeBN": ["fuse-conv-bn"],
    "FusionConvMul": ["fuse-conv-mul"],
    "FusionConvTransposeMul": ["fuse-conv-mul"],
    "FusionGemm": ["fuse-matmul-add"],
    "FusionGemmAdd": ["fuse-matmul-add"],
    "FusionPadConv": ["fuse-pad-conv"],
    "FusionGelu": ["fuse-gelu"],
}
ONNXSLIM_OPTIMIZATIONS = {
    "constant_folding": ["fold-constants"],
    "graph_fusion": _FUSIONS,
    "dead_node_elimination": ["dead-code"],
    "subexpression_elimination": ["cse"],
    "weight_tying": ["cse"],
}

# onnxsim keyword options with no meaning here (they tune onnxsim's own checker, profiler or
# saving), with onnxsim's defaults: another value is ignored with a warning.
_SIMPLIFY_IGNORED = {
    "dynamic_input_shape": False,
    "custom_lib": None,
    "tensor_size_threshold": "1.5GB",
    "import_custom_schemas": True,
    "input_fill": "random",
    "providers": None,
    "gemm_fusion_backend": "ort_cpu",
    "profile": None,
    "ort_profile": None,
    "merge_ort_profile": False,
    "external_data_threshold": "100MB",
}
# onnxsim options asking for a result onnxsmith does not make: another value is an Error.
_SIMPLIFY_REFUSED = {
    "mutable_initializer": False,
    "initializers_as_constants": True,
    "inline_functions": False,
    "target_opset_version": None,
    "extra_optimizers": None,
    "custom_rewriter": None,
    "function_rewrite_rules": None,
}


def simplify(
    model,
    check_n=0,
    perform_optimization=True,
    skip_fuse_bn=False,
    overwrite_input_shapes=None,
    test_input_shapes=None,
    skipped_optimizers=None,
    skip_constant_folding=False,
    skip_shape_inference=False,
    input_data=None,
    dynamic_input_shape=False,
    custom_lib=None,
    include_subgraph=False,
    unused_output=None,
    tensor_size_threshold="1.5GB",
    mutable_initializer=False,
    *,
    input_shapes=None,
    check_rtol=None,
    check_atol=None,
    output_path=None,
    check=True,
    **options,
):
    """``onnxsim.simplify``'s shape over ``onnxsmith.optimize``: returns ``(ModelProto, True)``.

    ``model`` is a path or an ``onnx.ModelProto`` (or bytes, which come back as bytes). The
    result is checked against the original in tract, as ``optimize`` checks it, unless
    ``check=False``; a result that disagrees raises ``onnxsmith.CheckFailed`` instead of
    coming back with ``False``, so the bool is always True.

    Mapped to onnxsmith's options:

    - ``check_n``: N > 0 checks on N seeded input sets (``samples=N``); 0, onnxsim's default,
      keeps onnxsmith's default check.
    - ``perform_optimization=False``: only folding runs (``passes=`` the folding passes).
    - ``skip_fuse_bn``: skips ``fuse-conv-bn`` and ``fuse-gemm-bn``.
    - ``overwrite_input_shapes``, ``test_input_shapes``, ``input_shapes`` (a dict of name to
      dims, or ``"name:1,3,224,224"`` strings): the shapes the check runs with
      (``input_shape=``). The result keeps its declared input shapes: onnxsmith keeps
      symbolic dims symbolic, and folds what is static whatever they are bound to.
    - ``skipped_optimizers``: onnx-optimizer names skip the onnxsmith passes doing their work
      (``ONNXSIM_PASSES``; ``eliminate_nop_*`` all map to ``eliminate-noop``); onnxsmith pass
      ids are taken as they are; a name with no equivalent is ignored with a warning.
    - ``skip_constant_folding``: skips ``fold-constants``. ``skip_shape_inference``: skips
      the passes reading inferred shapes (``fold-shape``, ``fold-reshape-target``).
    - ``input_data`` (a dict of name to numpy array): the check's inputs (``inputs_npz=``).
    - ``unused_output``: those graph outputs are removed first (needs onnx); what only they
      read goes with them.
    - ``check_rtol``, ``check_atol``: ``rtol=``, ``atol=`` (onnxsmith scales atol by each
      output's largest magnitude).
    - ``output_path``: the result is written there (``model`` must be a path, as in onnxsim),
      and read back without its external data.

    No meaning here, ignored (with a warning when not onnxsim's default):
    ``dynamic_input_shape``, ``custom_lib`` (tract keeps unknown ops as they are, and says a
    model it cannot run is UNVERIFIED), ``tensor_size_threshold`` (onnxsmith's folding budget
    is ``fold_limit=``), ``import_custom_schemas``, ``input_fill`` (inputs are seeded),
    ``providers``, ``gemm_fusion_backend``, ``profile``, ``ort_profile``,
    ``merge_ort_profile``, ``external_data_threshold`` (external data past 2 GiB, or with
    ``external_data=True``). ``include_subgraph`` is always on: If, Loop and Scan bodies are
    rewritten too.

    Refused (``onnxsmith.Error``) unless at onnxsim's default, as onnxsmith does not make such
    a result: ``mutable_initializer``, ``initializers_as_constants``, ``inline_functions``,
    ``target_opset_version``, ``extra_optimizers``, ``custom_rewriter``,
    ``function_rewrite_rules``.

    Any other keyword is an option of ``onnxsmith.optimize`` (``fold_limit=``, ``quiet=``, ...).
    """
    anchor = {
        "dynamic_input_shape": dynamic_input_shape,
        "custom_lib": custom_lib,
        "tensor_size_threshold": tensor_size_threshold,
        "mutable_initializer": mutable_initializer,
    }
    for name in list(options):
        if name in _SIMPLIFY_IGNORED or name in _SIMPLIFY_REFUSED:
            anchor[name] = options.pop(name)
    _anchor_options("simplify", anchor, _SIMPLIFY_IGNORED, _SIMPLIFY_REFUSED)
    disable = _listed(options.pop("disable", None))
    if not perform_optimization:
        options["passes"] = _FOLDING
    if skip_fuse_bn:
        disable += ["fuse-conv-bn", "fuse-gemm-bn"]
    if skip_constant_folding:
        disable.append("fold-constants")
    if skip_shape_inference:
        disable += _SHAPE_FOLDING
    disable += _passes("skipped_optimizers", skipped_optimizers, ONNXSIM_PASSES)
    shapes = {}
    for given in (input_shapes, overwrite_input_shapes, test_input_shapes):
        shapes.update(_shapes(given))
    if output_path is not None and not isinstance(model, (str, os.PathLike)):
        raise Error("output_path needs model to be a file path, as in onnxsim")
    if unused_output:
        model = _without_outputs(model, unused_output)
    with contextlib.ExitStack() as stack:
        result, _ = optimize(
            model,
            output_path,
            check=check,
            disable=_unique(disable) or None,
            input_shape=shapes or None,
            samples=check_n if check and check_n > 0 else None,
            inputs_npz=_npz(stack, input_data) if input_data else None,
            rtol=check_rtol,
            atol=check_atol,
            **options,
        )
    if output_path is not None:
        import onnx

        result = onnx.load(os.fspath(output_path), load_external_data=False)
    return result, True


def slim(
    model,
    output_model=None,
    *,
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
    check=True,
    **options,
):
    """``onnxslim.slim``'s shape over ``onnxsmith.optimize``: returns the ModelProto, or None
    when it was written to ``output_model``.

    ``model`` is a path or an ``onnx.ModelProto`` (or bytes, which come back as bytes). The
    result is checked against the original in tract, as ``optimize`` checks it, whatever
    ``model_check`` says, unless ``check=False``; a result that disagrees raises
    ``onnxsmith.CheckFailed``: never a silent None.

    Mapped to onnxsmith's options:

    - ``output_model``: the result is written there (external data past 2 GiB, or with
      ``save_as_external_data=True``) and None comes back.
    - ``model_check_inputs``: ``"name:1,3,224,224"`` gives the shape the check runs with,
      ``"name:data.npy"`` its data (needs numpy).
    - ``input_shapes`` (``"name:1,3,224,224"`` strings or a dict of name to dims): the shapes
      the check runs with (``input_shape=``). The result keeps its declared input shapes:
      onnxsmith keeps symbolic dims symbolic, and folds what is static whatever they are
      bound to.
    - ``no_shape_infer``: skips the passes reading inferred shapes (``fold-shape``,
      ``fold-reshape-target``).
    - ``skip_optimizations`` and ``skip_fusion_patterns``: skip the onnxsmith passes doing
      that work (``ONNXSLIM_OPTIMIZATIONS``, ``ONNXSLIM_PATTERNS``); onnxsmith pass ids are
      taken as they are; a name with no equivalent is ignored with a warning.
    - ``dtype="fp16"`` (or ``"float16"``): ``precision="fp16"``.

    No meaning here, ignored: ``inspect``, ``dump_to_disk`` and ``verbose`` (progress shows on
    a terminal; ``quiet=True`` hides it); ``size_threshold`` with a warning (onnxsmith's
    folding budget is ``fold_limit=``). Refused (``onnxsmith.Error``): a list of models
    (onnxslim's inspection; use ``python -m onnxsmith inspect``), ``inputs`` and ``outputs``
    (onnxsmith does not retype a model's interface), ``dtype`` other than fp16.

    Any other keyword is an option of ``onnxsmith.optimize`` (``fold_limit=``, ``quiet=``, ...).
    """
    del inspect, dump_to_disk, verbose, model_check
    if isinstance(model, list):
        raise Error("a list of models is onnxslim's inspection: use `python -m onnxsmith inspect MODEL`")
    if inputs or outputs:
        raise Error("inputs= and outputs= retype a model's interface, which onnxsmith does not do")
    if size_threshold is not None:
        warnings.warn(
            f"slim: size_threshold={size_threshold!r} has no meaning in onnxsmith and is ignored "
            f"(its folding budget is fold_limit=)",
            stacklevel=2,
        )
    if dtype is not None:
        if dtype not in ("fp16", "float16"):
            raise Error(f"dtype={dtype!r}: onnxsmith converts to fp16 only (precision=)")
        options["precision"] = "fp16"
    disable = _listed(options.pop("disable", None))
    disable += _passes("skip_optimizations", skip_optimizations, ONNXSLIM_OPTIMIZATIONS)
    disable += _passes("skip_fusion_patterns", skip_fusion_patterns, ONNXSLIM_PATTERNS)
    if no_shape_infer:
        disable += _SHAPE_FOLDING
    shapes, data = _shapes(input_shapes), {}
    for spec in model_check_inputs or []:
        name, value = spec.rsplit(":", 1)
        if value.endswith(".npy"):
            import numpy

            data[name] = numpy.load(value)
        else:
            shapes[name] = value
    with contextlib.ExitStack() as stack:
        result, _ = optimize(
            model,
            output_model,
            check=check,
            disable=_unique(disable) or None,
            input_shape=shapes or None,
            inputs_npz=_npz(stack, data) if data else None,
            external_data=save_as_external_data,
            **options,
        )
    return None if output_model is not None else result


def _anchor_options(function, given, ignored, refused):
    """Warns of the anchor's options given another value than their default that have no
    meaning here, and refuses those asking for a result onnxsmith does not make."""
    for name, value in given.items():
        if name in refused and value != refused[name]:
            raise Error(f"{function}: {name}={value!r} asks for a result onnxsmith does not make")
        if name in ignored and value != ignored[name]:
            warnings.warn(
                f"{function}: {name}={value!r} has no meaning in onnxsmith and is ignored",
                stacklevel=3,
            )


def _passes(option, names, table):
    """The onnxsmith pass ids doing the work of the anchor's passes `names`. Ours are taken as
    they are (they have dashes, the anchors' have none)."""
    ids = []
    for name in names or []:
        if name in table:
            ids += table[name]
        elif "-" in name:
            ids.append(name)
        else:
            warnings.warn(f"{option}: {name!r} has no equivalent in onnxsmith and is ignored", stacklevel=3)
    return ids


def _listed(value):
    """An option's value as a list (the user's own `disable=` joins the mapped ones)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _unique(ids):
    return list(dict.fromkeys(ids))


def _shapes(given):
    """Input shapes as a dict of name to dims (or to `1,3,224,224` text)."""
    if not given:
        return {}
    if isinstance(given, dict):
        return dict(given)
    shapes = {}
    for spec in given:
        if not isinstance(spec, str) or ":" not in spec:
            raise Error(f"input shape {spec!r} must be a dict of name to dims, or 'name:1,3,224,224'")
        name, dims = spec.rsplit(":", 1)
        shapes[name] = dims
    return shapes


def _npz(stack, arrays):
    """`arrays` (name to numpy array) in an .npz file that lives as long as `stack`."""
    import numpy

    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="onnxsmith-"))
    path = os.path.join(folder, "inputs.npz")
    numpy.savez(path, **{name: numpy.asarray(a) for name, a in arrays.items()})
    return path


def _without_outputs(model, names):
    """`model` as an onnx.ModelProto without the graph outputs `names`."""
    import onnx

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model))
    elif isinstance(model, (bytes, bytearray, memoryview)):
        model = onnx.ModelProto.FromString(bytes(model))
    else:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    outputs = model.graph.output
    missing = set(names) - {o.name for o in outputs}
    if missing:
        raise Error(f"unused_output: the model has no output {', '.join(sorted(missing))}")
    kept = [o for o in outputs if o.name not in set(names)]
    del outputs[:]
    outputs.extend(kept)
    return model
