"""Stage configs are dataclasses; this module turns them into CLI flags and YAML sections.

Each field carries its help text in `metadata["help"]`, so `--help`, the YAML file and the
docs all describe the same defaults. Precedence: dataclass default < workspace config.yaml
section < command-line flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

from prefloop.errors import PrefloopError

T = TypeVar("T")


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text: `lr: float = option(3e-4, "peak learning rate")`."""
    if isinstance(default, list | dict):
        return dataclasses.field(
            default_factory=lambda: default.copy(), metadata={"help": help, **kw}
        )
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def _base_type(tp: Any) -> Any:
    """`int | None` -> int; `list[str]` -> list; plain types unchanged."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return origin or tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--field-name` flag per dataclass field (defaults None: unset means 'not given')."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if tp is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif tp is list:
            group.add_argument(flag, nargs="+", default=None, help=help_text)
        else:
            group.add_argument(
                flag, type=tp, default=None, help=help_text, metavar=tp.__name__.upper()
            )


def build_config(
    cls: type[T], yaml_section: dict[str, Any] | None, args: argparse.Namespace | None
) -> T:
    """Merge dataclass defaults, a YAML section and parsed CLI flags into one config object."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in (yaml_section or {}).items():
        if key not in names:
            raise PrefloopError(f"unknown option '{key}' for {cls.__name__}", field=key)
        values[key] = value
    if args is not None:
        for name in names:
            value = getattr(args, name, None)
            if value is not None:
                values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise PrefloopError(f"invalid {cls.__name__}: {e}") from None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
