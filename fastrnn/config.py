"""What this fastrnn build is: the facts a bug report needs (``fastrnn info``)."""
import platform
import sys

import numpy as np

from . import _rnn
from ._version import __version__
from .parallel import get_num_threads

__all__ = ["config", "show_config"]


def config():
    """Build and run-time configuration as a dict (see :func:`show_config`)."""
    build = _rnn.build_info()
    return {
        "fastrnn": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "compiler": build["compiler"],
        "openmp": bool(build["openmp_version"]),
        "openmp_version": build["openmp_version"],
        "kernels_compiled": _rnn.compiled_kernels(),
        "kernels_supported": _rnn.available_kernels(),
        "kernel_selected": _rnn.selected_kernels(),
        "num_threads": get_num_threads(),
    }


def show_config(file=None):
    """Print version, compiler, OpenMP, kernel paths and thread count (paste into bug reports)."""
    width = max(len(k) for k in config())
    for key, value in config().items():
        if isinstance(value, list):
            value = ", ".join(value)
        print(f"{key:<{width}}  {value}", file=file or sys.stdout)


def add_arguments(parser):
    """``fastrnn info`` options."""
    parser.add_argument("--json", action="store_true", help="print the configuration as JSON")


def command(args):
    """``fastrnn info``: print the configuration; returns the exit status."""
    if args.json:
        import json

        print(json.dumps(config(), indent=2))
    else:
        show_config()
    return 0
