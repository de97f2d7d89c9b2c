"""The `prefloop` command: parse, call one stage function, map user errors to exit code 2.

Each module in this package (not starting with `_`) defines `register(subparsers)` adding its
subcommand(s) with `set_defaults(func=...)`; modules are discovered, so adding a stage never
edits this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from prefloop import __version__
from prefloop.cli._common import OneLineParser
from prefloop.errors import PrefloopError


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="prefloop",
        description="RLHF as a closed loop: pretrain -> sft -> pairs -> label/annotate -> reward -> ppo -> eval.",
    )
    parser.add_argument("--version", action="version", version=f"prefloop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except PrefloopError as e:
        print(f"prefloop {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"prefloop {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
