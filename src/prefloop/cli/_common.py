"""Helpers shared by the subcommand modules."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn, TypeVar

from prefloop.config import add_dataclass_args, build_config
from prefloop.workspace import DEFAULT_WORKSPACE, Workspace

T = TypeVar("T")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def add_command(
    sub: Any, name: str, help: str, func: Any, config_cls: type | None = None
) -> argparse.ArgumentParser:
    """A subcommand with --workspace and (optionally) one flag per field of `config_cls` (stage
    configs live in the torch-free prefloop.configs, so building the parser stays light)."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
    p.add_argument(
        "--workspace",
        default=DEFAULT_WORKSPACE,
        help=f"workspace folder (default: ./{DEFAULT_WORKSPACE})",
    )
    p.set_defaults(func=func, stage_name=name)

    if config_cls is not None:
        add_dataclass_args(p, config_cls)
    return p


def workspace_and_config(args: argparse.Namespace, cls: type[T]) -> tuple[Workspace, T]:
    """Open the workspace and build the stage config: defaults < config.yaml < flags."""
    ws = Workspace.open(args.workspace)
    return ws, build_config(cls, ws.config_section(args.stage_name), args)


def quiet_transformers() -> None:
    """Our own progress bars and summaries replace transformers' per-load bars and notices."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
