"""What people copy out of `mlpi results list` and `mlpi compare` is never cut, and compare's
speedups say what they are: batch size and instances shown and warned about, no speedup from
an INVALID result unless asked, repeats of one configuration marked as such."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from rich.cells import cell_len
from test_output_safety import BACKEND, DEVICE, MODEL, SYSTEM, assert_safe
from test_result_schema import dice_run, write_run

from mlpi.cli_results import _Column, _emit

# Real run ids are this long: a table that cuts cells shows "20261129-16…" at 130 columns.
ORT = "20261129-160648-resnet50-onnxruntime-cpu"
OV = "20261129-161012-resnet50-openvino-cpu"
OV_AGAIN = "20261129-170233-resnet50-openvino-cpu"  # the same configuration, run again
OV_X4 = "20261129-180000-resnet50-openvino-cpu-x4"  # four instances
DLRM = "20261129-190000-dlrm-v2-onnxruntime-cpu"
RESNET = (ORT, OV, OV_AGAIN, OV_X4)
SYSTEM_NAME = "lab-server-with-a-long-name-01"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def perf(scenario: str, value: float, batch: int, *, valid: bool = True, unit: str = "samples/s", **extra: Any) -> dict[str, Any]:
    return {
        "scenario": scenario, "mode": "performance", "status": "ok", "valid": valid,
        "metric": "samples_per_second" if unit == "samples/s" else "p90_latency", "value": value, "unit": unit,
        "quick": False, "dir": f"{scenario}/performance", "batch_size": batch, "precision": "fp32",
        "latency_ms": {"p50": 1.25, "p90": 2.5, "p99": 5.0},
        "invalid_reasons": [] if valid else ["the 99th percentile latency is above the target"], **extra,
    }


def result(run_id: str, backend: str, tests: list[dict[str, Any]], *, instances: int = 1, model: str = "resnet50") -> dict[str, Any]:
    data = dice_run().to_json()
    data.update(run_id=run_id, precision="fp32", device="cpu", tests=tests, submission_valid=True)
    stamp = f"{run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}T{run_id[9:11]}:{run_id[11:13]}:{run_id[13:15]}+0000"
    data.update(started=stamp, finished=stamp)
    data["backend"]["name"] = backend
    data["model"].update(name=model, rules_key=model, sha256="ab" * 32)
    data["dataset"].update(name="imagenet", count=50000)
    data["settings"].update(instances=instances)
    data["system"]["system_name"] = SYSTEM_NAME
    return data


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ORT at batch 1; OpenVINO at batch 8 (its Server run again, INVALID the second time);
    OpenVINO with four instances; a DLRM run whose batches count rows."""
    path = tmp_path_factory.mktemp("tables") / "results"
    write_run(path, result(ORT, "onnxruntime", [perf("Offline", 1000.0, 1), perf("Server", 900.0, 1)]))
    write_run(path, result(OV, "openvino", [perf("Offline", 4010.0, 8), perf("Server", 2000.0, 8)]))
    write_run(path, result(OV_AGAIN, "openvino", [perf("Offline", 4100.0, 8), perf("Server", 3000.0, 8, valid=False)]))
    write_run(path, result(OV_X4, "openvino", [perf("Offline", 9000.0, 8)], instances=4))
    write_run(path, result(DLRM, "onnxruntime", [perf("Offline", 5.0e5, 700, batch_unit="rows")], model="dlrm-v2"))
    return path


def cli(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = run_cli([*args, "--results", str(root)], cwd=root.parent, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def on_terminal(root: Path, *args: str, columns: int) -> tuple[str, str]:
    """``mlpi ARGS`` with stdout on a pseudo-terminal COLUMNS wide: its screen (escape codes
    taken out) and its stderr."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("MLPI_PLUGINS", "TERM", "FORCE_COLOR")}
    env.update(COLUMNS=str(columns), LINES="50", TERM="xterm-256color")
    proc = subprocess.Popen([sys.executable, "-m", "mlpi", *args, "--results", str(root)], cwd=root.parent, env=env,
                            stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    return ANSI.sub("", screen.decode()).replace("\r\n", "\n"), stderr


def whole_on_a_line(text: str, *values: str) -> None:
    for value in values:
        assert any(value in line for line in text.splitlines()), f"{value!r} is cut or broken across lines:\n{text}"
    assert "…" not in text


def compared(root: Path, *args: str) -> dict[str, Any]:
    proc = cli(root, "compare", *args, "--format", "json")
    data = json.loads(proc.stdout)
    assert [f"warning: {w}" for w in data["warnings"]] == proc.stderr.splitlines()
    return data


# ------------------------------------------------------------------ item A: nothing cut


@pytest.mark.parametrize("columns", [80, 130])
def test_results_list_on_a_narrow_terminal_keeps_run_ids_and_names_whole(root: Path, columns: int) -> None:
    screen, _ = on_terminal(root, "results", "list", columns=columns)
    whole_on_a_line(screen, *RESNET, DLRM, SYSTEM_NAME, "onnxruntime", "openvino", "resnet50", "dlrm-v2")
    assert all(cell_len(line) <= columns for line in screen.splitlines()), screen


@pytest.mark.parametrize("columns", [80, 130, 250])
def test_compare_on_a_terminal_keeps_run_ids_whole_and_fits(root: Path, columns: int) -> None:
    screen, _ = on_terminal(root, "compare", "model=resnet50", "--baseline", ORT, columns=columns)
    whole_on_a_line(screen, *RESNET, SYSTEM_NAME, "onnxruntime", "openvino", "resnet50", "4.01x", "- (INVALID)")
    assert all(cell_len(line) <= columns for line in screen.splitlines()), screen
    if columns == 250:  # wide enough: one table, every column
        assert re.search(r"^model +scenario +system +backend .* instances +run +repeat +speedup *$", screen, re.MULTILINE), screen
        assert "every row" not in screen


def test_piped_output_is_plain_rows_with_nothing_cut(root: Path) -> None:
    for args in (["results", "list"], ["compare", "--baseline", ORT]):
        proc = cli(root, *args, env={"COLUMNS": "80"})
        lines = proc.stdout.splitlines()
        assert not set("┃│━─┏└") & set(proc.stdout), proc.stdout  # no box drawing, no title
        header = re.split(r"\s{2,}", lines[0])
        assert header[0] in ("run id", "model") and len(lines) > 5
        whole_on_a_line(proc.stdout, *RESNET, DLRM, SYSTEM_NAME)
        rows = [re.split(r"\s{2,}", line) for line in lines[1:]]
        assert all(len(row) == len(header) for row in rows), rows  # one row per line, a cell per column
    listed = [re.split(r"\s{2,}", line) for line in cli(root, "results", "list").stdout.splitlines()]
    assert listed[0] == ["run id", "date", "system", "model", "scenario", "backend", "device", "precision", "metric", "valid"]
    assert [row[0] for row in listed[1:]] == [ORT, ORT, OV, OV, OV_AGAIN, OV_AGAIN, OV_X4, DLRM]


def test_a_narrow_table_moves_shared_columns_out_then_leaves_out_low_value_ones() -> None:
    columns = [_Column("run"), _Column("system", drop=2), _Column("model"), _Column("p50 ms", drop=1, right=True),
               _Column("result")]
    lines = [[ORT, SYSTEM_NAME, "resnet50", "1.250", "1,000.0 samples/s"],
             [OV, SYSTEM_NAME, "resnet50", "3.500", "4,010.0 samples/s"]]

    def shown(width: int) -> str:
        out = io.StringIO()
        _emit("t", columns, lines, terminal=True, width=width, file=out)
        text = out.getvalue()
        assert all(cell_len(line) <= width for line in text.splitlines()), text
        whole_on_a_line(text, ORT, OV)
        return text

    wide = shown(200)
    assert SYSTEM_NAME in wide and "every row" not in wide and "not shown" not in wide
    assert re.search(r"^run +system +model +p50 ms +result *\n─+\n", wide, re.MULTILINE), wide  # no vertical rules
    wrapped = shown(105)  # the result wraps at its space; nothing moves
    assert "every row" not in wrapped and "samples/s" in wrapped and "1,000.0 samples/s" not in wrapped
    system = shown(80)  # the system, the same in every row, goes under the table, whole
    assert f"every row: system {SYSTEM_NAME}\n" in system and re.search(r"^run +model +p50 ms +result *$", system, re.MULTILINE)
    assert "not shown" not in system
    shared = shown(66)  # then the model, also the same in every row
    assert f"every row: system {SYSTEM_NAME}; model resnet50\n" in shared and re.search(r"^run +p50 ms +result *$", shared, re.MULTILINE)
    assert "1.250" in shared and "not shown" not in shared
    dropped = shown(54)  # then p50 is left out, and said so
    assert "not shown, the terminal being too narrow: p50 ms" in dropped and "1.250" not in dropped
    blocks = shown(50)  # then one block per row
    assert "─" not in blocks and f"every row: system {SYSTEM_NAME};\n  model resnet50\n" in blocks
    assert f"  run     {ORT}\n" in blocks and "  p50 ms  1.250\n" in blocks


def test_a_terminal_table_prints_hostile_strings_escaped() -> None:
    columns = [_Column("system"), _Column("model"), _Column("backend"), _Column("device")]
    for width in (200, 60, 30):
        out = io.StringIO()
        _emit("t", columns, [[SYSTEM, MODEL, BACKEND, DEVICE], ["x", "y", "z", "w"]], terminal=True, width=width, file=out)
        assert_safe(out.getvalue())
        whole_on_a_line(out.getvalue(), "+cmd|calc\\nrow", "@SUM(1+1)\\x07")


# ------------------------------------------------------------------ item B: honest speedups


def test_batch_size_and_instances_are_shown_and_differences_warned(root: Path) -> None:
    data = compared(root, "scenario=Offline", "--baseline", ORT)
    rows = {r["run"]: r for r in data["rows"]}
    assert [r["run"] for r in data["rows"]] == [DLRM, ORT, OV, OV_AGAIN, OV_X4]
    assert (rows[ORT]["batch_size"], rows[OV]["batch_size"], rows[OV_X4]["instances"]) == (1, 8, 4)
    assert (rows[DLRM]["batch_size"], rows[DLRM]["batch_unit"]) == (700, "rows")
    assert rows[OV]["speedup"] == pytest.approx(4.01)
    assert data["warnings"] == [
        f"dlrm-v2 Offline: the baseline {ORT} did not measure it; no speedup shown",
        "resnet50 Offline: rows differ in batch size (1, 8); a speedup between them measures batching too",
        "resnet50 Offline: rows differ in instances (1, 4); a speedup between them measures that too",
    ]
    table = cli(root, "compare", "scenario=Offline", "--baseline", ORT).stdout.splitlines()
    header = re.split(r"\s{2,}", table[0])
    assert header[-5:] == ["batch", "instances", "run", "repeat", "speedup"]
    cells = {row[header.index("run")]: dict(zip(header, row)) for row in (re.split(r"\s{2,}", line) for line in table[1:])}
    assert (cells[ORT]["batch"], cells[OV]["batch"], cells[DLRM]["batch"]) == ("1", "8", "700 rows")
    assert (cells[OV]["instances"], cells[OV_X4]["instances"]) == ("1", "4")
    assert (cells[ORT]["speedup"], cells[OV]["speedup"], cells[DLRM]["speedup"]) == ("baseline", "4.01x", "-")


def test_no_speedup_from_an_invalid_result_unless_asked(root: Path) -> None:
    data = compared(root, "scenario=Server", "--baseline", ORT)
    rows = {r["run"]: r for r in data["rows"]}
    assert rows[OV]["speedup"] == pytest.approx(2000 / 900) and rows[OV]["speedup_note"] is None
    assert rows[OV_AGAIN]["speedup"] is None and rows[OV_AGAIN]["speedup_note"] == "INVALID"
    assert (f"resnet50 Server: 1 row(s) are INVALID or unfinished ({OV_AGAIN}); no speedup computed for them "
            "(--include-invalid computes them anyway)") in data["warnings"]
    table = cli(root, "compare", "scenario=Server", "--baseline", ORT).stdout
    assert re.search(rf"{OV_AGAIN}\s.*- \(INVALID\)$", table, re.MULTILINE), table

    forced = compared(root, "scenario=Server", "--baseline", ORT, "--include-invalid")
    again = {r["run"]: r for r in forced["rows"]}[OV_AGAIN]
    assert again["speedup"] == pytest.approx(3000 / 900) and again["speedup_note"] == "INVALID"
    assert not any("INVALID" in w for w in forced["warnings"])
    table = cli(root, "compare", "scenario=Server", "--baseline", ORT, "--include-invalid").stdout
    assert re.search(rf"{OV_AGAIN}\s.*3\.33x \(INVALID\)$", table, re.MULTILINE), table

    # An INVALID baseline: nothing is compared to it.
    against = compared(root, "scenario=Server", "--baseline", OV_AGAIN)
    rows = {r["run"]: r for r in against["rows"]}
    assert rows[OV_AGAIN]["baseline"] is True
    assert all(rows[r]["speedup"] is None and rows[r]["speedup_note"] == "baseline INVALID" for r in (ORT, OV))
    assert (f"resnet50 Server: the baseline ({OV_AGAIN}) is INVALID; no speedup computed against it "
            "(--include-invalid computes them anyway)") in against["warnings"]
    markdown = cli(root, "compare", "scenario=Server", "--baseline", OV_AGAIN, "--format", "markdown").stdout
    assert markdown.count("| - (baseline INVALID) |") == 2

    # A baseline filter matching several rows takes the newest valid one.
    newest = compared(root, "scenario=Server", "--baseline", "backend=openvino")
    assert f"resnet50 Server: the baseline backend=openvino matches 2 rows; using the newest valid one ({OV})" in newest["warnings"]
    assert {r["run"]: r["speedup"] for r in newest["rows"]}[ORT] == pytest.approx(900 / 2000)


def test_repeats_are_marked_and_latest_keeps_the_newest(root: Path) -> None:
    data = compared(root, "model=resnet50", "scenario=Offline")
    assert [(r["run"], r["repeat"], r["repeats"]) for r in data["rows"]] == [
        (ORT, 1, 1), (OV, 1, 2), (OV_AGAIN, 2, 2), (OV_X4, 1, 1)]
    markdown = cli(root, "compare", "model=resnet50", "scenario=Offline", "--format", "markdown").stdout.splitlines()
    header = [c.strip() for c in markdown[0].strip("|").split("|")]
    assert header[-5:] == ["valid", "batch", "instances", "run", "repeat"]
    assert [line.strip("|").split("|")[-1].strip() for line in markdown[2:]] == ["-", "1/2", "2/2", "-"]

    latest = compared(root, "model=resnet50", "scenario=Offline", "--latest")
    assert [(r["run"], r["repeat"], r["repeats"]) for r in latest["rows"]] == [(ORT, 1, 1), (OV_AGAIN, 2, 2), (OV_X4, 1, 1)]
    table = cli(root, "compare", "model=resnet50", "scenario=Offline", "--latest").stdout
    assert re.search(rf"{OV_AGAIN}\s+newest of 2$", table, re.MULTILINE), table
    # --latest keeps a named baseline run, even when it is not the newest of its configuration.
    kept = compared(root, "model=resnet50", "scenario=Offline", "--latest", "--baseline", OV)
    assert [(r["run"], r["repeat"], r["repeats"]) for r in kept["rows"]] == [(ORT, 1, 1), (OV, 1, 2), (OV_X4, 1, 1)]
    table = cli(root, "compare", "model=resnet50", "scenario=Offline", "--latest", "--baseline", OV).stdout
    assert re.search(rf"{OV}\s+1/2\s+baseline$", table, re.MULTILINE), table


def test_csv_gets_the_new_columns_at_the_end(root: Path) -> None:
    proc = cli(root, "compare", "scenario=Server", "--baseline", ORT, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    header = proc.stdout.splitlines()[0].split(",")
    assert header[-6:] == ["batch_size", "batch_unit", "instances", "repeat", "repeats", "speedup_note"]
    assert header[:3] == ["run", "started", "model"]  # the columns before keep their places
    by_run = {r["run"]: r for r in rows}
    assert (by_run[OV_AGAIN]["speedup"], by_run[OV_AGAIN]["speedup_note"], by_run[OV_AGAIN]["batch_size"]) == ("", "INVALID", "8")
    assert (by_run[OV]["repeat"], by_run[OV]["repeats"], by_run[OV]["instances"]) == ("1", "2", "1")


def test_the_show_table_on_a_pipe_is_plain(root: Path) -> None:
    shown = cli(root, "results", "show", OV_AGAIN).stdout
    assert "┃" not in shown
    assert re.search(r"^scenario\s{2,}mode\s{2,}result\s{2,}p50 ms\s{2,}p90 ms\s{2,}p99 ms\s{2,}validity$", shown, re.MULTILINE), shown
    assert re.search(r"^Server\s{2,}performance\s{2,}3,000.0 samples/s\s{2,}1.250\s{2,}2.500\s{2,}5.000\s{2,}INVALID$", shown, re.MULTILINE)


def test_the_fixture_reads_back_as_the_schema_says() -> None:
    """Guards the helpers above: a test's batch_unit and the run's instances are where compare reads them."""
    data = result(ORT, "onnxruntime", [perf("Offline", 1.0, 1, batch_unit="rows")])
    from mlpi.core.results.schema import RunResult

    parsed = RunResult.from_json(copy.deepcopy(data))
    assert parsed.tests[0].extra["batch_unit"] == "rows" and parsed.settings.instances == 1
