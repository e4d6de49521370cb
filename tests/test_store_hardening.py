"""The results store against hostile or broken run directories: ``results import`` copies only
a run's own regular files (links, special files and oversized runs refused, nothing partial
left), and a result.json of the wrong types is reported and skipped, never indexed, by
import, list, show and compare, and indexed once fixed."""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from mlpi.core.contract.errors import ResultError
from mlpi.core.results import store as store_module
from mlpi.core.results.schema import RunResult
from mlpi.core.results.store import IMPORT_MAX_BYTES, STORE_FILE, Store

SECRET = "TOP-SECRET-CONTENT-OUTSIDE-THE-RUN"

#: A small, valid result.json: one Offline performance test (``name`` sets the run id).
RESULT: dict[str, Any] = {
    "schema_version": 2,
    "run_id": "good",
    "status": "ok",
    "started": "2026-01-02T03:04:05+0000",
    "finished": "2026-01-02T03:05:05+0000",
    "backend": {"name": "null", "version": "1"},
    "device": "cpu",
    "precision": "fp32",
    "model": {"name": "matmul", "sha256": "ab"},
    "system": {"hostname": "machine-a", "host_processor_model_name": "cpu", "accelerators": []},
    "tests": [{"scenario": "Offline", "mode": "performance", "status": "ok", "valid": True,
               "metric": "samples_per_second", "value": 100.0, "unit": "samples/s", "dir": "Offline/performance",
               "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0}}],
}


def result(run_id: str, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(RESULT)
    data["run_id"] = run_id
    data.update(changes)
    return data


def write_run(parent: Path, name: str, data: dict[str, Any] | None = None) -> Path:
    """A run directory as mlpi leaves it: result.json and a LoadGen log in its test folder."""
    run_dir = parent / name
    (run_dir / "Offline" / "performance").mkdir(parents=True)
    (run_dir / "Offline" / "performance" / "mlperf_log_summary.txt").write_text("Result is : VALID\n")
    (run_dir / "result.json").write_text(json.dumps(data if data is not None else result(name), indent=2))
    return run_dir


def everything_under(root: Path) -> list[str]:
    """Every path under the results root, hidden ones included, but the store's own files."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.startswith(STORE_FILE))


def contents(root: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def listed(root: Path, cwd: Path, *args: str) -> tuple[list[str], list[str]]:
    """``results list --json``: the runs listed and the stderr lines; it must succeed."""
    proc = run_cli(["results", "list", "--results", str(root), "--json", *args], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    return sorted({line["run"] for line in json.loads(proc.stdout)}), proc.stderr.splitlines()


def imported(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("imported ")]


def skipped(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("warning: skipped: ")]


# ------------------------------------------------------------------ links and special files


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Files a hostile run directory would like to have copied: a file, a folder, a run."""
    place = tmp_path / "outside"
    (place / "folder").mkdir(parents=True)
    (place / "secret.txt").write_text(SECRET)
    (place / "folder" / "more.txt").write_text(SECRET)
    (place / "result.json").write_text(json.dumps(result("outside-run")))
    return place


def test_import_never_follows_a_link_nor_reads_a_special_file(tmp_path: Path, outside: Path) -> None:
    carried = tmp_path / "carried"
    write_run(carried, "good")
    os.symlink(outside / "secret.txt", write_run(carried, "link-to-file") / "notes.txt")
    os.symlink(outside / "folder", write_run(carried, "link-to-folder") / "Offline" / "performance" / "logs")
    os.symlink("/dev/zero", write_run(carried, "link-to-dev-zero") / "zero.bin")
    os.mkfifo(write_run(carried, "fifo") / "pipe")  # opened, it would block the import forever
    linked_result = write_run(carried, "linked-result", {})
    (linked_result / "result.json").unlink()
    os.symlink(outside / "result.json", linked_result / "result.json")
    os.symlink(outside, carried / "link-to-a-run")  # a whole run directory elsewhere
    root = tmp_path / "results"

    proc = run_cli(["results", "import", str(carried), "--results", str(root)], cwd=tmp_path, timeout=60)

    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert imported(proc) == [f"imported {carried / 'good'} as {root / 'good'}"]
    assert "1 imported, 0 already in the store, 6 skipped" in proc.stdout
    link = "is a symbolic link, never followed by an import"
    assert sorted(skipped(proc)) == sorted([
        f"warning: skipped: {carried / 'fifo'}: pipe is a FIFO, not a regular file, never read by an import; remove it",
        f"warning: skipped: {carried / 'link-to-a-run'} is a symbolic link to a run directory, not followed "
        f"(import {outside} by its own path)",
        *(f"warning: skipped: {carried / name}: {what} {link} (it copies only the run's own files); "
          "replace it with a copy of its target, or remove it"
          for name, what in (("link-to-dev-zero", "zero.bin"), ("link-to-file", "notes.txt"),
                             ("link-to-folder", "Offline/performance/logs"))),
        f"warning: skipped: {linked_result / 'result.json'} is a symbolic link, not followed; "
        "a run's result.json must be its own file",
    ])
    assert proc.stderr.splitlines()[-2:] == [
        "error: 6 of 7 result directories could not be imported",
        "hint: fix or copy again the directories named above; the others were imported",
    ]
    # Only the good run landed under the root: no partial copy, no staging folder, no secret.
    assert everything_under(root) == ["good", "good/Offline", "good/Offline/performance",
                                      "good/Offline/performance/mlperf_log_summary.txt", "good/result.json"]
    assert SECRET not in contents(root)
    assert listed(root, tmp_path) == (["good"], [])
    assert (outside / "secret.txt").read_text() == SECRET  # and nothing outside was touched


def test_a_refused_run_named_alone_is_one_warning_and_exit_1(tmp_path: Path, outside: Path) -> None:
    run = write_run(tmp_path / "carried", "run")
    os.symlink(outside / "secret.txt", run / "Offline" / "notes.txt")
    root = tmp_path / "results"
    proc = run_cli(["results", "import", str(run), "--results", str(root)], cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"warning: skipped: {run}: Offline/notes.txt is a symbolic link, never followed by an import "
        "(it copies only the run's own files); replace it with a copy of its target, or remove it",
        "error: 1 of 1 result directories could not be imported",
        "hint: fix or copy again the directories named above; the others were imported",
    ]
    assert everything_under(root) == []
    # Replaced by a copy of its target, the run imports.
    (run / "Offline" / "notes.txt").unlink()
    (run / "Offline" / "notes.txt").write_text("my notes")
    again = run_cli(["results", "import", str(run), "--results", str(root)], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (root / "run" / "Offline" / "notes.txt").read_text() == "my notes"


def test_a_run_named_through_a_link_by_the_user_is_imported(tmp_path: Path) -> None:
    """The path the user types may be a link (a mounted share...); what is inside may not."""
    run = write_run(tmp_path / "carried", "run")
    os.symlink(run, tmp_path / "shortcut")
    proc = run_cli(["results", "import", str(tmp_path / "shortcut"), "--results", str(tmp_path / "results")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "results" / "run" / "result.json").is_file()


def test_a_run_under_the_root_with_a_linked_or_fifo_result_is_not_indexed(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "results"
    write_run(root, "good")
    linked = write_run(root, "linked", {})
    (linked / "result.json").unlink()
    os.symlink(outside / "result.json", linked / "result.json")
    fifo = write_run(root, "fifo", {})
    (fifo / "result.json").unlink()
    os.mkfifo(fifo / "result.json")
    runs, warnings = listed(root, tmp_path)
    assert runs == ["good"]
    assert warnings == [
        f"warning: {fifo / 'result.json'} is a FIFO, not a regular file; not indexed",
        f"warning: {linked / 'result.json'} is a symbolic link, not followed; a run's result.json must be its own file; "
        "not indexed",
    ]


# ------------------------------------------------------------------ size


def test_a_sparse_file_beyond_the_cap_is_refused_before_anything_is_copied(tmp_path: Path) -> None:
    carried = tmp_path / "carried"
    write_run(carried, "good")
    big = write_run(carried, "big")
    with open(big / "Offline" / "performance" / "mlperf_log_accuracy.json", "wb") as handle:
        handle.truncate(IMPORT_MAX_BYTES + 1)  # sparse: takes no disk here, would take it all copied
    root = tmp_path / "results"
    proc = run_cli(["results", "import", str(carried), "--results", str(root)], cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert skipped(proc) == [
        f"warning: skipped: {big} holds more than 16.0 GiB of files, the most an import copies (reached at "
        "Offline/performance/mlperf_log_accuracy.json, 16.0 GiB); copy it under the results root yourself and "
        "import it from there: a run already under the root is indexed in place"
    ]
    assert [p.name for p in root.iterdir() if not p.name.startswith(STORE_FILE)] == ["good"]


def test_the_cap_counts_every_file_of_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "IMPORT_MAX_BYTES", 64 * 1024)
    carried = tmp_path / "carried"
    for name, sizes in (("fits", (30_000, 30_000)), ("too-big", (40_000, 40_000)), ("sparse", (10**9,))):
        run = write_run(carried, name)
        for number, size in enumerate(sizes):
            with open(run / f"log{number}.bin", "wb") as handle:
                if name == "sparse":
                    handle.truncate(size)
                else:
                    handle.write(b"x" * size)
    root = tmp_path / "results"
    with Store(root / STORE_FILE) as store:
        outcomes = {o.source.name: o for o in store.import_dirs([carried], root)}
    assert {name: o.status for name, o in outcomes.items()} == {"fits": "imported", "too-big": "damaged", "sparse": "damaged"}
    assert outcomes["too-big"].message.startswith(f"{carried / 'too-big'} holds more than 64.0 kiB of files, "
                                                  "the most an import copies (reached at log1.bin, 39.1 kiB)")
    assert "(reached at log0.bin, 953.7 MiB)" in outcomes["sparse"].message
    assert [p.name for p in root.iterdir() if not p.name.startswith(STORE_FILE)] == ["fits"]
    assert (root / "fits" / "log1.bin").stat().st_size == 30_000


def test_the_copy_keeps_modes_and_times_and_leaves_no_staging_folder(tmp_path: Path) -> None:
    run = write_run(tmp_path / "carried", "run")
    log = run / "Offline" / "performance" / "mlperf_log_summary.txt"
    os.chmod(log, 0o640)
    os.utime(log, ns=(1_000_000_000_000_000_000, 1_500_000_000_123_456_789))
    root = tmp_path / "results"
    proc = run_cli(["results", "import", str(run), "--results", str(root)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    copied = root / "run" / "Offline" / "performance" / "mlperf_log_summary.txt"
    assert copied.read_text() == log.read_text()
    assert copied.stat().st_mode & 0o777 == 0o640 and copied.stat().st_mtime_ns == 1_500_000_000_123_456_789
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ wrong types


WRONG_TYPES: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("system string", lambda d: d.update(system="x"), '(system is "x", not a JSON object)'),
    ("string in tests", lambda d: d["tests"].append("Offline"), '(tests[1] is "Offline", not a JSON object)'),
    ("integer scenario", lambda d: d["tests"][0].update(scenario=7), "(tests[0].scenario is 7, not a string)"),
    ("tests object", lambda d: d.update(tests={"Offline": 1}), '(tests is {"Offline": 1}, not a list)'),
    ("hostname object", lambda d: d["system"].update(hostname={"a": 1}),
     '(system.hostname is {"a": 1}, not a string or a number)'),
    ("cpu list", lambda d: d["system"].update(host_processor_model_name=["x"]),
     '(system.host_processor_model_name is ["x"], not a string or a number)'),
    ("accelerators string", lambda d: d["system"].update(accelerators="gpu"),
     '(system.accelerators is "gpu", not a list)'),
    ("accelerator string", lambda d: d["system"].update(accelerators=["gpu"]),
     '(system.accelerators[0] is "gpu", not a JSON object)'),
    ("test dir outside", lambda d: d["tests"][0].update(dir="../../etc"),
     '(tests[0].dir is "../../etc", not a folder inside the run directory)'),
    ("absolute test dir", lambda d: d["tests"][0].update(dir="/etc"),
     '(tests[0].dir is "/etc", not a folder inside the run directory)'),
]


def damaged(what: str) -> dict[str, Any]:
    damage = {w[0]: w[1] for w in WRONG_TYPES}[what]
    data = result("bad")
    damage(data)
    return data


@pytest.mark.parametrize(("what", "damage", "detail"), WRONG_TYPES, ids=[w[0] for w in WRONG_TYPES])
def test_wrong_types_are_the_schemas_own_error(what: str, damage: Callable[[dict[str, Any]], Any], detail: str) -> None:
    data = result("bad")
    damage(data)
    with pytest.raises(ResultError) as caught:
        RunResult.from_json(data, "x/result.json")
    assert caught.value.message == f"x/result.json is damaged {detail}"
    assert caught.value.hint == "copy the run directory again"


def test_what_sysinfo_writes_still_reads() -> None:
    from mlpi.core.results.sysinfo import MLPERF_FIELDS

    system = dict.fromkeys(MLPERF_FIELDS, "")
    system.update(number_of_nodes=1, host_processor_core_count=8, accelerators_per_node="", hostname="h", machine="x86_64",
                  python="3.11.7", host_memory_bytes=2**34, packages={"mlpi": "1", "torch": None},
                  accelerators=[{"name": "GPU", "memory": "80 GiB", "driver": "1", "device": "cuda:0", "backends": []}])
    assert RunResult.from_json(result("r", system=system)).system == system
    assert RunResult.from_json(result("r", tests=[dict(RESULT["tests"][0], dir="")])).tests[0].dir == "Offline/performance"


@pytest.mark.parametrize("what", ["system string", "string in tests", "integer scenario", "hostname object",
                                  "accelerators string", "test dir outside"])
def test_a_wrong_typed_run_is_skipped_by_import_list_show_and_compare(tmp_path: Path, what: str) -> None:
    carried = tmp_path / "carried"
    write_run(carried, "a-bad", damaged(what))
    write_run(carried, "good")
    write_run(carried, "other", result("other", started="2026-01-03T03:04:05+0000"))
    root = tmp_path / "results"

    proc = run_cli(["results", "import", str(carried), "--results", str(root)], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    detail = {w[0]: w[2] for w in WRONG_TYPES}[what]
    assert skipped(proc) == [f"warning: skipped: {carried / 'a-bad' / 'result.json'} is damaged {detail}"]
    assert "2 imported, 0 already in the store, 1 skipped" in proc.stdout  # the import went on past it
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["good", "other"]

    # The same file under the root: never indexed; list, show and compare name it and go on.
    write_run(root, "a-bad", damaged(what))
    warning = f"warning: {root / 'a-bad' / 'result.json'} is damaged {detail}; not indexed"
    assert listed(root, tmp_path) == (["good", "other"], [warning])
    shown = run_cli(["results", "show", "good", "--results", str(root)], cwd=tmp_path, env={"COLUMNS": "200"})
    assert shown.returncode == 0 and shown.stderr.splitlines() == [warning], shown.stderr
    assert "matmul" in shown.stdout
    compared = run_cli(["compare", "model=matmul", "--results", str(root), "--format", "json"], cwd=tmp_path)
    assert compared.returncode == 0 and compared.stderr.splitlines() == [warning], compared.stderr
    assert sorted(row["run"] for row in json.loads(compared.stdout)["rows"]) == ["good", "other"]
    with sqlite3.connect(root / STORE_FILE) as db:
        assert sorted(r[0] for r in db.execute("SELECT name FROM runs")) == ["good", "other"]

    # Fixed, it is indexed at the next look, with no store to delete.
    (root / "a-bad" / "result.json").write_text(json.dumps(result("bad")))
    assert listed(root, tmp_path) == (["a-bad", "good", "other"], [])


def test_a_bad_copy_an_older_mlpi_indexed_no_longer_breaks_every_run(tmp_path: Path) -> None:
    """What the issue saw: a store holding a wrong-typed result.json broke list, show and
    compare for every run, and fixing the file did nothing until the store was deleted."""
    root = tmp_path / "results"
    write_run(root, "good")
    bad = write_run(root, "bad", result("bad"))
    assert listed(root, tmp_path) == (["bad", "good"], [])
    # As an older mlpi left it: the wrong types in the file and in the index, no file stat.
    wrong = damaged("system string")
    (bad / "result.json").write_text(json.dumps(wrong))
    with sqlite3.connect(root / STORE_FILE) as db:
        db.execute("UPDATE runs SET result = ?, result_stat = NULL WHERE name = 'bad'", (json.dumps(wrong),))
    warning = f'warning: {bad / "result.json"} is damaged (system is "x", not a JSON object); not indexed'
    assert listed(root, tmp_path) == (["good"], [warning])
    for args in (["results", "show", "good", "--results", str(root)], ["compare", "--results", str(root)]):
        proc = run_cli(args, cwd=tmp_path, env={"COLUMNS": "200"})
        assert proc.returncode == 0 and proc.stderr.splitlines() == [warning], proc.stderr
    (bad / "result.json").write_text(json.dumps(result("bad")))  # fixed: taken at once
    assert listed(root, tmp_path) == (["bad", "good"], [])


def test_a_run_damaged_after_it_was_indexed_is_dropped_then_taken_back_fixed(tmp_path: Path) -> None:
    root = tmp_path / "results"
    write_run(root, "good")
    run = write_run(root, "run")
    assert listed(root, tmp_path) == (["good", "run"], [])
    original = (run / "result.json").read_text()
    (run / "result.json").write_text(json.dumps(damaged("integer scenario")))
    warning = f"warning: {run / 'result.json'} is damaged (tests[0].scenario is 7, not a string); not indexed"
    assert listed(root, tmp_path) == (["good"], [warning])
    edited = result("run", precision="int8")  # fixed, and not as it was: the fixed version is listed
    (run / "result.json").write_text(json.dumps(edited))
    assert listed(root, tmp_path, "--precision", "int8") == (["run"], [])
    (run / "result.json").write_text(original)
    assert listed(root, tmp_path, "--precision", "fp32") == (["good", "run"], [])


def test_a_stored_copy_that_no_longer_reads_is_skipped_where_the_root_is_not_scanned(tmp_path: Path) -> None:
    root = tmp_path / "results"
    write_run(root, "good")
    write_run(root, "run")
    assert listed(root, tmp_path) == (["good", "run"], [])
    with sqlite3.connect(root / STORE_FILE) as db:  # edited by hand, or by an mlpi that checked less
        db.execute("UPDATE runs SET result = ? WHERE name = 'run'", (json.dumps(damaged("accelerators string")),))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_cli(["results", "list", "--store", str(root / STORE_FILE), "--json"], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert [line["run"] for line in json.loads(proc.stdout)] == ["good"]
    assert proc.stderr.splitlines() == [
        f'warning: {(root / "run" / "result.json").resolve()} is damaged (system.accelerators is "gpu", not a list); '
        "skipped and dropped from the results store, indexed again once fixed"
    ]
    # Dropped: the next look at the root reads the file, which is fine, again.
    assert listed(root, tmp_path) == (["good", "run"], [])


def test_a_store_made_before_file_stats_gains_the_column_and_still_lists(tmp_path: Path) -> None:
    root = tmp_path / "results"
    write_run(root, "good")
    assert listed(root, tmp_path) == (["good"], [])
    with sqlite3.connect(root / STORE_FILE) as db:  # the table as mlpi made it before
        db.execute("ALTER TABLE runs DROP COLUMN result_stat")
    assert listed(root, tmp_path) == (["good"], [])
    with sqlite3.connect(root / STORE_FILE) as db:
        assert db.execute("SELECT result_stat IS NOT NULL FROM runs").fetchall() == [(1,)]
        assert db.execute("PRAGMA user_version").fetchone() == (1,)


def test_an_unchanged_file_is_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "results"
    write_run(root, "good")
    with Store(root / STORE_FILE) as store:
        assert store.sync(root) == []
    reads: list[Path] = []
    real = store_module._read_checked
    monkeypatch.setattr(store_module, "_read_checked", lambda run_dir: reads.append(run_dir) or real(run_dir))
    with Store(root / STORE_FILE) as store:
        assert store.sync(root) == [] and reads == []
        os.utime(root / "good" / "result.json", ns=(0, 0))  # touched: read again
        assert store.sync(root) == [] and reads == [root / "good"]


def test_the_cli_sees_a_small_cap(tmp_path: Path) -> None:
    """The cap is a module constant: a process that lowers it refuses what passes the default."""
    run = write_run(tmp_path / "carried", "run")
    (run / "log.bin").write_bytes(b"x" * 5000)
    script = ("import sys; import mlpi.core.results.store as s; s.IMPORT_MAX_BYTES = 4096; "
              "from mlpi.cli import main; sys.argv[0] = 'mlpi'; main()")
    proc = subprocess.run([sys.executable, "-c", script, "results", "import", str(run), "--results", str(tmp_path / "r")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert skipped(proc) == [
        f"warning: skipped: {run} holds more than 4.0 kiB of files, the most an import copies (reached at log.bin, "
        "4.9 kiB); copy it under the results root yourself and import it from there: a run already under the root is "
        "indexed in place"
    ]
    assert everything_under(tmp_path / "r") == []


def test_a_crafted_detail_log_line_is_ignored_not_a_crash(tmp_path: Path) -> None:
    """``:::MLLOG`` lines that are JSON but not LoadGen's records (a list, a non-object
    metadata, a key that is not text) are skipped; LoadGen's own records still read."""
    from mlpi.core.engine.scenario import DetailLog

    path = tmp_path / "mlperf_log_detail.txt"
    path.write_text(
        ':::MLLOG [1]\n'
        ':::MLLOG {"key": "result_validity", "value": "VALID", "metadata": "x"}\n'
        ':::MLLOG {"key": 5, "value": 1}\n'
        ':::MLLOG {"key": "error_invalid_config", "value": "bad", "metadata": {"is_error": true}}\n',
        encoding="utf-8",
    )
    log = DetailLog.read(path)
    assert log.valid and log.values == {"result_validity": "VALID", "error_invalid_config": "bad"}
    assert log.errors == ["error_invalid_config: bad"]
