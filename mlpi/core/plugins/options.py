"""Typed backend options: merge config layers into a backend's Options dataclass.

Values arrive as strings (``-o threads=4``) or TOML values; each is converted to the
field's annotated type (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``) and an
unknown key or a bad value is a :class:`UsageError` that lists what is valid.

Numbers are checked here too, for every backend alike (no backend repeats these checks):
a float must be finite (TOML's ``inf``, ``nan`` and ``1e400`` are refused), and a field's
metadata may bound it: ``"min"`` / ``"max"`` (inclusive), and ``"threads": True`` for a
count of host threads (or of things that each take one), which is 0 or more unless
``"min"`` says otherwise and at most :func:`thread_limit`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

from mlpi.core.contract.errors import UsageError, suggest


#: A thread-count option may ask for this many threads per CPU this process may use ...
THREADS_PER_CPU = 4
#: ... and never fewer than this many, so that a plan made on a bigger machine, or a little
#: oversubscription on a small one, is not refused.
MIN_THREAD_LIMIT = 64


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_limit() -> int:
    """The most host threads a thread-count option (``"threads": True``) or ``--instances``
    may ask for: :data:`THREADS_PER_CPU` per usable CPU, at least :data:`MIN_THREAD_LIMIT`.
    A count far beyond the machine only makes a run start and then hang or crash."""
    return max(MIN_THREAD_LIMIT, THREADS_PER_CPU * usable_cpus())


def option_help(options_cls: type) -> dict[str, str]:
    """``{key: "type (default X): help"}`` for every field of an Options dataclass; a
    bounded number says its range: ``"int (default 0, 0 to 64): help"``."""
    hints = typing.get_type_hints(options_cls)
    out: dict[str, str] = {}
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        low, high = _bounds(f)
        span = "" if low is None and high is None else ", " + _range_text(low, high)
        out[f.name] = f"{_type_name(hints[f.name])} (default {default!r}{span}): {f.metadata.get('help', '')}".rstrip(": ")
    return out


def build_options(options_cls: type, layers: list[tuple[str, Mapping[str, Any]]], backend: str, kind: str = "backend") -> Any:
    """Apply ``layers`` (lowest precedence first; each ``(source, {key: value})``) to defaults
    (the options of a ``kind`` — backend or model — called ``backend``)."""
    hints = typing.get_type_hints(options_cls)
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    names = list(fields)
    values: dict[str, Any] = {}
    for source, layer in layers:
        for key, raw in layer.items():
            norm = key.replace("-", "_") if isinstance(key, str) else str(key)
            if norm not in names:
                valid = ", ".join(names) if names else f"none: this {kind} has no options"
                raise UsageError(
                    f"unknown option '{key}' for {kind} '{backend}' (from {source})",
                    f"{suggest(norm, names, listing=False)}valid options: {valid}",
                )
            what = f"option '{key}' of {kind} '{backend}' (from {source})"
            values[norm] = _check_bounds(_convert(raw, hints[norm], what), fields[norm], what)
    return options_cls(**values)


def options_to_json(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options)


def parse_assignments(pairs: tuple[str, ...] | list[str], example: str = "-o intra_op_threads=2") -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a pair without ``=`` is a usage error."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            flag = example.split()[0]
            raise UsageError(f"'{pair}' is not KEY=VALUE", f"write options as {flag} key=value, e.g. {example}")
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
        if isinstance(raw, float) and not math.isfinite(raw):  # TOML's inf, nan, 1e400
            raise UsageError(f"{what} is {raw!r}, not a finite number", f"give a finite {annotation.__name__}")
        try:
            value = annotation(raw)
        except (TypeError, ValueError, OverflowError):
            raise UsageError(f"{what} is {raw!r}, not a number",
                             "give an integer" if annotation is int else "give a number") from None
        if annotation is float and not math.isfinite(value):  # "inf", "nan", "1e400" as text
            raise UsageError(f"{what} is {raw!r}, not a finite number", "give a finite float")
        if annotation is int and isinstance(raw, float) and raw != int(raw):
            raise UsageError(f"{what} is {raw!r}, not a whole number", "give an integer")
        return value
    if annotation is str:
        return str(raw)
    return raw


def _bounds(f: dataclasses.Field[Any]) -> tuple[Any, Any]:
    """The (low, high) a field's metadata allows (``None``: no bound on that side)."""
    low, high = (_number(f.metadata.get(key)) for key in ("min", "max"))
    if f.metadata.get("threads"):
        low = 0 if low is None else low
        high = thread_limit() if high is None else min(high, thread_limit())
    return low, high


def _number(value: Any) -> Any:
    """A bound as given, or ``None`` for anything that is not a finite number (a plugin's
    metadata is not trusted to be well formed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _range_text(low: Any, high: Any) -> str:
    if low is not None and high is not None:
        return f"{low} to {high}"
    return f"{low} or more" if low is not None else f"at most {high}"


def _check_bounds(value: Any, f: dataclasses.Field[Any], what: str) -> Any:
    """``value`` when it is within the field's bounds (``None`` and non-numbers pass)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    low, high = _bounds(f)
    if (low is not None and value < low) or (high is not None and value > high):
        why = ""
        if f.metadata.get("threads") and high is not None and value > high:
            why = f" (this machine lets a process use {usable_cpus()} CPUs)"
        span = _range_text(low, high)
        raise UsageError(f"{what} is {value}; it takes {span}{why}",
                         f"set {f.name} to a value {'from' if low is not None and high is not None else 'of'} {span}")
    return value


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "|".join(map(str, get_args(annotation)))
    return getattr(annotation, "__name__", str(annotation))
