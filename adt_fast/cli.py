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
    """Usage errors as one line, `adt-fast train: error: ...`; --help still prints everything.
    Flags only by their full names: argparse's default reads `--epoch` as --epochs, which a later
    flag (`--epoch-size`, say) would make ambiguous or another flag."""

    commands: Optional[argparse.Action] = None  # adt-fast's: its subcommands, by name in .choices

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .attacks.command import add_eval_parser
    from .train.command import add_train_parser

    parser = Parser(prog="adt-fast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.commands = parser.add_subparsers(dest="command", required=True)
    add_train_parser(parser.commands)
    add_eval_parser(parser.commands)
    return parser


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line, whose flags that no parser knows are refused by the parser they were given
    to: those before the command by adt-fast's, the others by the command's (whose --help lists
    its flags), not all by adt-fast's as parse_args would."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # adt-fast's own flags take no value: the command is the first word that names it
        ours = [word for word in argv[:argv.index(args.command)] if word in extras]
        (parser if ours else parser.commands.choices[args.command]).error(
            f"unrecognized arguments: {' '.join(ours or extras)}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Each command reports its own interrupts (what was kept, how to go on)."""
    args = parse(argv)
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
