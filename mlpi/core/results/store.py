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
  The copy is made in a hidden sibling (``.import-...``) and renamed into place, so a refused or
  failed import leaves nothing under the root. Only the run's own regular files and folders are
  copied: a run holding a symbolic link (``result.json`` or any other), a FIFO, socket or device,
  or more than :data:`IMPORT_MAX_BYTES` of files (sparse ones counted at their full size) is
  refused whole, with one line saying why, and the other runs are still imported. Nothing a
  link points to is ever read, and no special file is opened.
- Freshness: each indexed run remembers its result.json's size, mtime and inode; ``results
  list``, ``show`` and ``compare`` re-read a file that changed (or that an older mlpi indexed),
  so a fixed file replaces the damaged one and a file damaged since is dropped from the index,
  with a warning naming it. A run whose result.json does not fit the schema is never indexed;
  a stored copy that no longer reads is skipped, with a warning, and dropped.
- Abandoned runs: a run still ``running`` whose result.json names an ``owner`` on this host
  (host name and machine id, pid, process start, boot, pid namespace) that is gone — the pid
  ended, or is another process now, or the machine restarted — reads as :data:`ABANDONED`, with
  the reason in :attr:`RunRecord.abandoned`; its file is not rewritten. A run from another
  host, another container, or an older mlpi (no owner) stays ``running``: that cannot be told
  from here.
- Writing: a store SQLite cannot write (its disk full, read-only) is one :class:`MlpiError`
  naming it; a run that could not be indexed is indexed by the next ``results list``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlpi.core.contract.errors import MlpiError, ResultError, UsageError
from mlpi.core.engine.scenario import DetailLog, latency_percentiles_ms
from mlpi.core.results.rundir import RESULT_FILE, create_run_dir, owner_gone
from mlpi.core.results.schema import RunResult, TestResult, result_from_text

#: The status ``results list``, ``show`` and ``compare`` give a run left ``running`` by a
#: process that is gone (:func:`mlpi.core.results.rundir.owner_gone`). It is never written
#: into result.json: what the run's own process wrote stays as it is.
ABANDONED = "abandoned"
#: Version of the tables below; a store written by a newer mlpi is refused, never altered.
STORE_SCHEMA_VERSION = 1
STORE_FILE = "mlpi.sqlite"
STORE_ENV = "MLPI_STORE"
_BUSY_TIMEOUT_S = 30.0
#: The most an imported run directory may hold, all its files together (a sparse file counts
#: at its full size: the copy is dense). Real runs hold LoadGen logs, a few MB per test, and
#: accuracy logs: tens of MB for ResNet50 or BERT, about 3 GB for a full 3D-UNet accuracy run.
#: A bigger run is refused; copy it under the results root yourself and import it from there
#: (a run already under the root is indexed in place, nothing copied).
IMPORT_MAX_BYTES = 16 * 2**30
#: The largest result.json read: mlpi writes a few kB (tens with many tests).
RESULT_MAX_BYTES = 64 * 2**20

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
    indexed_at TEXT NOT NULL,
    result_stat TEXT
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

#: SQLite's primary result codes for a store that cannot be written: SQLITE_READONLY,
#: SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN (Python before 3.11 only gives the message).
_UNWRITABLE_CODES = frozenset({8, 10, 13, 14})
_UNWRITABLE_WORDS = ("disk is full", "readonly database", "disk i/o error", "unable to open database")

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
    #: Why a ``running`` run will never finish: the process writing it is gone (its status,
    #: and its result's, then read ``abandoned``); None otherwise.
    abandoned: str | None = None

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
    duplicate, damaged (unreadable, or refused: links, special files, too big), or empty
    (no run in it)."""

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
    """``run_dir/result.json``, checked against the schema; :class:`DamagedRun` if it does not
    fit, is a symbolic link or not a regular file (never followed, never opened for reading)."""
    return _read_checked(Path(run_dir))[0]


def _read_checked(run_dir: Path) -> tuple[RunResult, str]:
    """The run's result and its file's :func:`_stat_key`, taken from the file that was read."""
    path = run_dir / RESULT_FILE
    try:  # O_NONBLOCK: a FIFO named result.json must not hang the reader until a writer comes
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise DamagedRun(f"{path} is missing", "copy the whole run directory again") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DamagedRun(f"{path} is a symbolic link, not followed; a run's result.json must be its own file",
                             "replace the link with a copy of the file it points to") from None
        raise DamagedRun(f"cannot read {path}: {exc.strerror}", "check the file's permissions or copy it again") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DamagedRun(f"{path} is {_kind(info.st_mode)}, not a regular file", "copy the run directory again")
        if info.st_size > RESULT_MAX_BYTES:
            raise DamagedRun(f"{path} is {_size(info.st_size)}, more than a result.json holds ({_size(RESULT_MAX_BYTES)})",
                             "copy the run directory again")
        try:
            text = handle.read(RESULT_MAX_BYTES + 1).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DamagedRun(f"cannot read {path}: {exc}", "check the file's permissions or copy it again") from None
    return result_from_text(text, str(path)), _stat_key(info)


def _stat_key(info: os.stat_result) -> str:
    """What tells a changed result.json from the one indexed: size, mtime and inode (a
    rewrite by rename is a new inode even within one mtime tick)."""
    return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"


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
    path = run_dir / test.dir / "mlperf_log_detail.txt"
    try:
        regular = stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        regular = False
    if not regular:  # missing, or a link or FIFO: nothing to read (a FIFO would block)
        return {}
    return latency_percentiles_ms(DetailLog.read(path), test.scenario)


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
            unwritable = self._unwritable(exc)
            if unwritable is not None:
                raise unwritable from None
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
        if not self._has_stat_column():
            # A store made before runs remembered their file's stat: one nullable column more,
            # which older mlpi ignore (they name their columns); their rows are re-read once.
            with self._write():
                if not self._has_stat_column():
                    self._db.execute("ALTER TABLE runs ADD COLUMN result_stat TEXT")

    def _has_stat_column(self) -> bool:
        return any(row[1] == "result_stat" for row in self._db.execute("PRAGMA table_info(runs)"))

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

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction, taken up front so concurrent writers wait instead of failing.
        A store that cannot be written (its disk full, read-only) is one :class:`MlpiError`."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back itself (a full disk)
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            unwritable = self._unwritable(exc)
            if unwritable is None:
                raise
            with contextlib.suppress(sqlite3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            raise unwritable from None

    def _unwritable(self, exc: sqlite3.Error) -> MlpiError | None:
        """The error for a store SQLite could not write (disk full, read-only, I/O error, cannot
        open its journal); None for any other failure."""
        code = getattr(exc, "sqlite_errorcode", None)
        text = str(exc).lower()
        if (code is not None and code & 0xFF in _UNWRITABLE_CODES) or any(words in text for words in _UNWRITABLE_WORDS):
            return MlpiError(f"cannot write the results store {self.path}: {exc}",
                             "free some disk space, or pass --store FILE somewhere writable; the run directories keep "
                             "every result and 'mlpi results list' indexes them again")
        return None

    # -- writing -------------------------------------------------------------------------

    def index_run(self, run_dir: Path) -> RunRecord:
        """Add or refresh the run in ``run_dir``; :class:`DamagedRun` when it cannot be read
        (the index then keeps no copy of it)."""
        run_dir = Path(run_dir).resolve()
        try:
            result, seen = _read_checked(run_dir)
        except DamagedRun:
            self._forget(self._stored_dir(run_dir))
            raise
        return self._index(run_dir, result, seen)

    def _index(self, run_dir: Path, result: RunResult, seen: str) -> RunRecord:
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
            "indexed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "result_stat": seen,
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

    def _forget(self, stored_dir: str) -> None:
        """Drop the run indexed from ``stored_dir`` (its file no longer reads)."""
        with self._write():
            self._db.execute("DELETE FROM tests WHERE identity IN (SELECT identity FROM runs WHERE dir = ?)", (stored_dir,))
            self._db.execute("DELETE FROM runs WHERE dir = ?", (stored_dir,))

    def import_dirs(self, sources: list[Path], results_root: Path) -> list[ImportOutcome]:
        """Import each source (a run directory, or a folder of run directories); one outcome
        per run found, damaged ones included. Never stops at a bad one."""
        outcomes: list[ImportOutcome] = []
        for source in sources:
            source = Path(source)  # named by the user: followed if it is a link, unlike anything inside it
            if os.path.lexists(source / RESULT_FILE):
                outcomes.append(self._import_one(source, results_root))
                continue
            children = sorted(p for p in source.iterdir() if p.is_dir() and _looks_like_run(p)) if source.is_dir() else []
            if not children:
                why = ("does not exist" if not source.exists() else "is not a directory" if not source.is_dir()
                       else "holds no run directory (no result.json in it or its subfolders)")
                outcomes.append(ImportOutcome(source, "empty", message=f"{source} {why}"))
            for child in children:
                if child.is_symlink():
                    outcomes.append(ImportOutcome(child, "damaged", message=(
                        f"{child} is a symbolic link to a run directory, not followed (import {child.resolve()} by its own path)")))
                else:
                    outcomes.append(self._import_one(child, results_root))
        return outcomes

    def _import_one(self, source: Path, results_root: Path) -> ImportOutcome:
        try:
            result = read_result(source)
        except DamagedRun as exc:
            return ImportOutcome(source, "damaged", message=exc.message)
        existing = self._indexed(run_identity(result))
        if existing is not None and existing[1].exists():
            name = existing[0]
            return ImportOutcome(source, "duplicate", name, f"{source} is run {name}, already in the store")
        root = Path(results_root).resolve()
        real = source.resolve()
        if _inside(real, root):
            try:
                record = self.index_run(source)
            except DamagedRun as exc:
                return ImportOutcome(source, "damaged", message=exc.message)
            return ImportOutcome(source, "indexed", record.name)
        copy = _RunCopy(real, IMPORT_MAX_BYTES, shown=source)
        try:
            copy.run(None)  # refused before a byte is copied
        except DamagedRun as exc:
            return ImportOutcome(source, "damaged", message=exc.message)
        except OSError as exc:
            return ImportOutcome(source, "damaged", message=f"cannot read {source}: {exc}")
        staging = target = None
        try:  # copied into a hidden sibling (sync skips dot names), renamed into place when whole
            staging = create_run_dir(root, f".import-{real.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            copy.run(staging)  # checked again as it copies: the source may change meanwhile
            target = create_run_dir(root, real.name)
            os.rename(staging, target)  # onto the empty directory that reserved the name
            record = self.index_run(target)
        except BaseException as exc:
            for made in (staging, target):
                if made is not None:
                    _discard(made)
            if isinstance(exc, DamagedRun):
                return ImportOutcome(source, "damaged", message=exc.message)
            if isinstance(exc, OSError):
                return ImportOutcome(source, "damaged", message=f"cannot copy {source}: {exc}")
            raise
        return ImportOutcome(source, "imported", record.name)

    def sync(self, results_root: Path) -> list[str]:
        """Index run directories under ``results_root`` the store does not know yet (runs made
        before the store existed, or whose indexing failed) and re-read those whose result.json
        changed since it was indexed (a running run, a file fixed or damaged by hand; rows an
        older mlpi wrote have no stat and are re-read once). A file that no longer reads is
        dropped from the index. Returns one warning per directory that could not be indexed."""
        root = Path(results_root)
        if not root.is_dir():
            return []
        warnings: list[str] = []
        known = {row["dir"]: row["result_stat"] for row in self._db.execute("SELECT dir, result_stat FROM runs")}
        for child in sorted(root.iterdir()):
            result_file = child / RESULT_FILE
            if child.name.startswith(".") or not os.path.lexists(result_file):
                continue
            stored = self._stored_dir(child.resolve())
            try:
                current = _stat_key(os.lstat(result_file))
            except OSError:
                continue
            if stored in known and known[stored] == current:
                continue  # indexed from this very file
            try:
                result, seen = _read_checked(child)
                other = self._indexed(run_identity(result))
                if other is not None and other[1].resolve() != child.resolve() and other[1].exists():
                    warnings.append(f"{child} is a second copy of run {other[0]}; not indexed twice")
                    continue
                self._index(child.resolve(), result, seen)
            except DamagedRun as exc:
                if stored in known:
                    self._forget(stored)
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
        return self._records(self._db.execute(sql, args).fetchall())

    def find(self, ref: str) -> RunRecord:
        """The run named by a directory name, run id, or an unambiguous prefix of either."""
        rows = self._db.execute("SELECT * FROM runs WHERE name = ? OR run_id = ?", (ref, ref)).fetchall()
        if not rows:
            rows = self._db.execute(
                "SELECT * FROM runs WHERE substr(name, 1, ?) = ? OR substr(run_id, 1, ?) = ?", (len(ref), ref, len(ref), ref)
            ).fetchall()
        records = self._records(rows)  # a run whose stored copy does not read is skipped, with a warning
        if len(records) == 1:
            return records[0]
        if not records:
            raise UsageError(f"no run '{ref}' in the results store {self.path}",
                             "see 'mlpi results list' for run ids, or 'mlpi results import DIR' to add one")
        names = sorted(record.name for record in records)
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise UsageError(f"'{ref}' matches {len(names)} runs: {shown}", "give more of the run id")

    def distinct(self, column: str) -> list[str]:
        """Values a column takes (for hints that say what there is to choose from)."""
        if column not in ("model", "backend", "device", "system", "precision"):
            raise ValueError(column)
        return [r[0] for r in self._db.execute(f"SELECT DISTINCT {column} FROM runs WHERE {column} IS NOT NULL ORDER BY 1")]

    def _indexed(self, identity: str) -> tuple[str, Path] | None:
        """The name and directory of the run indexed under ``identity``, if any."""
        row = self._db.execute("SELECT name, dir FROM runs WHERE identity = ?", (identity,)).fetchone()
        return (row["name"], self._run_dir(row["dir"])) if row is not None else None

    def _records(self, rows: list[sqlite3.Row]) -> list[RunRecord]:
        """The rows as records. A row whose stored copy does not read in this schema (written
        by an mlpi that checked less, or edited) is skipped with a warning on stderr and dropped
        from the index: the next scan of the results root reads its file again."""
        records = []
        for row in rows:
            file = self._run_dir(row["dir"]) / RESULT_FILE
            try:
                records.append(self._record(row, str(file)))
            except ResultError as exc:
                problem = f"{exc.message}; skipped and dropped from the results store, indexed again once fixed"
            except (ValueError, TypeError) as exc:
                problem = f"the results store's copy of {file} is damaged ({exc}); skipped and dropped from the store"
            else:
                continue
            # The CLI prints the warnings sync() returns; these arise later, while it reads.
            print(f"warning: {_printable(problem)}", file=sys.stderr)
            self._forget(row["dir"])
        return records

    def _run_dir(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() else self.path.resolve().parent / path

    def _stored_dir(self, run_dir: Path) -> str:
        """Paths under the store's folder are kept relative, so a results root can be moved whole."""
        base = self.path.resolve().parent
        return os.path.relpath(run_dir, base) if _inside(run_dir, base) else str(run_dir)

    def _record(self, row: sqlite3.Row, source: str | None = None) -> RunRecord:
        latency = json.loads(row["latency"])
        if not isinstance(latency, dict):
            raise TypeError("its latency column is not a JSON object")
        result = RunResult.from_json(json.loads(row["result"]), source or f"run {row['name']} in the results store {self.path}")
        status = row["status"]
        gone = owner_gone(result.extra.get("owner")) if result.status == "running" else None
        if gone is not None:  # shown so, never written: the file stays as its writer left it
            result = replace(result, status=ABANDONED)
            status = ABANDONED
        return RunRecord(
            identity=row["identity"], name=row["name"], run_id=row["run_id"], dir=self._run_dir(row["dir"]),
            started=row["started_utc"], system=row["system"], model=row["model"], backend=row["backend"],
            device=row["device"], precision=row["precision"], status=status, result=result, latency=latency,
            abandoned=gone,
        )


def record_run(run_dir: Path, results_root: Path) -> bool:
    """Index a run that just finished; a failure is a warning on stderr, never the run's
    failure. Whether it was indexed."""
    try:
        with Store(store_path(results_root)) as store:
            store.index_run(run_dir)
    except Exception as exc:  # noqa: BLE001 - the run is on disk; the index can be rebuilt later
        message = exc.message if isinstance(exc, MlpiError) else f"{type(exc).__name__}: {exc}"
        print(f"mlpi: warning: {run_dir} was not added to the results store ({message}); "
              "'mlpi results list' adds it later", file=sys.stderr)
        return False
    return True


def _looks_like_run(path: Path) -> bool:
    return os.path.lexists(path / RESULT_FILE) or os.path.lexists(path / "plan.json")


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class _RunCopy:
    """Copies a run directory's own regular files and folders, with their modes and times,
    never following a link: every folder and file is opened relative to its parent with
    ``O_NOFOLLOW``, so a link swapped in while copying is refused too. A symbolic link, a
    special file (FIFO, socket, device: never opened) or more than ``limit`` bytes of files
    (a sparse file at its full size) is :class:`DamagedRun`, naming the run directory."""

    def __init__(self, source: Path, limit: int, *, shown: Path | None = None) -> None:
        self.source, self.limit, self.total = source, limit, 0
        self.shown = shown or source  # as the user named it, in messages

    def run(self, target: Path | None) -> None:
        """Copy into the existing, empty ``target``; with None, only check that it can be."""
        self.total = 0
        try:
            fd = os.open(self.source, _OPEN_FLAGS | os.O_DIRECTORY)
        except OSError as exc:
            raise DamagedRun(f"cannot read {self.shown}: {exc.strerror}", "check the directory's permissions") from None
        try:
            self._folder(fd, self.source, target)
        finally:
            os.close(fd)

    def _refuse(self, path: Path, problem: str) -> DamagedRun:
        """The one line that says why: an import's outcome shows the message, not a hint."""
        return DamagedRun(f"{self.shown}: {path.relative_to(self.source)} {problem}")

    def _folder(self, fd: int, source: Path, target: Path | None) -> None:
        with os.scandir(fd) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            path = source / entry.name
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise self._refuse(path, "is a symbolic link, never followed by an import (it copies only the run's "
                                   "own files); replace it with a copy of its target, or remove it")
            if stat.S_ISDIR(info.st_mode):
                child = self._open(entry.name, fd, path, os.O_DIRECTORY)
                try:
                    if target is not None:
                        (target / entry.name).mkdir()
                    self._folder(child, path, None if target is None else target / entry.name)
                finally:
                    os.close(child)
                if target is not None:
                    _copy_times(info, target / entry.name)
            elif stat.S_ISREG(info.st_mode):
                self._count(path, info.st_size, commit=target is None)  # a sparse file: its full size
                if target is not None:
                    self._file(entry.name, fd, path, target / entry.name)
            else:
                raise self._refuse(path, f"is {_kind(info.st_mode)}, not a regular file, never read by an import; remove it")

    def _open(self, name: str, parent: int, path: Path, flags: int) -> int:
        try:  # O_NONBLOCK: a FIFO swapped in after the check must not wait for a writer
            return os.open(name, _OPEN_FLAGS | os.O_NONBLOCK | flags, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._refuse(path, "changed while it was copied (now a link or another kind of file); "
                                   "import again once nothing writes to it") from None
            raise

    def _file(self, name: str, parent: int, path: Path, target: Path) -> None:
        """One regular file, every byte counted (a file growing while copied cannot pass the limit)."""
        fd = self._open(name, parent, path, 0)
        with os.fdopen(fd, "rb") as src:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise self._refuse(path, f"changed while it was copied (now {_kind(info.st_mode)}); "
                                   "import again once nothing writes to it")
            with open(target, "xb") as dst:
                while chunk := src.read(1 << 20):
                    self._count(path, len(chunk), commit=True)
                    dst.write(chunk)
        _copy_times(info, target)

    def _count(self, path: Path, size: int, *, commit: bool) -> None:
        if self.total + size > self.limit:
            raise DamagedRun(
                f"{self.shown} holds more than {_size(self.limit)} of files, the most an import copies (reached at "
                f"{path.relative_to(self.source)}, {_size(size)}); copy it under the results root yourself and import "
                "it from there: a run already under the root is indexed in place")
        if commit:
            self.total += size


def _discard(path: Path) -> None:
    """Remove a directory an import made, folders copied read-only included."""
    for folder, _, _ in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _copy_times(info: os.stat_result, target: Path) -> None:
    os.chmod(target, stat.S_IMODE(info.st_mode))
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))


def _printable(text: str) -> str:
    """``text`` with control characters escaped (a directory name can hold any)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "a special file"


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("kiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


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
    "ABANDONED", "IMPORT_MAX_BYTES", "RESULT_MAX_BYTES", "STORE_ENV", "STORE_FILE", "STORE_SCHEMA_VERSION", "DamagedRun", "ImportOutcome", "RunFilter", "RunRecord",
    "Store", "latency_percentiles", "parse_date", "read_result", "record_run", "run_identity", "store_path",
    "system_label",
]
