"""The results store: runs index themselves, list/show/import, duplicates, damage, concurrency."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from mlpi.core.results.schema import RunResult
from mlpi.core.results.store import STORE_FILE, Store, read_result, run_identity
from mlpi.testing import tiny_models


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def make_run(root: Path, model: Path, backend: str, scenario: str, cwd: Path, env: dict[str, str] | None = None) -> Path:
    before = set(run_dirs(root)) if root.exists() else set()
    proc = run_cli(["run", "--backend", backend, "--model-path", str(model), "-s", scenario, "--duration", "0.3",
                    "--output", str(root)], cwd=cwd, env=env)
    assert proc.returncode in (0, 3), proc.stderr
    (new,) = set(run_dirs(root)) - before
    return new


def listing(root: Path, *args: str, cwd: Path) -> list[dict[str, Any]]:
    proc = run_cli(["results", "list", "--results", str(root), "--json", *args], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def machine_a(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real runs on this machine: null/matmul Offline and onnxruntime/conv SingleStream."""
    base = tmp_path_factory.mktemp("machine-a")
    matmul = tiny_models.matmul_model(base / "matmul.onnx")
    conv = tiny_models.conv_model(base / "conv.onnx")
    root = base / "results"
    offline = make_run(root, matmul, "null", "Offline", base)
    single = make_run(root, conv, "onnxruntime", "SingleStream", base)
    return {"base": base, "root": root, "offline": offline, "single": single}


def test_every_run_is_indexed_beside_its_results(machine_a: dict[str, Path]) -> None:
    root = machine_a["root"]
    assert (root / STORE_FILE).is_file()
    with Store(root / STORE_FILE) as store:
        runs = {r.name: r for r in store.runs()}
    assert set(runs) == {machine_a["offline"].name, machine_a["single"].name}
    for name, record in runs.items():
        result = read_result(root / name)
        assert record.result == result and record.status == "ok"
        assert record.dir == (root / name).resolve()
        assert record.system == socket.gethostname()
    single = runs[machine_a["single"].name]
    latency = single.latency["SingleStream/performance"]
    # The percentiles come from LoadGen's own log and are ordered as percentiles must be.
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p99.9"]
    logged = {}
    for line in (machine_a["single"] / "SingleStream" / "performance" / "mlperf_log_detail.txt").read_text().splitlines():
        if ":::MLLOG " in line:
            entry = json.loads(line.split(":::MLLOG ", 1)[1])
            logged[entry["key"]] = entry["value"]
    assert latency["p90"] == logged["result_90.00_percentile_latency_ns"] / 1e6
    assert latency["p99.9"] == logged["result_99.90_percentile_latency_ns"] / 1e6


def test_list_filters_by_each_field(machine_a: dict[str, Path]) -> None:
    root, cwd = machine_a["root"], machine_a["base"]
    offline, single = machine_a["offline"].name, machine_a["single"].name

    def names(*args: str) -> list[str]:
        return [line["run"] for line in listing(root, *args, cwd=cwd)]

    assert names() == [offline, single]
    everything = listing(root, cwd=cwd)
    assert [(x["model"], x["backend"], x["scenario"], x["mode"]) for x in everything] == [
        ("matmul", "null", "Offline", "performance"), ("conv", "onnxruntime", "SingleStream", "performance")]
    assert everything[0]["value"] == read_result(machine_a["offline"]).tests[0].value
    assert names("--backend", "null") == [offline]
    assert names("--backend", "NULL", "--backend", "onnxruntime") == [offline, single]
    assert names("--model", "conv") == [single]
    assert names("--scenario", "singlestream") == [single]
    assert names("--scenario", "Server") == []
    assert names("--device", "cpu") == [offline, single]
    assert names("--device", "cuda") == []
    assert names("--system", socket.gethostname()[:3].upper()) == [offline, single]
    assert names("--system", "no-such-machine") == []
    assert names("--precision", "fp32") == [offline, single]
    today = date.today()
    assert names("--since", today.isoformat(), "--until", today.isoformat()) == [offline, single]
    assert names("--since", (today + timedelta(days=1)).isoformat()) == []
    assert names("--until", (today - timedelta(days=1)).isoformat()) == []


def test_list_table_and_bad_date(machine_a: dict[str, Path]) -> None:
    root, cwd = machine_a["root"], machine_a["base"]
    proc = run_cli(["results", "list", "--results", str(root)], cwd=cwd, env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    for text in (machine_a["offline"].name, machine_a["single"].name, "matmul", "conv", "SingleStream", "onnxruntime"):
        assert text in proc.stdout
    bad = run_cli(["results", "list", "--results", str(root), "--since", "last tuesday"], cwd=cwd)
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == ["error: 'last tuesday' is not a date", "hint: write dates as YYYY-MM-DD or YYYY-MM-DDTHH:MM"]


def test_show_accepts_ids_and_prefixes_and_names_ambiguity(machine_a: dict[str, Path]) -> None:
    root, cwd = machine_a["root"], machine_a["base"]
    single = machine_a["single"].name
    for ref in (single, single[: len(single) - 4]):
        proc = run_cli(["results", "show", ref, "--results", str(root), "--json"], cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == read_result(machine_a["single"]).to_json()
        assert json.loads(proc.stdout) == json.loads((machine_a["single"] / "result.json").read_text())  # as written
    shown = run_cli(["results", "show", single, "--results", str(root)], cwd=cwd, env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "onnxruntime" in shown.stdout and "SingleStream" in shown.stdout and str(machine_a["single"]) in shown.stdout
    assert "p90 ms" in shown.stdout and "no longer there" not in shown.stdout

    common = "".join(a for a, b in zip(machine_a["offline"].name, single) if a == b)[:4]
    ambiguous = run_cli(["results", "show", common, "--results", str(root)], cwd=cwd)
    assert ambiguous.returncode == 2 and len(ambiguous.stderr.splitlines()) == 2
    assert ambiguous.stderr.startswith(f"error: '{common}' matches 2 runs: ")
    assert "hint: give more of the run id" in ambiguous.stderr
    missing = run_cli(["results", "show", "nope", "--results", str(root)], cwd=cwd)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no run 'nope' in the results store")
    assert "hint:" in missing.stderr and "mlpi results list" in missing.stderr


def test_import_copies_runs_skips_duplicates_and_reports_damage(machine_a: dict[str, Path], tmp_path: Path) -> None:
    # What a user copies from another machine: a folder of run directories, one of them damaged.
    carried = tmp_path / "from-a"
    shutil.copytree(machine_a["root"], carried, ignore=shutil.ignore_patterns(STORE_FILE + "*"))
    damaged = carried / "damaged-run"
    shutil.copytree(machine_a["offline"], damaged)
    text = (damaged / "result.json").read_text()
    (damaged / "result.json").write_text(text[: len(text) // 2])
    root_b = tmp_path / "b"

    proc = run_cli(["results", "import", str(carried), "--results", str(root_b)], cwd=tmp_path)
    assert proc.returncode == 1
    assert f"warning: skipped: {damaged / 'result.json'} is damaged" in proc.stderr
    assert proc.stderr.strip().splitlines()[-2:] == [
        "error: 1 of 3 result directories could not be imported",
        "hint: fix or copy again the directories named above; the others were imported",
    ]
    assert "2 imported, 0 already in the store, 1 skipped" in proc.stdout
    imported = [p.name for p in run_dirs(root_b)]
    assert imported == sorted([machine_a["offline"].name, machine_a["single"].name])
    for name in imported:  # the whole directory came along, logs included
        original = machine_a["root"] / name
        assert sorted(p.relative_to(original) for p in original.rglob("*")) == sorted(p.relative_to(root_b / name) for p in (root_b / name).rglob("*"))
    assert [line["run"] for line in listing(root_b, cwd=tmp_path)] == [machine_a["offline"].name, machine_a["single"].name]

    # The same runs again, named one by one: already there, nothing copied, exit 0.
    again = run_cli(["results", "import", str(carried / machine_a["single"].name), str(carried / machine_a["offline"].name),
                     "--results", str(root_b)], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 imported, 2 already in the store, 0 skipped" in again.stdout
    # each is said to be in the store, never "skipped" above a summary of 0 skipped
    assert "skipped" not in again.stdout.replace("0 skipped", "")
    assert f"already in the store: {carried / machine_a['single'].name} is run" in again.stdout
    assert [p.name for p in run_dirs(root_b)] == imported


def test_import_never_overwrites_a_directory_of_the_same_name(machine_a: dict[str, Path], tmp_path: Path) -> None:
    root_b = tmp_path / "b"
    taken = root_b / machine_a["single"].name
    shutil.copytree(machine_a["offline"], taken)  # another run already lives under that name
    before = {p.relative_to(taken): p.read_bytes() for p in taken.rglob("*") if p.is_file()}
    proc = run_cli(["results", "import", str(machine_a["single"]), "--results", str(root_b)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {p.relative_to(taken): p.read_bytes() for p in taken.rglob("*") if p.is_file()} == before
    fresh = root_b / f"{taken.name}-2"
    assert read_result(fresh) == read_result(machine_a["single"])
    rows = listing(root_b, cwd=tmp_path)
    assert sorted((r["run"], r["model"]) for r in rows) == sorted([(taken.name, "matmul"), (fresh.name, "conv")])


def test_a_directory_already_under_the_root_is_indexed_in_place(machine_a: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "r"
    shutil.copytree(machine_a["offline"], root / machine_a["offline"].name)
    proc = run_cli(["results", "import", str(root / machine_a["offline"].name), "--results", str(root),
                    "--store", str(tmp_path / "s.sqlite")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 imported" in proc.stdout and run_dirs(root) == [root / machine_a["offline"].name]


def test_identity_is_the_run_on_its_machine_not_the_name() -> None:
    result = {"run_id": "20250101-000000-m-null-cpu", "status": "running", "started": "2025-01-01T00:00:00+0000",
              "device": "cpu", "model": {"name": "m", "sha256": "ab"}, "backend": {"name": "null"}, "tests": [],
              "system": {"hostname": "a", "host_processor_model_name": "cpu"}}
    other_machine = json.loads(json.dumps(result))
    other_machine["system"]["hostname"] = "b"
    finished_copy = dict(result, status="ok", finished="2025-01-01T00:01:00+0000")
    identity = run_identity(RunResult.from_json(result))
    assert identity == run_identity(RunResult.from_json(finished_copy))
    assert identity != run_identity(RunResult.from_json(other_machine))
    # The same hash of the same fields as before result.json had a schema class: runs indexed
    # by an older mlpi keep their identity.
    key = ["20250101-000000-m-null-cpu", "2025-01-01T00:00:00+0000", "a", "cpu", "ab", "null", "cpu"]
    assert identity == hashlib.sha256(json.dumps(key).encode("utf-8")).hexdigest()[:32]


def test_a_run_whose_indexing_fails_still_succeeds_and_is_indexed_later(tmp_path: Path) -> None:
    model = tiny_models.matmul_model(tmp_path / "m.onnx")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    root = tmp_path / "r"
    run_dir = make_run(root, model, "null", "Offline", tmp_path, env={"MLPI_STORE": str(blocker / "store.sqlite")})
    result = read_result(run_dir)
    assert result.status == "ok" and result.finished and result.tests[0].value > 0
    assert not (root / STORE_FILE).exists()
    # `results list` on the root indexes what it finds there.
    assert [line["run"] for line in listing(root, cwd=tmp_path)] == [run_dir.name]


def test_the_warning_when_indexing_fails(tmp_path: Path) -> None:
    model = tiny_models.matmul_model(tmp_path / "m.onnx")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    proc = run_cli(["run", "--backend", "null", "--model-path", str(model), "--duration", "0.3", "--output", str(tmp_path / "r")],
                   cwd=tmp_path, env={"MLPI_STORE": str(blocker / "store.sqlite")})
    assert proc.returncode in (0, 3), proc.stderr  # 3: LoadGen may find 0.3 s too short to be valid
    warning = [line for line in proc.stderr.splitlines() if "results store" in line]
    assert len(warning) == 1 and warning[0].startswith("mlpi: warning: ") and "'mlpi results list' adds it later" in warning[0]


def test_moving_the_results_root_keeps_the_store_usable(machine_a: dict[str, Path], tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(machine_a["root"], moved)
    proc = run_cli(["results", "show", machine_a["single"].name, "--results", str(moved)], cwd=tmp_path, env={"COLUMNS": "300"})
    assert proc.returncode == 0, proc.stderr
    assert str(moved / machine_a["single"].name) in proc.stdout and "no longer there" not in proc.stdout


def test_damaged_or_newer_store_is_one_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / STORE_FILE).write_bytes(b"this is not sqlite" * 100)
    proc = run_cli(["results", "list", "--results", str(root)], cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"error: {root / STORE_FILE} is not a usable mlpi results store")
    assert lines[1].startswith("hint: move it away")

    newer = tmp_path / "newer.sqlite"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    proc = run_cli(["results", "list", "--store", str(newer)], cwd=tmp_path)
    assert proc.returncode == 2 and "has schema 99, newer than this mlpi" in proc.stderr and "hint: upgrade mlpi" in proc.stderr


def test_concurrent_writers_leave_an_intact_index(machine_a: dict[str, Path], tmp_path: Path) -> None:
    """Four processes index eight copies of real runs into one store at the same time."""
    sources = []
    for i in range(8):
        source = tmp_path / "src" / f"run{i}"
        shutil.copytree(machine_a["offline"] if i % 2 else machine_a["single"], source)
        data = json.loads((source / "result.json").read_text())
        data["run_id"] = f"{data['run_id']}-{i}"  # eight distinct runs
        (source / "result.json").write_text(json.dumps(data))
        sources.append(source)
    store = tmp_path / "shared.sqlite"
    script = (
        "import sys; from pathlib import Path; from mlpi.core.results.store import Store\n"
        "for d in sys.argv[2:]:\n"
        "    with Store(Path(sys.argv[1])) as s: s.index_run(Path(d))\n"
    )
    workers = [subprocess.Popen([sys.executable, "-c", script, str(store), *map(str, sources[i::4] + sources[::-1])])
               for i in range(4)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0, 0]
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (8,)
        assert db.execute("SELECT count(*) FROM tests").fetchone() == (8,)


def test_two_runs_finishing_together_are_both_indexed(tmp_path: Path) -> None:
    model = tiny_models.matmul_model(tmp_path / "m.onnx")
    root = tmp_path / "r"
    procs = [
        subprocess.Popen([sys.executable, "-m", "mlpi", "run", "--backend", "null", "--model-path", str(model), "-s", "Offline",
                          "--duration", "0.3", "--output", str(root)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=240) in (0, 3), proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            assert b"warning" not in proc.stderr.read()
    with Store(root / STORE_FILE) as store:
        assert sorted(r.name for r in store.runs()) == [p.name for p in run_dirs(root)]
    assert len(run_dirs(root)) == 2


def test_reading_where_there_are_no_results_creates_nothing(tmp_path: Path) -> None:
    for args in (["results", "list"], ["compare", "model=x"], ["results", "show", "x", "--store", str(tmp_path / "none.sqlite")]):
        proc = run_cli(args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines()[0].startswith("error: no results store at ")
        assert proc.stderr.splitlines()[1] == "hint: run 'mlpi run' first, or pass --results DIR or --store FILE"
    assert list(tmp_path.iterdir()) == []


def test_list_indexes_runs_it_finds_and_names_damaged_ones(machine_a: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "r"
    shutil.copytree(machine_a["offline"], root / machine_a["offline"].name)  # made before the store existed
    shutil.copytree(machine_a["single"], root / "broken")
    (root / "broken" / "result.json").write_text("{\"run_id\": ")
    shutil.copytree(machine_a["offline"], root / "zz-second-copy")
    proc = run_cli(["results", "list", "--results", str(root), "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [line["run"] for line in json.loads(proc.stdout)] == [machine_a["offline"].name]
    assert proc.stderr.splitlines() == [
        f"warning: {root / 'broken' / 'result.json'} is damaged (Expecting value at line 1); not indexed",
        f"warning: {root / 'zz-second-copy'} is a second copy of run {machine_a['offline'].name}; not indexed twice",
    ]


def test_import_reports_paths_that_hold_no_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    proc = run_cli(["results", "import", str(tmp_path / "empty"), str(tmp_path / "file.txt"), str(tmp_path / "gone"),
                    "--results", str(tmp_path / "r")], cwd=tmp_path)
    assert proc.returncode == 1
    assert f"warning: skipped: {tmp_path / 'empty'} holds no run directory" in proc.stderr
    assert f"warning: skipped: {tmp_path / 'file.txt'} is not a directory" in proc.stderr
    assert f"warning: skipped: {tmp_path / 'gone'} does not exist" in proc.stderr
    assert "error: 3 of 3 result directories could not be imported" in proc.stderr
