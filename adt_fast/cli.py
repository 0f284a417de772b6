"""The `adt-fast` command: `adt-fast train ...` and `adt-fast eval ...`."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional, Sequence

from . import __version__
from .interrupts import INTERRUPTED_EXIT


EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """Usage errors as one line, `adt-fast train: error: ...`; --help still prints everything."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .attacks.command import add_eval_parser
    from .train.command import add_train_parser

    parser = Parser(prog="adt-fast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)  # subparsers are Parsers too
    add_train_parser(commands)
    add_eval_parser(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Each command reports its own interrupts (what was kept, how to go on)."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(args.command)
        try:
            return int(args.run(args) or 0)
        except KeyboardInterrupt:  # before a command could say anything more precise
            print(f"adt-fast {args.command}: interrupted", file=sys.stderr)
            return INTERRUPTED_EXIT


def _one_line_warnings(command: str):
    """Python warnings as the command's own lines: the source line Python would show with one is
    the library's (`fit(config, ...)`), which tells a user of the command nothing."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"adt-fast {command}: warning: {message}", file=file or sys.stderr)
    return show


if __name__ == "__main__":
    sys.exit(main())
