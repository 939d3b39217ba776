"""The ``fastattn`` command: a small dispatcher over subcommands.

Each subcommand lives in its own module, named in :data:`SUBCOMMANDS`, which
provides ``HELP`` (one line), ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``.  Adding a subcommand (say ``viz``) is one more entry; the
modules must be cheap to import, since ``fastattn --help`` imports them all.
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
    """The argument parser of ``fastattn`` with every subcommand registered."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="fastattn", description="fastattn: exact attention for the CPU.")
    parser.add_argument("--version", action="version", version=f"fastattn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
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
    >>> main(["--version"])  # doctest: +SKIP
    fastattn 0.1.0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
