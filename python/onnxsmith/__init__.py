"""onnxsmith from Python: the compiler's ``optimize`` job as a function.

- ``optimize(model, output=None, **options) -> (model, report)``: the job on a path, bytes or
  an ``onnx.ModelProto``, every option of ``onnxsmith optimize`` a keyword.
- ``simplify(model, ...) -> (ModelProto, bool)``: shaped like ``onnxsim.simplify``.
- ``slim(model, output_model=None, ...)``: shaped like ``onnxslim.slim``.

Errors are ``Error`` (bad input, with the CLI's message) and ``CheckFailed`` (the result
disagrees with the original; it carries the report). ``python -m onnxsmith`` runs the same
command line as the ``onnxsmith`` binary.
"""

from ._drop_ins import simplify, slim
from ._job import CheckFailed, optimize
from ._native import Error, __version__

__all__ = ["optimize", "simplify", "slim", "Error", "CheckFailed"]
