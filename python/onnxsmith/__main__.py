"""``python -m onnxsmith ARGS``: the onnxsmith command line, as the binary runs it."""

import signal
import sys

from . import _native


def main():
    # While the Rust side runs, Python only notes a Ctrl-C; die at once, as the binary does.
    # (SIGXFSZ needs nothing: CPython ignores it from start-up, as the binary does, so a write
    # past the file size limit fails with an error instead of killing the process.)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return _native.main(["onnxsmith", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
