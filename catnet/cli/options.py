"""Command-line options derived from the config dataclasses, so that a setting is declared once,
in catnet/config.py with its help line, and becomes a flag: `lr_schedule` -> `--lr-schedule`,
a bool -> `--augment/--no-augment`, a list -> a comma list (`--hidden 512,128`).

Every derived option defaults to None, "not given", so the config file (`--config`) and then
the dataclass default decide; `overrides` turns the given values into the dict that
config.load_config lays over the file.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Collection
from typing import Any

import typer
from rich.markup import escape

from catnet.errors import CatnetError


def config_options(
    cls: type, exclude: Collection[str] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command `def cmd(explicit..., **settings)` one option per field of `cls`.

    The command's own parameters come first and win: a field with the same name (e.g. `data`,
    an argument) is not added again. `exclude` names fields that are no flags; the values of
    the others arrive in **settings, None when not given."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(func).parameters.values()
        explicit = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in explicit} | set(exclude)
        hints = typing.get_type_hints(cls)
        derived = [
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=_option(f, hints[f.name]),
                annotation=_cli_type(hints[f.name]),
            )
            for f in dataclasses.fields(cls)
            if f.name not in taken
        ]
        own_hints = typing.get_type_hints(func)  # the real types, not the postponed strings
        explicit = [
            p.replace(
                kind=inspect.Parameter.KEYWORD_ONLY, annotation=own_hints.get(p.name, p.annotation)
            )
            for p in explicit
        ]

        @functools.wraps(func)
        def command(**values: Any) -> Any:
            return func(**values)

        command.__annotations__ = {}  # Typer reads the types from the signature below
        command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [*explicit, *derived], return_annotation=None
        )
        return command

    return decorate


def config_file(cls: type) -> Any:
    """The --config/-c option of a command whose settings are cls's fields."""
    return typer.Option(
        None, "--config", "-c", help=f"TOML file of {cls.__name__} settings; flags override it."
    )


def overrides(cls: type, settings: dict[str, Any]) -> dict[str, Any]:
    """The given flags as config values: comma lists parsed, None ('not given') kept."""
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in settings.items():
        kind = hints[name]
        if typing.get_origin(kind) is list and value is not None:
            value = _comma_list(name, value, typing.get_args(kind)[0])
        values[name] = value
    return values


def help_of(cls: type, name: str) -> str:
    """A field's help line, escaped for Typer's Rich help (for a field used as an argument)."""
    (f,) = (f for f in dataclasses.fields(cls) if f.name == name)
    return escape(f.metadata.get("help", ""))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option(f: dataclasses.Field[Any], kind: Any) -> Any:
    decls = []
    if _is_bool(kind):
        decls = [f"{flag(f.name)}/--no-{flag(f.name)[2:]}"]
    help_text = f.metadata.get("help", "")
    default = _default_text(f)
    if default:
        help_text = f"{help_text} [default: {default}]"
    # Rich markup would swallow "[default: ...]" and "[test/]" in the help text.
    return typer.Option(None, *decls, help=escape(help_text), show_default=False)


def _default_text(f: dataclasses.Field[Any]) -> str:
    """The dataclass default for --help; "" where the help line says it in words."""
    if "[default:" in f.metadata.get("help", ""):
        return ""
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return ",".join(str(v) for v in value) if value else ""
    value = f.default
    if isinstance(value, bool):
        return flag(f.name)[2:] if value else "no-" + flag(f.name)[2:]
    if value is None or value == "":
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cli_type(kind: Any) -> Any:
    """What Typer parses: the field's scalar type, a list as its comma-separated text."""
    if _is_bool(kind):
        return bool | None
    if typing.get_origin(kind) is list:
        return str | None
    if kind in (int, float, str):
        return kind | None
    raise TypeError(f"no command-line form for a config field of type {kind}")


def _is_bool(kind: Any) -> bool:
    if kind is bool:
        return True
    return isinstance(kind, types.UnionType) and set(typing.get_args(kind)) == {bool, type(None)}


def _comma_list(name: str, text: str, item: type) -> list[Any]:
    try:
        return [item(x) for x in text.split(",") if x.strip()]
    except ValueError:
        example = "512,128" if item is int else "0.3,0.7"
        raise CatnetError(
            f"{flag(name)} takes comma-separated {item.__name__}s like {example}, not {text!r}"
        ) from None
