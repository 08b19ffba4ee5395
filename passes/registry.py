"""Explicit pass registry, plus the `onnxforge.passes` entry-point group through
which other packages add passes."""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from importlib import metadata
from typing import Any

from ..ir import OnnxforgeError, PassOptionError, PipelineError, UnknownPassError
from .base import Pass

ENTRY_POINT_GROUP = "onnxforge.passes"
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_REGISTRY: dict[str, type[Pass]] = {}
_loaded_groups: set[str] = set()  # entry-point groups already imported


def register_pass(name: str):
    """Class decorator: `@register_pass("fuse-conv-bn")`. Names are kebab-case and unique."""

    def decorate(cls: type[Pass]) -> type[Pass]:
        if not _NAME.match(name):
            raise PipelineError(f"pass name {name!r} is not kebab-case (lowercase words joined by '-')")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise PipelineError(f"pass name {name!r} is already registered by {_REGISTRY[name].__module__}")
        if not dataclasses.is_dataclass(cls.Options):
            raise PipelineError(f"pass {name!r}: Options must be a dataclass")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def unregister_pass(name: str) -> None:
    _REGISTRY.pop(name, None)


def load_entry_points(group: str, error: type[OnnxforgeError]) -> None:
    """Import each plugin module of an entry-point group once; its decorators register
    what it provides (passes here, lowerings in codegen)."""
    if group in _loaded_groups:
        return
    _loaded_groups.add(group)
    for ep in metadata.entry_points(group=group):
        try:
            ep.load()
        except Exception as exc:
            raise error(f"plugin {ep.name!r} ({ep.value}) from entry point group {group} failed to load: {exc}") from exc


def _load_entry_points() -> None:
    load_entry_points(ENTRY_POINT_GROUP, PipelineError)


def registered_passes() -> dict[str, type[Pass]]:
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    passes = registered_passes()
    if name in passes:
        return passes[name]
    close = difflib.get_close_matches(name, list(passes), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known passes: {', '.join(passes)}"
    raise UnknownPassError(f"unknown pass {name!r}{hint}")


def option_fields(cls: type[Pass]) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls.Options))


def make_options(cls: type[Pass], raw: dict[str, str]) -> Any:
    """Build the options dataclass from pipeline text values, converting by field type."""
    fields = {f.name: f for f in option_fields(cls)}
    hints = typing.get_type_hints(cls.Options)
    values: dict[str, Any] = {}
    for key, text in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=2, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else (f"; options: {', '.join(fields)}" if fields else "; it takes no options")
            raise PassOptionError(f"pass {cls.name!r} has no option {key!r}{hint}")
        values[key] = convert_option(cls.name, key, text, hints[key])
    try:
        return cls.Options(**values)
    except (TypeError, ValueError) as exc:
        raise PassOptionError(f"pass {cls.name!r}: {exc}") from None


def convert_option(pass_name: str, key: str, text: str, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or str(origin) == "types.UnionType":
        if text in ("none", "None") and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if hint is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if hint is str:
            return text
        if origin in (list, tuple):
            item = args[0] if args else str
            items = [p for p in re.split(r"[+,]", text) if p] if text else []
            return [convert_option(pass_name, key, p, item) for p in items]
        if typing.get_origin(hint) is typing.Literal:
            if text not in typing.get_args(hint):
                raise ValueError(f"expected one of {', '.join(map(str, typing.get_args(hint)))}")
            return text
    except ValueError as exc:
        raise PassOptionError(f"pass {pass_name!r} option {key}={text!r}: {exc}") from None
    return text


def option_text(value: Any) -> str:
    """Inverse of convert_option, for printing pipelines and defaults."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "+".join(option_text(v) for v in value)
    return str(value)
