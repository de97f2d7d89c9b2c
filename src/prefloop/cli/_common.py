"""Helpers shared by the subcommand modules."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from prefloop.config import add_dataclass_args, build_config
from prefloop.workspace import DEFAULT_WORKSPACE, Workspace

T = TypeVar("T")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


# Subcommands whose config class lives beside torch code: their flags are added only when the
# command is the one being run (`configure_command`), so `prefloop --help` and the light
# commands start without importing torch and transformers (~3 s).
LAZY_FLAGS: dict[str, Callable[[], None]] = {}


def add_command(
    sub: Any, name: str, help: str, func: Any, config_cls: type | str | None = None
) -> argparse.ArgumentParser:
    """A subcommand with --workspace and (optionally) one flag per config field. `config_cls`
    may be "module:Class", imported only when this subcommand runs."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
    p.add_argument(
        "--workspace",
        default=DEFAULT_WORKSPACE,
        help=f"workspace folder (default: ./{DEFAULT_WORKSPACE})",
    )
    p.set_defaults(func=func, stage_name=name)

    def flags() -> None:
        if isinstance(config_cls, str):
            module, _, attr = config_cls.partition(":")
            add_dataclass_args(p, getattr(importlib.import_module(module), attr))
        elif config_cls is not None:
            add_dataclass_args(p, config_cls)

    if isinstance(config_cls, str):
        LAZY_FLAGS[name] = flags
    elif config_cls is not None:
        flags()
    return p


def configure_command(argv: list[str]) -> None:
    """Add the flags of the subcommand named in argv (its first non-option word), if lazy."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in LAZY_FLAGS:
        LAZY_FLAGS.pop(command)()


def workspace_and_config(args: argparse.Namespace, cls: type[T]) -> tuple[Workspace, T]:
    """Open the workspace and build the stage config: defaults < config.yaml < flags."""
    ws = Workspace.open(args.workspace)
    return ws, build_config(cls, ws.config_section(args.stage_name), args)


def quiet_transformers() -> None:
    """Our own progress bars and summaries replace transformers' per-load bars and notices."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
