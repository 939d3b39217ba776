"""The ``fastattn`` command: a small dispatcher over subcommands.

Each subcommand lives in its own module, named in :data:`SUBCOMMANDS`, which
provides ``HELP`` (one line), ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``, and may provide ``USAGE`` (its usage lines, when argparse's
would mislead) and ``EXAMPLES`` (``(command, what it does)`` pairs, listed by
``fastattn --help``).  Adding a subcommand is one more entry; the modules must be
cheap to import, since ``fastattn --help`` imports them all.
"""

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "bench": "fastattn.bench._command",
    "viz": "fastattn._viz_command",
}
"""Subcommand name -> module implementing it."""


def build_parser():
    """The argument parser of ``fastattn`` with every subcommand registered.

    Examples
    --------
    >>> args = build_parser().parse_args(["viz", "--demo"])
    >>> args.command, args.demo
    ('viz', True)
    """
    from . import __version__

    modules = {name: importlib.import_module(module) for name, module in SUBCOMMANDS.items()}
    examples = [example for module in modules.values()
                for example in getattr(module, "EXAMPLES", ())]
    width = max((len(command) for command, _ in examples), default=0)
    epilog = "examples:\n" + "\n".join(f"  {command:<{width}}  {what}"
                                        for command, what in examples)
    parser = argparse.ArgumentParser(
        prog="fastattn", description="fastattn: exact attention for the CPU.",
        epilog=epilog + "\n\n`fastattn COMMAND --help` describes the options of COMMAND.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fastattn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     title="commands")
    for name, module in modules.items():
        sub = commands.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                                  usage=getattr(module, "USAGE", None),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv=None):
    """Run ``fastattn`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Parameters
    ----------
    argv : list of str, optional

    Returns
    -------
    int

    Examples
    --------
    ``--version`` (like ``--help``) prints and exits through ``SystemExit``:

    >>> main(["--version"])
    Traceback (most recent call last):
    SystemExit: 0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
