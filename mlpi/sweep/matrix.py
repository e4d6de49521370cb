"""The sweep matrix: axes and shared run settings from flags or a TOML file, expanded into cells.

A cell is one ``mlpi run`` with one backend, device, batch size, instance count and
scenario. Everything that can be checked without running anything (names, numbers, option
keys, which backend runs which device kind) is checked for every cell before the first one
runs, so a misspelt value fails the whole sweep at once.

The TOML form (paths in it are relative to the file's folder)::

    [matrix]                      # every combination of these lists is one cell
    backend = ["onnxruntime", "openvino"]   # leave out: each device's default backend
    device = ["cpu"]                        # cpu, cuda:1, qaic:0-3 ...
    batch_size = [1, 8]                     # "auto": the backend's preference
    instances = [1, 2]
    scenario = ["Offline", "Server"]        # or ["all"]

    [run]                         # the same for every cell; mlpi run's options
    model = "resnet50"
    quick = true

    [options.onnxruntime]         # backend options for that backend's cells only
    intra_op_threads = 2

    [[exclude]]                   # combinations to leave out
    backend = "openvino"
    batch_size = 8
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mlpi.core.contract.device import Device
from mlpi.core.contract.errors import DeviceError, UsageError, suggest
from mlpi.core.engine.planning import RunRequest, parse_modes, parse_scenarios
from mlpi.core.plugins.config import PluginsConfig
from mlpi.core.plugins.options import build_options, parse_assignments
from mlpi.core.plugins.registry import Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

AXES = ("backend", "device", "batch_size", "instances", "scenario")
TABLES = ("matrix", "run", "options", "exclude")

#: ``[run]`` keys of a matrix file: the RunRequest field each sets and the TOML types it takes.
RUN_KEYS: dict[str, tuple[str, tuple[type, ...]]] = {
    "model": ("model", (str,)),
    "model_path": ("model_path", (str,)),
    "dataset": ("dataset", (str,)),
    "dataset_path": ("dataset_path", (str,)),
    "count": ("dataset_count", (int,)),
    "mode": ("mode", (str,)),
    "precision": ("precision", (str,)),
    "target_qps": ("target_qps", (int, float)),
    "quick": ("quick", (bool,)),
    "duration": ("duration_s", (int, float)),
    "batch_timeout_ms": ("batch_timeout_ms", (int, float)),
    "seed": ("seed", (int,)),
    "weights": ("weights", (str,)),
    "plugins": ("plugins_file", (str,)),
    "options": ("options", (dict,)),
}
_PATH_FIELDS = ("model_path", "dataset_path", "plugins_file")
_UNIT_LIST = re.compile(r"^\d+(-\d+)?$")


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: what differs between the runs of a sweep."""

    backend: str
    device: str
    batch_size: int | None
    instances: int
    scenario: str

    @property
    def label(self) -> str:
        batch = "auto" if self.batch_size is None else str(self.batch_size)
        return f"{self.backend} {self.device} batch {batch} x{self.instances} {self.scenario}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cell:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass
class SweepSpec:
    """What the user asked for: axis values (absent: the default), RunRequest fields shared
    by every cell, backend options per backend, and combinations to leave out."""

    axes: dict[str, list[Any]] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    exclude: list[dict[str, list[Any]]] = field(default_factory=list)

    def overridden_by(self, other: SweepSpec) -> SweepSpec:
        """This spec with everything ``other`` gives put over it (flags over a file)."""
        options = {k: dict(v) for k, v in self.backend_options.items()}
        for backend, values in other.backend_options.items():
            options.setdefault(backend, {}).update(values)
        return SweepSpec({**self.axes, **other.axes}, {**self.run, **other.run}, options, self.exclude + other.exclude)

    def to_json(self) -> dict[str, Any]:
        return {"matrix": self.axes, "run": self.run, "options": self.backend_options, "exclude": self.exclude}


@dataclass
class Matrix:
    """The checked cells of a sweep, each with the full RunRequest it runs."""

    cells: list[Cell]
    requests: list[dict[str, Any]]
    notes: list[str]


# ------------------------------------------------------------------ reading


def spec_from_flags(axes: dict[str, tuple[str, ...]], run: dict[str, Any], options: tuple[str, ...]) -> SweepSpec:
    """Axes as the CLI gives them (comma lists, repeatable flags), shared settings, ``-o`` pairs.

    ``-o KEY=VALUE`` applies to every cell; ``-o BACKEND.KEY=VALUE`` to that backend's only.
    """
    spec = SweepSpec()
    for axis, values in axes.items():
        if values:
            flag = "--" + axis.replace("_", "-")
            spec.axes[axis] = _parse_axis(axis, _split_flag(axis, values, flag), flag)
    spec.run = {k: v for k, v in run.items() if v is not None}
    for name in _PATH_FIELDS:
        if spec.run.get(name):
            spec.run[name] = str(Path(spec.run[name]).expanduser().resolve())
    common: dict[str, Any] = {}
    for key, value in parse_assignments(options).items():
        backend, dot, name = key.partition(".")
        if dot:
            spec.backend_options.setdefault(backend, {})[name] = value
        else:
            common[key] = value
    if common:
        spec.run["options"] = common
    return spec


def spec_from_toml(path: Path) -> SweepSpec:
    """Read a matrix file; every unknown key or badly typed value names itself and what is valid."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"matrix file {path} does not exist", "pass --matrix FILE.toml with an existing file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read matrix file {path}: {getattr(exc, 'strerror', None) or exc}", "check the path given by --matrix") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source} is not valid TOML: {exc}", "fix the line it names") from None
    for key in data:
        if key not in TABLES:
            raise UsageError(f"unknown table '{key}' in {source}", f"{suggest(key, TABLES, listing=False)}valid tables: {', '.join(TABLES)}")
    spec = SweepSpec()
    for axis, raw in _table(data, "matrix", source).items():
        where = f"[matrix] {axis} in {source}"
        if axis not in AXES:
            raise UsageError(f"unknown matrix key '{axis}' in {source}", f"{suggest(axis, AXES, listing=False)}valid keys: {', '.join(AXES)}")
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            raise UsageError(f"{where} is an empty list", f"give at least one value, or leave {axis} out for the default")
        spec.axes[axis] = _parse_axis(axis, items, where)
    spec.run = _run_table(_table(data, "run", source), source, path.parent)
    for backend, values in _table(data, "options", source).items():
        if not isinstance(values, dict):
            raise UsageError(f"'options.{backend}' in {source} is not a table", f"write [options.{backend}] with key = value lines")
        spec.backend_options[backend] = dict(values)
    rules = data.get("exclude", [])
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise UsageError(f"'exclude' in {source} is not a list of tables", "write each combination to leave out as an [[exclude]] table")
    for number, rule in enumerate(rules, 1):
        parsed: dict[str, list[Any]] = {}
        for axis, raw in rule.items():
            if axis not in AXES:
                raise UsageError(
                    f"unknown key '{axis}' in [[exclude]] #{number} of {source}",
                    f"{suggest(axis, AXES, listing=False)}valid keys: {', '.join(AXES)}",
                )
            parsed[axis] = _parse_axis(axis, raw if isinstance(raw, list) else [raw], f"[[exclude]] #{number} {axis} in {source}")
        spec.exclude.append(parsed)
    return spec


def _table(data: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UsageError(f"'{key}' in {source} must be a table", f"write it as [{key}]")
    return value


def _run_table(table: dict[str, Any], source: str, base: Path) -> dict[str, Any]:
    run: dict[str, Any] = {}
    for key, value in table.items():
        if key not in RUN_KEYS:
            raise UsageError(
                f"unknown [run] key '{key}' in {source}",
                f"{suggest(key, list(RUN_KEYS), listing=False)}valid keys: {', '.join(RUN_KEYS)}",
            )
        name, types = RUN_KEYS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            wanted = "a number" if float in types else {str: "a string", int: "a whole number", bool: "true or false", dict: "a table"}[types[0]]
            raise UsageError(f"[run] {key} in {source} is {value!r}", f"{key} must be {wanted}")
        if name in _PATH_FIELDS:
            value = str((base / Path(value).expanduser()).resolve())
        run[name] = float(value) if float in types else value
    return run


def _split_flag(axis: str, values: tuple[str, ...], flag: str) -> list[str]:
    """Comma lists from repeatable flags; for devices ``cuda:0,1`` stays one device."""
    items: list[str] = []
    for value in values:
        for piece in value.split(","):
            piece = piece.strip()
            if axis == "device" and items and _UNIT_LIST.match(piece) and ":" in items[-1]:
                items[-1] += "," + piece
            elif not piece:
                raise UsageError(f"{flag} '{value}' has an empty item", f"write a comma-separated list, e.g. {flag} {_EXAMPLES[axis]}")
            else:
                items.append(piece)
    return items


_EXAMPLES = {"backend": "onnxruntime,openvino", "device": "cpu,cuda:0", "batch_size": "1,8,auto",
             "instances": "1,2", "scenario": "Offline,Server"}


def _parse_axis(axis: str, items: list[Any], where: str) -> list[Any]:
    """Normalised, de-duplicated values of one axis; a bad one names ``where`` it came from."""
    out: list[Any] = []
    for item in items:
        try:
            if axis == "backend":
                if not isinstance(item, str) or not item.strip():
                    raise UsageError(f"{item!r} is not a backend name", "give names that `mlpi backends` lists")
                out.append(item.strip())
            elif axis == "device":
                if not isinstance(item, str):
                    raise UsageError(f"{item!r} is not a device", 'write devices as strings, e.g. "cpu" or "cuda:1"')
                out.append(str(Device.parse(item)))
            elif axis == "scenario":
                if not isinstance(item, str):
                    raise UsageError(f"{item!r} is not a scenario", "write scenario names, e.g. Offline")
                out.extend(parse_scenarios([item]))
            else:
                out.append(_count(axis, item))
        except UsageError as exc:
            raise UsageError(f"{where}: {exc.message}", exc.hint) from None
    return list(dict.fromkeys(out))


def _count(axis: str, item: Any) -> int | None:
    if axis == "batch_size" and isinstance(item, str) and item.strip().lower() == "auto":
        return None
    if isinstance(item, str) and item.strip().isdigit():
        item = int(item)
    if isinstance(item, bool) or not isinstance(item, int) or item < 1:
        extra = ", or auto for the backend's preference" if axis == "batch_size" else ""
        raise UsageError(f"{axis} {item!r} is not a whole number of 1 or more", f"give numbers like {_EXAMPLES[axis]}{extra}")
    return item


# ------------------------------------------------------------------ expanding and checking


def build_matrix(spec: SweepSpec) -> Matrix:
    """Expand ``spec`` into cells and check them all; raise the first problem found."""
    config = PluginsConfig.load(spec.run.get("plugins_file"))
    if len(config.sources) > 1:  # record the user file found, so every cell (and node) uses it
        spec.run["plugins_file"] = str(Path(config.sources[-1]).resolve())
    registry = Registry(config)
    cells, notes = _expand(spec, registry)
    scoped = _check(cells, spec, registry)
    requests = [_request(spec, scoped, cell) for cell in cells]
    return Matrix(cells, requests, notes)


def _expand(spec: SweepSpec, registry: Registry) -> tuple[list[Cell], list[str]]:
    devices = spec.axes.get("device") or ["cpu"]
    backends: list[str | None] = list(spec.axes.get("backend") or [None])
    rest = [spec.axes.get("batch_size") or [None], spec.axes.get("instances") or [1], spec.axes.get("scenario") or ["Offline"]]
    exclude = [{k: [_canonical(registry, v) if k == "backend" else v for v in vs] for k, vs in rule.items()} for rule in spec.exclude]
    cells: list[Cell] = []
    skipped: list[str] = []
    used = [0] * len(exclude)
    for wanted in backends:
        for device in devices:
            kind = Device.parse(device).kind
            name = _canonical(registry, wanted or registry.default_backend(kind))
            backend = registry.backend(name)
            if kind not in backend.device_kinds:
                skipped.append(f"{name} on {device} (it runs on {', '.join(backend.device_kinds)})")
                continue
            for batch, instances, scenario in itertools.product(*rest):
                cell = Cell(name, device, batch, instances, scenario)
                hits = [i for i, rule in enumerate(exclude) if all(getattr(cell, k) in vs for k, vs in rule.items())]
                for i in hits:
                    used[i] += 1
                if not hits and cell not in cells:
                    cells.append(cell)
    notes = [f"skipped {s}" for s in skipped]
    notes += [f"[[exclude]] #{i + 1} matches no cell" for i, n in enumerate(used) if n == 0]
    if not cells:
        raise DeviceError(
            "no cell of the sweep can run" + (f": {'; '.join(skipped)}" if skipped else " (every combination is excluded)"),
            "pair each backend with a device kind it runs on; `mlpi backends` shows which backend runs where",
        )
    return cells, notes


def _canonical(registry: Registry, name: str) -> str:
    return registry.resolve("backends", name).name


def _check(cells: list[Cell], spec: SweepSpec, registry: Registry) -> dict[str, dict[str, Any]]:
    """The checks ``build_plan`` would make that need no runtime, model or device; returns the
    per-backend options keyed by canonical backend name."""
    run = spec.run
    parse_modes(run.get("mode", "performance"))
    _check_numbers(run)
    if run.get("weights") not in (None, "official", "random"):
        raise UsageError(f"unknown weights '{run['weights']}'", "choose official or random")
    names = list(dict.fromkeys(c.backend for c in cells))
    scoped: dict[str, dict[str, Any]] = {}
    for key, values in spec.backend_options.items():
        target = _canonical(registry, key)
        if target not in names:
            raise UsageError(
                f"options are given for backend '{key}', but no cell of the sweep runs it",
                f"the sweep runs: {', '.join(names)}; add {key} to the backend list or drop its options",
            )
        scoped.setdefault(target, {}).update(values)
    common = run.get("options") or {}
    for name in names:
        backend = registry.backend(name)
        precision = run.get("precision")
        if precision is not None and precision not in backend.precisions:
            raise UsageError(f"backend '{name}' cannot run precision '{precision}'", f"it runs: {', '.join(backend.precisions)}")
        layers: list[tuple[str, Any]] = list(registry.backend_options(name))
        try:
            build_options(backend.Options, [*layers, ("--option", common)], name)
        except UsageError as exc:
            raise UsageError(exc.message, f"{exc.hint}; to give an option to one backend only, write -o {name}.KEY=VALUE or [options.{name}] in the matrix file") from None
        build_options(backend.Options, [*layers, ("--option", common), (f"options for {name}", scoped.get(name, {}))], name)
    return scoped


def _check_numbers(run: dict[str, Any]) -> None:
    seed = run.get("seed")
    if seed is not None and seed < 0:
        raise UsageError(f"seed must be 0 or more, not {seed}", "pass --seed 0 or a positive number")
    count = run.get("dataset_count")
    if count is not None and count < 1:
        raise UsageError(f"count must be at least 1, not {count}", "pass --count 1 or more")
    for name, flag in (("target_qps", "--target-qps"), ("duration_s", "--duration"), ("batch_timeout_ms", "--batch-timeout-ms")):
        value = run.get(name)
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be positive, not {value}", f"pass {flag} with a value above 0")


def _request(spec: SweepSpec, scoped: dict[str, dict[str, Any]], cell: Cell) -> dict[str, Any]:
    """The full RunRequest of one cell, as JSON (it is saved in the sweep state)."""
    values = dict(spec.run)
    values["options"] = {**(spec.run.get("options") or {}), **scoped.get(cell.backend, {})}
    values.update(backend=cell.backend, device=cell.device, batch_size=cell.batch_size,
                  instances=cell.instances, scenarios=[cell.scenario])
    return asdict(RunRequest(**values))


__all__ = ["AXES", "Cell", "Matrix", "SweepSpec", "build_matrix", "spec_from_flags", "spec_from_toml"]
