"""Typed, frozen configurations and the command-line flags derived from them.

Every experiment (and ``bnlab train``) is configured by one ``@dataclass(frozen=True)``.
This module turns such a class into ``argparse`` flags (``field_name`` → ``--field-name``),
applies the flags a user actually gave on top of a preset, and turns a config back into
plain JSON for ``config.json``. One implementation of each fact: the dataclass is the
schema, its defaults and presets are the only place values live.

Supported field types: ``int``, ``float``, ``str``, ``bool`` (``--x`` / ``--no-x``) and
``tuple[int, ...]`` / ``tuple[float, ...]`` (comma-separated on the command line).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Mapping, TypeVar

__all__ = [
    "ConfigError",
    "option",
    "add_config_flags",
    "overrides_from_args",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "field_types",
    "check",
]

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value a person gave is invalid (reported as a one-line error)."""


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and the ``--help`` text of its command-line flag.

    Example: ``steps: int = option(1000, "training steps")``. Tuples are immutable, so a
    tuple default needs no factory.
    """
    return dataclasses.field(default=default, metadata={"help": help})


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type of every dataclass field (handles ``from __future__ import annotations``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _tuple_parser(elem: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(elem(t) for t in text.split(",") if t.strip() != "")
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {elem.__name__} values, got {text!r}"
            ) from None

    parse.__name__ = f"list of {elem.__name__}"
    return parse


def _parser_for(tp: Any):
    """(argparse ``type=``, metavar, is_bool) for a field type."""
    if tp is bool:
        return None, None, True
    if tp in (int, float, str):
        return tp, tp.__name__.upper(), False
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if args and args[0] in (int, float, str):
            return _tuple_parser(args[0]), f"{args[0].__name__.upper()},...", False
    raise TypeError(f"unsupported config field type {tp!r}")


def _help_texts(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def add_config_flags(parser: argparse.ArgumentParser, cls: type, defaults: Any = None) -> None:
    """Add one ``--flag`` per field of dataclass ``cls``.

    Defaults are ``argparse.SUPPRESS`` so that :func:`overrides_from_args` returns only the
    flags the user gave; ``defaults`` (a config instance, e.g. a preset) is shown in help.
    """
    group = parser.add_argument_group(f"{cls.__name__} fields (override the preset)")
    helps = _help_texts(cls)
    for name, tp in field_types(cls).items():
        shown = getattr(defaults, name) if defaults is not None else None
        text = helps[name]
        if defaults is not None:
            text = f"{text} (default: {shown!r})" if text else f"default: {shown!r}"
        text = text.replace("%", "%%")  # argparse formats help strings with %
        typ, metavar, is_bool = _parser_for(tp)
        if is_bool:
            group.add_argument(
                _flag(name), dest=name, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=text,
            )
        else:
            group.add_argument(
                _flag(name), dest=name, type=typ, metavar=metavar,
                default=argparse.SUPPRESS, help=text,
            )


def overrides_from_args(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def apply_overrides(config: C, overrides: Mapping[str, Any]) -> C:
    """``dataclasses.replace`` with a readable error for unknown fields or bad values."""
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown}; known: {sorted(known)}")
    try:
        return dataclasses.replace(config, **dict(overrides))
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a config (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Inverse of :func:`config_to_dict` (lists become tuples where the field is a tuple)."""
    types = field_types(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in types:
            raise ConfigError(f"unknown config field {name!r} for {cls.__name__}")
        if typing.get_origin(types[name]) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` (for ``__post_init__``)."""
    if not condition:
        raise ConfigError(message)
