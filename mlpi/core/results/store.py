"""The results store: an SQLite index of run directories, for listing and comparing runs.

The run directories stay the source of truth; the index only saves reading every
``result.json``. Deleting the file loses nothing: the next ``mlpi results list`` re-indexes
every run directory under the results root.

- Where: ``<results root>/mlpi.sqlite``, else ``--store PATH``, else ``$MLPI_STORE``.
- Concurrency: WAL journal and a busy timeout, so runs finishing together never corrupt it.
- Identity: a run is the same run wherever its directory is copied when its ``run_id``,
  start time, host name, CPU model, model file hash, backend and device all match. The run id
  alone can collide (two machines starting the same model in the same second); a hash of
  the file cannot tell a copy taken mid-run from the finished one.
- Import: a run directory from another machine is copied under the results root (under its
  own name, or ``NAME-2``... when that name is taken; nothing is overwritten), so the results
  root holds everything the store lists. A directory already under the root is indexed in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import MlpiError, ResultError, UsageError
from mlpi.core.results.schema import RunResult, TestResult, load_result
from mlpi.core.results.rundir import RESULT_FILE, create_run_dir
from mlpi.core.engine.scenario import DetailLog, latency_percentiles_ms

#: Version of the tables below; a store written by a newer mlpi is refused, never altered.
STORE_SCHEMA_VERSION = 1
STORE_FILE = "mlpi.sqlite"
STORE_ENV = "MLPI_STORE"
_BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    identity TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    run_id TEXT NOT NULL,
    dir TEXT NOT NULL UNIQUE,
    started_utc TEXT NOT NULL,
    status TEXT,
    system TEXT NOT NULL,
    hostname TEXT,
    cpu TEXT,
    accelerator TEXT,
    model TEXT NOT NULL,
    model_sha256 TEXT,
    backend TEXT NOT NULL,
    backend_version TEXT,
    device TEXT NOT NULL,
    precision TEXT,
    dataset TEXT,
    quick INTEGER,
    submission_valid INTEGER,
    result TEXT NOT NULL,
    latency TEXT NOT NULL,
    indexed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tests (
    identity TEXT NOT NULL,
    position INTEGER NOT NULL,
    scenario TEXT NOT NULL,
    mode TEXT NOT NULL,
    status TEXT,
    metric TEXT,
    value REAL,
    unit TEXT,
    valid INTEGER,
    PRIMARY KEY (identity, position)
);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_utc);
CREATE INDEX IF NOT EXISTS tests_scenario ON tests (scenario);
"""

#: A run directory whose result.json cannot be read or is not shaped as mlpi writes it.
DamagedRun = ResultError


@dataclass(frozen=True)
class RunRecord:
    """One indexed run: the columns lists filter on, and the result.json it was indexed from
    (in the current schema, whatever version the file was)."""

    identity: str
    name: str
    run_id: str
    dir: Path
    started: str
    system: str
    model: str
    backend: str
    device: str
    precision: str | None
    status: str | None
    result: RunResult
    latency: dict[str, dict[str, float]]

    @property
    def date(self) -> str:
        """Start time in the local time zone, to the minute."""
        try:
            return datetime.fromisoformat(self.started).astimezone().strftime("%Y-%m-%d %H:%M")
        except ValueError:
            return "-"


@dataclass
class RunFilter:
    """What ``results list`` and ``compare`` select; repeating a key means any of its values."""

    models: list[str] = field(default_factory=list)
    scenarios: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    systems: list[str] = field(default_factory=list)
    precisions: list[str] = field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None

    def empty(self) -> bool:
        return not any((self.models, self.scenarios, self.backends, self.devices, self.systems,
                        self.precisions, self.since, self.until))


@dataclass(frozen=True)
class ImportOutcome:
    """What happened to one source directory: imported, indexed (already under the root),
    duplicate, damaged, or empty (no run in it)."""

    source: Path
    status: str
    name: str | None = None
    message: str = ""


def store_path(results_root: Path, explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--store PATH``, else ``$MLPI_STORE``, else ``<results root>/mlpi.sqlite``."""
    chosen = explicit or os.environ.get(STORE_ENV)
    return Path(chosen) if chosen else Path(results_root) / STORE_FILE


def parse_date(text: str, *, end_of_day: bool = False) -> datetime:
    """``YYYY-MM-DD`` or an ISO date-time, in local time unless it names a zone. A bare date
    given to ``--until`` means the end of that day."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"'{text}' is not a date", "write dates as YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    if end_of_day and len(text.strip()) == 10:
        value = value.replace(hour=23, minute=59, second=59)
    return value if value.tzinfo else value.astimezone()


def read_result(run_dir: Path) -> RunResult:
    """``run_dir/result.json``, checked against the schema; :class:`DamagedRun` if it does not fit."""
    return load_result(Path(run_dir) / RESULT_FILE)


def run_identity(result: RunResult) -> str:
    """What makes a run the same run wherever it was copied (see the module docstring)."""
    key = [
        result.run_id, result.started, result.system.get("hostname"), result.system.get("host_processor_model_name"),
        result.model.sha256, result.backend.name, result.device,
    ]
    return hashlib.sha256(json.dumps(key).encode("utf-8")).hexdigest()[:32]


def system_label(system: dict[str, Any]) -> str:
    """How a system is named in lists: the user's ``system_name``, else the host name."""
    return str(system.get("system_name") or system.get("hostname") or "-")


def latency_percentiles(run_dir: Path, test: TestResult) -> dict[str, float]:
    """A performance test's latency percentiles in ms: from result.json, or for results
    written before it kept them, from the test's LoadGen detail log; empty when neither has them."""
    if test.mode != "performance":
        return {}
    if test.latency_ms is not None:
        return {k: float(v) for k, v in test.latency_ms.items()}
    log = DetailLog.read(run_dir / test.dir / "mlperf_log_detail.txt")
    return latency_percentiles_ms(log, test.scenario)


class Store:
    """An open results store. Use as a context manager; every write is its own transaction."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise UsageError(f"cannot open results store {self.path}: {exc}", "pass --store PATH somewhere writable") from None
        self._db.row_factory = sqlite3.Row
        try:
            self._prepare()
        except MlpiError:
            self._db.close()
            raise
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise UsageError(
                f"{self.path} is not a usable mlpi results store ({exc})",
                "move it away: the next 'mlpi results list' rebuilds the index from the run directories",
            ) from None

    def _prepare(self) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        self._switch_to_wal()
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version < STORE_SCHEMA_VERSION:
            with self._write():  # another process may be creating it at the same moment: ask again
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version < STORE_SCHEMA_VERSION:
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {STORE_SCHEMA_VERSION}")
        if version > STORE_SCHEMA_VERSION:
            raise UsageError(
                f"results store {self.path} has schema {version}, newer than this mlpi ({STORE_SCHEMA_VERSION})",
                "upgrade mlpi, or pass --store PATH with another file",
            )

    def _switch_to_wal(self) -> None:
        """Turn on WAL. Switching needs a moment alone with the file, and SQLite answers
        "database is locked" at once, without waiting, while another process creates or
        switches the same new store: wait and try again, up to the busy timeout."""
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction, taken up front so concurrent writers wait instead of failing."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- writing -------------------------------------------------------------------------

    def index_run(self, run_dir: Path) -> RunRecord:
        """Add or refresh the run in ``run_dir``; :class:`DamagedRun` when it cannot be read."""
        run_dir = Path(run_dir).resolve()
        result = read_result(run_dir)
        identity = run_identity(result)
        system = result.system
        latency = {t.dir: latency_percentiles(run_dir, t) for t in result.tests}
        row = {
            "identity": identity, "name": run_dir.name, "run_id": result.run_id, "dir": self._stored_dir(run_dir),
            "started_utc": _utc(result.started), "status": result.status, "system": system_label(system),
            "hostname": system.get("hostname"), "cpu": system.get("host_processor_model_name"),
            "accelerator": system.get("accelerator_model_name"), "model": result.model.name,
            "model_sha256": result.model.sha256, "backend": result.backend.name,
            "backend_version": result.backend.version, "device": result.device,
            "precision": result.precision, "dataset": result.dataset.name,
            "quick": _flag(result.settings.quick), "submission_valid": _flag(result.submission_valid),
            "result": json.dumps(result.to_json(), default=str), "latency": json.dumps(latency),
            "indexed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        with self._write():
            self._db.execute("DELETE FROM tests WHERE identity = ? OR identity IN (SELECT identity FROM runs WHERE dir = ?)",
                             (identity, row["dir"]))
            self._db.execute("DELETE FROM runs WHERE identity = ? OR dir = ?", (identity, row["dir"]))
            self._db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
            self._db.executemany(
                "INSERT INTO tests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(identity, i, t.scenario, t.mode, t.status, t.metric, t.value, t.unit, _flag(t.valid))
                 for i, t in enumerate(result.tests)],
            )
        return self._record(self._db.execute("SELECT * FROM runs WHERE identity = ?", (identity,)).fetchone())

    def import_dirs(self, sources: list[Path], results_root: Path) -> list[ImportOutcome]:
        """Import each source (a run directory, or a folder of run directories); one outcome
        per run found, damaged ones included. Never stops at a bad one."""
        outcomes: list[ImportOutcome] = []
        for source in sources:
            source = Path(source)
            if (source / RESULT_FILE).exists():
                outcomes.append(self._import_one(source, results_root))
                continue
            children = sorted(p for p in source.iterdir() if p.is_dir() and _looks_like_run(p)) if source.is_dir() else []
            if not children:
                why = ("does not exist" if not source.exists() else "is not a directory" if not source.is_dir()
                       else "holds no run directory (no result.json in it or its subfolders)")
                outcomes.append(ImportOutcome(source, "empty", message=f"{source} {why}"))
            for child in children:
                outcomes.append(self._import_one(child, results_root))
        return outcomes

    def _import_one(self, source: Path, results_root: Path) -> ImportOutcome:
        try:
            result = read_result(source)
        except DamagedRun as exc:
            return ImportOutcome(source, "damaged", message=exc.message)
        existing = self._by_identity(run_identity(result))
        if existing is not None and existing.dir.exists():
            return ImportOutcome(source, "duplicate", existing.name, f"{source} is run {existing.name}, already in the store")
        root = Path(results_root).resolve()
        if _inside(source.resolve(), root):
            record = self.index_run(source)
            return ImportOutcome(source, "indexed", record.name)
        target = create_run_dir(root, source.resolve().name)
        try:
            shutil.copytree(source, target, dirs_exist_ok=True)
            record = self.index_run(target)
        except BaseException as exc:
            shutil.rmtree(target, ignore_errors=True)
            if isinstance(exc, DamagedRun):
                return ImportOutcome(source, "damaged", message=exc.message)
            if isinstance(exc, OSError):
                return ImportOutcome(source, "damaged", message=f"cannot copy {source}: {exc}")
            raise
        return ImportOutcome(source, "imported", record.name)

    def sync(self, results_root: Path) -> list[str]:
        """Index run directories under ``results_root`` the store does not know yet (runs made
        before the store existed, or whose indexing failed) and refresh those still marked
        running. Returns one warning per directory that could not be indexed."""
        root = Path(results_root)
        if not root.is_dir():
            return []
        known = {row["dir"]: (row["status"], row["identity"]) for row in self._db.execute("SELECT dir, status, identity FROM runs")}
        warnings = []
        for child in sorted(root.iterdir()):
            if child.name.startswith(".") or not (child / RESULT_FILE).is_file():
                continue
            seen = known.get(self._stored_dir(child.resolve()))
            if seen is not None and seen[0] != "running":
                continue
            try:
                result = read_result(child)
                other = self._by_identity(run_identity(result))
                if other is not None and other.dir.resolve() != child.resolve() and other.dir.exists():
                    warnings.append(f"{child} is a second copy of run {other.name}; not indexed twice")
                    continue
                self.index_run(child)
            except DamagedRun as exc:
                warnings.append(f"{exc.message}; not indexed")
        return warnings

    # -- reading -------------------------------------------------------------------------

    def runs(self, selection: RunFilter | None = None) -> list[RunRecord]:
        """Runs matching ``selection``, oldest first."""
        selection = selection or RunFilter()
        where: list[str] = []
        args: list[Any] = []
        for column, values in (("model", selection.models), ("backend", selection.backends),
                               ("precision", selection.precisions)):
            if values:
                where.append(f"lower({column}) IN ({', '.join('?' * len(values))})")
                args.extend(v.lower() for v in values)
        if selection.devices:
            where.append("(" + " OR ".join("lower(device) = ? OR lower(device) LIKE ?" for _ in selection.devices) + ")")
            for device in selection.devices:
                args.extend([device.lower(), f"{device.lower()}:%"])
        if selection.systems:
            columns = ("system", "hostname", "cpu", "accelerator")
            where.append("(" + " OR ".join(f"instr(lower(coalesce({c}, '')), ?) > 0" for _ in selection.systems for c in columns) + ")")
            for system in selection.systems:
                args.extend([system.lower()] * len(columns))
        if selection.scenarios:
            where.append(f"identity IN (SELECT identity FROM tests WHERE lower(scenario) IN ({', '.join('?' * len(selection.scenarios))}))")
            args.extend(s.lower() for s in selection.scenarios)
        if selection.since is not None:
            where.append("started_utc >= ?")
            args.append(_utc_text(selection.since))
        if selection.until is not None:
            where.append("started_utc <= ?")
            args.append(_utc_text(selection.until))
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY started_utc, name"
        return [self._record(row) for row in self._db.execute(sql, args)]

    def find(self, ref: str) -> RunRecord:
        """The run named by a directory name, run id, or an unambiguous prefix of either."""
        rows = self._db.execute("SELECT * FROM runs WHERE name = ? OR run_id = ?", (ref, ref)).fetchall()
        if not rows:
            rows = self._db.execute(
                "SELECT * FROM runs WHERE substr(name, 1, ?) = ? OR substr(run_id, 1, ?) = ?", (len(ref), ref, len(ref), ref)
            ).fetchall()
        if len(rows) == 1:
            return self._record(rows[0])
        if not rows:
            raise UsageError(f"no run '{ref}' in the results store {self.path}",
                             "see 'mlpi results list' for run ids, or 'mlpi results import DIR' to add one")
        names = sorted(row["name"] for row in rows)
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise UsageError(f"'{ref}' matches {len(names)} runs: {shown}", "give more of the run id")

    def distinct(self, column: str) -> list[str]:
        """Values a column takes (for hints that say what there is to choose from)."""
        if column not in ("model", "backend", "device", "system", "precision"):
            raise ValueError(column)
        return [r[0] for r in self._db.execute(f"SELECT DISTINCT {column} FROM runs WHERE {column} IS NOT NULL ORDER BY 1")]

    def _by_identity(self, identity: str) -> RunRecord | None:
        row = self._db.execute("SELECT * FROM runs WHERE identity = ?", (identity,)).fetchone()
        return self._record(row) if row is not None else None

    def _stored_dir(self, run_dir: Path) -> str:
        """Paths under the store's folder are kept relative, so a results root can be moved whole."""
        base = self.path.resolve().parent
        return os.path.relpath(run_dir, base) if _inside(run_dir, base) else str(run_dir)

    def _record(self, row: sqlite3.Row) -> RunRecord:
        stored = Path(row["dir"])
        return RunRecord(
            identity=row["identity"], name=row["name"], run_id=row["run_id"],
            dir=stored if stored.is_absolute() else self.path.resolve().parent / stored,
            started=row["started_utc"], system=row["system"], model=row["model"], backend=row["backend"],
            device=row["device"], precision=row["precision"], status=row["status"],
            result=RunResult.from_json(json.loads(row["result"]), f"run {row['name']} in the results store {self.path}"),
            latency=json.loads(row["latency"]),
        )


def record_run(run_dir: Path, results_root: Path) -> None:
    """Index a run that just finished; a failure is a warning on stderr, never the run's failure."""
    try:
        with Store(store_path(results_root)) as store:
            store.index_run(run_dir)
    except Exception as exc:  # noqa: BLE001 - the run is on disk; the index can be rebuilt later
        message = exc.message if isinstance(exc, MlpiError) else f"{type(exc).__name__}: {exc}"
        print(f"mlpi: warning: {run_dir} was not added to the results store ({message}); "
              "'mlpi results list' adds it later", file=sys.stderr)


def _looks_like_run(path: Path) -> bool:
    return (path / RESULT_FILE).exists() or (path / "plan.json").exists()


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _flag(value: Any) -> int | None:
    return None if value is None else int(bool(value))


def _utc(stamp: Any) -> str:
    """result.json's local ``started`` time as sortable UTC text; ``""`` when it has none."""
    if not isinstance(stamp, str):
        return ""
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"):
        try:
            value = datetime.strptime(stamp, fmt)
        except ValueError:
            continue
        return _utc_text(value if value.tzinfo else value.astimezone())
    return ""


def _utc_text(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


__all__ = [
    "STORE_ENV", "STORE_FILE", "STORE_SCHEMA_VERSION", "DamagedRun", "ImportOutcome", "RunFilter", "RunRecord",
    "Store", "latency_percentiles", "parse_date", "read_result", "record_run", "run_identity", "store_path",
    "system_label",
]
