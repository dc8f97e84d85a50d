"""fastrnn's command line: ``fastrnn <command> [options]``, or ``python -m fastrnn <command>``.

Each command is a pair of functions in a module, ``add_arguments(parser)`` and
``command(args) -> exit status``; adding one is one entry in :data:`COMMANDS`.
"""
import importlib
import sys

# name -> (module, its add-arguments function, its command function, one-line help)
COMMANDS = {
    "bench": ("fastrnn.bench", "add_arguments", "command",
              "time fastrnn against its NumPy reference and torch.nn.RNN"),
    "info": ("fastrnn.config", "add_arguments", "command",
             "print version, compiler, OpenMP and kernel paths (for bug reports)"),
    "train-lm": ("fastrnn.train_cli", "add_train_lm_arguments", "run_train_lm",
                 "train a character-level language model on a UTF-8 text file"),
    "sample": ("fastrnn.train_cli", "add_sample_arguments", "run_sample",
               "generate text from a train-lm checkpoint"),
}


def build_parser():
    """The argument parser: one subcommand per entry of COMMANDS."""
    from . import __version__

    from .train_cli import ArgumentParser

    # its subcommands' parsers are of its class too: every usage error is one line
    parser = ArgumentParser(
        prog="fastrnn", description="fastrnn: a compiled torch.nn.RNN-compatible RNN for the CPU.")
    parser.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="name", metavar="<command>")
    for name, (module_name, add_arguments, command, help_) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_, description=help_)
        getattr(module, add_arguments)(sub)
        sub.set_defaults(command=getattr(module, command))
    return parser


def main(argv=None):
    """Parse ``argv`` (default: sys.argv[1:]), run the command, return its exit status.

    A usage error or an expected failure (:class:`fastrnn.train_cli.CommandError`) is one
    line on stderr and status 2; Ctrl-C is status 130; no traceback for either.
    """
    from .train_cli import run_command

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.name is None:
        parser.print_help(sys.stderr)
        return 2
    return run_command(args.command, args)


if __name__ == "__main__":
    sys.exit(main())
