"""fastrnn's command line: ``fastrnn <command> [options]``, or ``python -m fastrnn <command>``.

Each command is a module with ``add_arguments(parser)`` and ``command(args) -> exit status``;
adding one (``info``, ``train-lm``, ``sample``) is one entry in :data:`COMMANDS`.
"""
import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "bench": ("fastrnn.bench", "time fastrnn against its NumPy reference and torch.nn.RNN"),
    "info": ("fastrnn.config", "print version, compiler, OpenMP and kernel paths (for bug reports)"),
}


def build_parser():
    """The argument parser: one subcommand per entry of COMMANDS."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fastrnn", description="fastrnn: a compiled torch.nn.RNN-compatible RNN for the CPU.")
    parser.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="name", metavar="<command>")
    for name, (module_name, help_) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_, description=module.__doc__.split("\n\n")[0])
        module.add_arguments(sub)
        sub.set_defaults(command=module.command)
    return parser


def main(argv=None):
    """Parse ``argv`` (default: sys.argv[1:]), run the command, return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.name is None:
        parser.print_help(sys.stderr)
        return 2
    return args.command(args)


if __name__ == "__main__":
    sys.exit(main())
