"""Typed backend options: merge config layers into a backend's Options dataclass.

Values arrive as strings (``-o threads=4``) or TOML values; each is converted to the
field's annotated type (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``) and an
unknown key or a bad value is a :class:`UsageError` that lists what is valid.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

from mlpi.core.contract.errors import UsageError, suggest


def option_help(options_cls: type) -> dict[str, str]:
    """``{key: "type (default X): help"}`` for every field of an Options dataclass."""
    hints = typing.get_type_hints(options_cls)
    out: dict[str, str] = {}
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        out[f.name] = f"{_type_name(hints[f.name])} (default {default!r}): {f.metadata.get('help', '')}".rstrip(": ")
    return out


def build_options(options_cls: type, layers: list[tuple[str, Mapping[str, Any]]], backend: str) -> Any:
    """Apply ``layers`` (lowest precedence first; each ``(source, {key: value})``) to defaults."""
    hints = typing.get_type_hints(options_cls)
    names = [f.name for f in dataclasses.fields(options_cls)]
    values: dict[str, Any] = {}
    for source, layer in layers:
        for key, raw in layer.items():
            norm = key.replace("-", "_")
            if norm not in names:
                valid = ", ".join(names) if names else "none: this backend has no options"
                raise UsageError(
                    f"unknown option '{key}' for backend '{backend}' (from {source})",
                    f"{suggest(norm, names, listing=False)}valid options: {valid}",
                )
            values[norm] = _convert(raw, hints[norm], f"option '{key}' of backend '{backend}' (from {source})")
    return options_cls(**values)


def options_to_json(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options)


def parse_assignments(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a pair without ``=`` is a usage error."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"'{pair}' is not KEY=VALUE", "write options as -o key=value, e.g. -o intra_op_threads=2")
        out[key.strip()] = value.strip()
    return out


def _convert(raw: Any, annotation: Any, what: str) -> Any:
    origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        for choice in choices:
            if raw == choice or (isinstance(raw, str) and str(choice).lower() == raw.lower()):
                return choice
        raise UsageError(f"{what} is {raw!r}", "choose one of: " + ", ".join(map(str, choices)))
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in get_args(annotation) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("", "none", "null")):
            return None
        return _convert(raw, args[0], what)
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{what} is {raw!r}, not a boolean", "use true or false")
    if annotation in (int, float):
        if isinstance(raw, bool):
            raise UsageError(f"{what} is {raw!r}", f"give a number ({annotation.__name__})")
        try:
            value = annotation(raw)
        except (TypeError, ValueError):
            raise UsageError(f"{what} is {raw!r}, not a number", f"give a {annotation.__name__}") from None
        if annotation is int and isinstance(raw, float) and raw != int(raw):
            raise UsageError(f"{what} is {raw!r}, not a whole number", "give an integer")
        return value
    if annotation is str:
        return str(raw)
    return raw


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "|".join(map(str, get_args(annotation)))
    return getattr(annotation, "__name__", str(annotation))
