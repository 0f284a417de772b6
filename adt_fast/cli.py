"""The `adt-fast` command: `adt-fast train ...` and `adt-fast eval ...`."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    from .attacks.command import add_eval_parser
    from .train.command import add_train_parser

    parser = argparse.ArgumentParser(prog="adt-fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_parser(commands)
    add_eval_parser(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: the last completed epoch's checkpoint is intact; rerun with --resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
