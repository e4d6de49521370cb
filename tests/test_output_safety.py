"""Strings from result files are printed safely: no terminal control, no rich markup, no
broken markdown rows, no spreadsheet formulas; ``--json`` stays exact."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from conftest import run_cli
from test_result_schema import dice_run, write_run

from mlpi.cli_output import csv_cell, markdown_cell, printable

#: What must never reach the output raw: C0 (a newline only as the printer's own line
#: break), DEL, C1 and the bidi embeddings/overrides/isolates.
RAW = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

# An OSC 8 hyperlink, an RLO, rich markup and a clear-screen in the system name; formulas
# elsewhere; a newline and a pipe in the device; a leading tab in the precision.
SYSTEM = "lab\x1b]8;;http://evil/\x1b\\click\x1b]8;;\x1b\\\u202egpj.exe[link=http://evil]x[/link]\x1b[2J"
MODEL = '=HYPERLINK("http://evil","x")'
BACKEND = "@SUM(1+1)\x07"
DEVICE = "+cmd|calc\nrow"
PRECISION = "\t=1+1"
DATASET = "-2+3\u2066"
NOTE = "note\r\x1b[1A"
REASON = "reason\x9b31m"


def hostile_run() -> dict[str, Any]:
    data = dice_run().to_json()
    data["system"]["system_name"] = SYSTEM
    data["model"]["name"] = MODEL
    data["model"]["note"] = NOTE
    data["backend"]["name"] = BACKEND
    data["device"] = DEVICE
    data["precision"] = PRECISION
    data["dataset"]["name"] = DATASET
    data["tests"][0].update(value=-2.5, latency_ms={"p50": -1.5, "p90": 2.0, "p99": 3.0})
    data["tests"][0]["invalid_reasons"] = [REASON]
    return data


def clean_twin(data: dict[str, Any]) -> dict[str, Any]:
    """The same model and scenario on a plain dataset: compare warns that the datasets differ."""
    twin = json.loads(json.dumps(data))
    twin["run_id"] = "20261202-080000-3d-unet-onnxruntime-cpu"
    twin["started"], twin["finished"] = "2026-12-02T08:00:00+0000", "2026-12-02T08:10:00+0000"
    twin["dataset"]["name"] = "numpy"
    return twin


def cli(args: list[str], cwd: Path) -> Any:
    return run_cli(args, cwd=cwd, env={"COLUMNS": "500"})  # wide enough that no cell is cut


def assert_safe(text: str) -> None:
    found = RAW.findall(text)
    assert not found, found


def test_printable_escapes_controls_and_bidi_and_nothing_else() -> None:
    assert printable("a\x1bb\x00c\x7fd\x85e\x9bf") == "a\\x1bb\\x00c\\x7fd\\x85e\\x9bf"
    assert printable("l\nr\rt\t") == "l\\nr\\rt\\t"
    for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)):
        assert printable(f"x{chr(code)}y") == f"x\\u{code:04x}y"
    plain = "résumé µs 中文 ≤ 😀 C:\\models\\r50.onnx [bold]"
    assert printable(plain) == plain
    assert printable(None) == "None" and printable(2.5) == "2.5"


def test_cells_for_markdown_and_csv() -> None:
    assert markdown_cell("a|b\nc") == "a\\|b\\nc"
    for text in ("=1+1", "+1", "-1", "@x", "\tx", "\rx"):
        assert csv_cell(text).startswith("'"), text
    assert csv_cell("\t=1") == "'\\t=1"
    assert csv_cell("resnet50") == "resnet50" and csv_cell("a=b") == "a=b"
    # Numbers and booleans are not text: a negative figure stays a number.
    assert csv_cell(-2.5) == -2.5 and csv_cell(-3) == -3 and csv_cell(True) is True and csv_cell(None) == ""


def test_results_list_show_and_compare_print_result_strings_safely(tmp_path: Path) -> None:
    root = tmp_path / "results"
    data = hostile_run()
    write_run(root, data)
    write_run(root, clean_twin(data))
    escaped_system = "lab\\x1b]8;;http://evil/\\x1b\\click\\x1b]8;;\\x1b\\\\u202egpj.exe[link=http://evil]x[/link]\\x1b[2J"

    listed = cli(["results", "list", "--results", str(root)], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert_safe(listed.stdout)
    assert escaped_system in listed.stdout  # markup shown as text, not run
    assert "@SUM(1+1)\\x07" in listed.stdout and "+cmd|calc\\nrow" in listed.stdout and "\\t=1+1" in listed.stdout

    shown = cli(["results", "show", data["run_id"], "--results", str(root)], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert_safe(shown.stdout)
    assert f"system:               {escaped_system}\n" in shown.stdout
    assert f"model:                {MODEL} (note\\r\\x1b[1A)\n" in shown.stdout
    assert "dataset:              -2+3\\u2066\n" in shown.stdout
    assert "Offline performance: reason\\x9b31m\n" in shown.stdout
    assert "-1.500" in shown.stdout and "-2.5 samples/s" in shown.stdout

    table = cli(["compare", "--results", str(root)], tmp_path)
    assert table.returncode == 0, table.stderr
    assert_safe(table.stdout)
    assert_safe(table.stderr)
    assert escaped_system in table.stdout and MODEL in table.stdout
    assert "rows used different datasets (-2+3\\u2066, numpy)" in table.stderr

    markdown = cli(["compare", "--results", str(root), "--format", "markdown"], tmp_path)
    assert markdown.returncode == 0, markdown.stderr
    assert_safe(markdown.stdout)
    lines = markdown.stdout.strip().splitlines()
    assert len(lines) == 4  # header, alignment, two rows: the newline did not start a row
    assert f"| {MODEL} | Offline | {escaped_system} | @SUM(1+1)\\x07 | +cmd\\|calc\\nrow | \\t=1+1 | -2.5 samples/s | -1.500 |" in lines[2]

    as_csv = cli(["compare", "--results", str(root), "--format", "csv"], tmp_path)
    assert as_csv.returncode == 0, as_csv.stderr
    assert_safe(as_csv.stdout)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == 2
    row = rows[0]
    assert row["model"] == "'" + MODEL and row["backend"] == "'@SUM(1+1)\\x07" and row["device"] == "'+cmd|calc\\nrow"
    assert row["precision"] == "'\\t=1+1" and row["dataset"] == "'-2+3\\u2066" and row["system"] == escaped_system
    assert (row["value"], row["p50_ms"], row["p90_ms"]) == ("-2.5", "-1.5", "2.0")  # numbers intact
    assert rows[1]["dataset"] == "numpy" and rows[1]["scenario"] == "Offline"

    # --json is exact: JSON escaping already makes it safe.
    as_json = cli(["compare", "--results", str(root), "--format", "json"], tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    first = json.loads(as_json.stdout)["rows"][0]
    assert (first["system"], first["model"], first["backend"], first["device"], first["precision"], first["dataset"]) == (
        SYSTEM, MODEL, BACKEND, DEVICE, PRECISION, DATASET)
    assert_safe(as_json.stdout)
    listed_json = cli(["results", "list", "--results", str(root), "--json"], tmp_path)
    assert json.loads(listed_json.stdout)[0]["system"] == SYSTEM
    shown_json = cli(["results", "show", data["run_id"], "--results", str(root), "--json"], tmp_path)
    assert json.loads(shown_json.stdout)["model"]["note"] == NOTE
