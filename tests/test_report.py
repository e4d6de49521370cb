"""`mlpi report` end to end: real runs (ONNX Runtime and null on a tiny model), the HTML read
back by headless Chromium after its scripts ran, and the PNG charts beside it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from mlpi.testing import tiny_models

pytest.importorskip("matplotlib", reason="mlpi report needs matplotlib: pip install -e '.[report]'")
Image = pytest.importorskip("PIL.Image", reason="pillow (a matplotlib dependency) reads the PNGs back")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real runs: ONNX Runtime in every scenario, null in Offline only."""
    work = tmp_path_factory.mktemp("report-runs")
    model = tiny_models.conv_model(work / "conv.onnx", size=16, width=8)
    root = work / "results"
    for args in (["-s", "Offline", "-s", "Server", "-s", "SingleStream", "-s", "MultiStream"],
                 ["--backend", "null", "-s", "Offline"]):
        proc = run_cli(["run", "--model-path", str(model), *args, "--duration", "0.5", "--output", str(root)], cwd=work)
        assert proc.returncode in (0, 3), proc.stderr  # 3: a quick run LoadGen judged INVALID still has figures
    return root


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "result.json").exists())


def results(root: Path) -> dict[str, dict[str, Any]]:
    return {p.name: json.loads((p / "result.json").read_text()) for p in run_dirs(root)}


def detail_value(run_dir: Path, scenario: str, key: str) -> float:
    """One figure read straight from LoadGen's detail log (independently of mlpi's parser)."""
    text = (run_dir / scenario / "performance" / "mlperf_log_detail.txt").read_text()
    values = re.findall(r'"key": "' + re.escape(key) + r'", "value": ([0-9.e+-]+)', text)
    assert values, f"{key} not in {scenario}'s detail log"
    return float(values[-1])


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium binary on PATH (Debian: apt-get install -y chromium)")


def browser(html: Path, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="mlpi-chromium-") as profile:
        return subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, html.resolve().as_uri()],
            capture_output=True, text=True, timeout=180,
        )


def ink(png: Path) -> int:
    """Distinct colours in an image: a blank render has one or two."""
    with Image.open(png) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])


class Attributes(HTMLParser):
    """Every tag and attribute of a page, and its scripts' text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_json: list[str] = []
        self._in_json = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_json = tag == "script" and dict(attrs).get("type") == "application/json"

    def handle_endtag(self, tag: str) -> None:
        self._in_json = False

    def handle_data(self, data: str) -> None:
        if self._in_json:
            self.script_json.append(data)


def parse(text: str) -> Attributes:
    parser = Attributes()
    parser.feed(text)
    return parser


@pytest.fixture(scope="module")
def report_dir(runs_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    proc = run_cli(["report", str(runs_root), "--out", str(out)], cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    assert f"report: {out / 'report.html'} (2 run(s))" in proc.stdout
    return out


def test_pngs_are_real_charts(report_dir: Path) -> None:
    assert sorted(p.name for p in report_dir.iterdir()) == ["latency.png", "report.html", "throughput.png"]
    for name in ("throughput.png", "latency.png"):
        png = report_dir / name
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert png.stat().st_size > 10_000
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 400 and image.height > 200
        assert ink(png) > 50, f"{name} looks blank"


def test_html_is_self_contained(report_dir: Path) -> None:
    text = (report_dir / "report.html").read_text()
    page = parse(text)
    links = [(tag, key, value or "") for tag, attrs in page.tags for key, value in attrs.items()
             if key in ("src", "href", "xlink:href", "action", "srcset", "poster", "data")]
    assert links, "the page links its PNGs at least"
    for tag, key, value in links:
        assert value.startswith("#") or value in ("throughput.png", "latency.png"), (tag, key, value)
    assert not [tag for tag, _ in page.tags if tag in ("link", "iframe", "object", "embed", "img")]
    assert not [attrs for tag, attrs in page.tags if tag == "script" and "src" in attrs]
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", text)
    ids = [attrs["id"] for _, attrs in page.tags if attrs.get("id")]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


def test_embedded_data_matches_the_runs(runs_root: Path, report_dir: Path) -> None:
    page = parse((report_dir / "report.html").read_text())
    (block,) = page.script_json
    data = json.loads(block)
    runs = results(runs_root)
    assert {r["run_id"] for r in data["runs"]} == set(runs)
    expected = {(run_id, t["scenario"]): t["value"] for run_id, r in runs.items() for t in r["tests"]
                if t["scenario"] in ("Offline", "Server")}
    assert {(row["run_id"], row["scenario"]): row["value"] for row in data["throughput"]} == expected
    ort_dir = next(p for p in run_dirs(runs_root) if "onnxruntime" in p.name)
    latency = {row["scenario"]: row for row in data["latency"]}
    assert set(latency) == {"Server", "SingleStream", "MultiStream"}  # null ran Offline only: no latency
    assert latency["Server"]["p99_ms"] == pytest.approx(detail_value(ort_dir, "Server", "result_99.00_percentile_latency_ns") / 1e6)
    assert latency["MultiStream"]["p50_ms"] == pytest.approx(
        detail_value(ort_dir, "MultiStream", "result_50.00_percentile_per_query_latency_ns") / 1e6)
    assert all(row["quick"] for row in data["throughput"]) and not any(row["simulated"] for row in data["throughput"])


def test_chromium_shows_charts_and_values(runs_root: Path, report_dir: Path) -> None:
    proc = browser(report_dir / "report.html", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-report="ready"' in dom  # the page's own script ran over its embedded data
    runs = results(runs_root)
    tests = sum(len(r["tests"]) for r in runs.values())
    assert f"{len(runs)} run(s), {tests} test(s), 2 of 2 chart(s) with data." in dom
    for key, title in (("throughput", "Throughput per backend/device"), ("latency", "Latency percentiles per scenario")):
        assert re.search(rf'<svg id="chart-{key}"[^>]*><title id="chart-{key}-title">{title}</title>', dom)
    assert "chart-efficiency" not in dom  # no --efficiency file given
    throughput_table = dom[dom.index('<table id="table-throughput"'):]
    throughput_table = throughput_table[:throughput_table.index("</table>")]
    for run_id, result in runs.items():
        label = f"{result['backend']['name']}/{result['device']}"
        for test in result["tests"]:
            if test["scenario"] in ("Offline", "Server"):
                printed = f"{test['value']:,.1f} samples/s"
                row = re.search(rf"<tr[^>]*><td>conv</td><td>{test['scenario']}</td><td>{re.escape(label)}</td>"
                                rf'<td class="num">{re.escape(printed)}</td>', throughput_table)
                assert row, (run_id, test["scenario"], printed)
                assert f'id="throughput-bar-{test["scenario"]}-{run_id}"' in dom
    ort_dir = next(p for p in run_dirs(runs_root) if "onnxruntime" in p.name)
    p99 = detail_value(ort_dir, "SingleStream", "result_99.00_percentile_latency_ns") / 1e6
    printed = f"{p99:,.3f}" if p99 >= 0.1 else f"{p99:.3g}"
    assert re.search(rf"<td>SingleStream</td><td>onnxruntime/cpu</td><td>conv</td><td>per sample</td>"
                     rf'(<td class="num">[^<]+</td>){{2}}<td class="num">{re.escape(printed)}</td>', dom)
    assert f'id="latency-bar-SingleStream-{ort_dir.name}-p99"' in dom
    assert 'id="notice-quick"' in dom and 'id="notice-simulated"' not in dom
    assert "hatched //: quick run (not valid for submission)" in dom


def test_chromium_renders_the_page(report_dir: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    proc = browser(report_dir / "report.html", f"--screenshot={shot}", "--window-size=1280,2400")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == PNG_MAGIC
    assert ink(shot) > 100, "the rendered page looks blank"


def test_refuses_to_overwrite_without_force(runs_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("an earlier report")
    (out / "efficiency.png").write_bytes(b"stale chart")
    proc = run_cli(["report", str(runs_root), "--out", str(out)], cwd=tmp_path)
    assert proc.returncode == 2
    assert f"error: {out / 'report.html'} already exists" in proc.stderr
    assert "hint: pass --force" in proc.stderr
    assert (out / "report.html").read_text() == "an earlier report"
    assert not (out / "throughput.png").exists()
    proc = run_cli(["report", str(runs_root), "--out", str(out), "--force"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 'id="chart-throughput"' in (out / "report.html").read_text()
    assert not (out / "efficiency.png").exists()  # a replaced report keeps no chart it does not have


def test_unreadable_run_is_skipped_with_a_warning(runs_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "results"
    for run_dir in run_dirs(runs_root):
        shutil.copytree(run_dir, root / run_dir.name)
    broken = root / "20000101-000000-broken"
    broken.mkdir()
    (broken / "result.json").write_text('{"tests": [')
    proc = run_cli(["report", str(root), "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"warning: skipped: {broken.resolve() / 'result.json'} is damaged (Expecting value at line 1)" in proc.stderr
    assert "(2 run(s))" in proc.stdout
    text = (tmp_path / "out" / "report.html").read_text()
    assert 'id="section-warnings"' in text and "20000101-000000-broken" in text
    # only broken runs: an error, not an empty report
    proc = run_cli(["report", str(broken), "--out", str(tmp_path / "out2")], cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: no readable run in" in proc.stderr and "result.json is damaged (Expecting value" in proc.stderr
    assert not (tmp_path / "out2").exists()


def test_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_cli(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0].startswith(f"error: no runs found in {tmp_path / 'empty'}")
    assert proc.stderr.splitlines()[1].startswith("hint: pass run directories")
    proc = run_cli(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == 2
    assert f"error: {tmp_path / 'missing'} does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_simulated_run_without_latency_data(runs_root: Path, tmp_path: Path) -> None:
    null_dir = next(p for p in run_dirs(runs_root) if "null" in p.name)
    copy = tmp_path / null_dir.name
    shutil.copytree(null_dir, copy)
    # No simulating backend exists on this machine: the flag such a run carries is set by hand.
    result = json.loads((copy / "result.json").read_text())
    result["simulated"] = True
    (copy / "result.json").write_text(json.dumps(result))
    out = tmp_path / "out"
    proc = run_cli(["report", str(copy), "--out", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    dom = (out / "report.html").read_text()
    data = json.loads(parse(dom).script_json[0])
    assert [(c["key"], c["empty"]) for c in data["charts"]] == [("throughput", False), ("latency", True)]
    assert data["latency"] == [] and [row["simulated"] for row in data["throughput"]] == [True]
    assert 'id="notice-simulated"' in dom
    assert "No latency data" in dom[dom.index('<svg id="chart-latency"'):dom.index("</svg>", dom.index('<svg id="chart-latency"'))]
    assert 'id="latency-empty"' in dom
    assert "VALID (quick, simulated)" in dom or "INVALID (quick, simulated)" in dom
    assert "hatched xx: simulated (not measured on hardware)" in dom
    assert ink(out / "latency.png") > 2


def test_efficiency_json_from_the_benchmark(runs_root: Path, tmp_path: Path) -> None:
    eff = tmp_path / "efficiency.json"
    env = {k: v for k, v in os.environ.items() if k != "MLPI_PLUGINS"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "backend_efficiency.py"), "--backend", "onnxruntime", "--model", "conv",
         "--size", "16", "--width", "8", "--batch-size", "4", "--duration", "1", "--json", str(eff)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(eff.read_text())
    assert data["format"] == "mlpi-backend-efficiency/1" and data["batch_size"] == 4
    (row,) = data["rows"]
    assert row["backend"] == "onnxruntime" and row["own_loop_samples_per_s"] > 0 and row["mlpi_offline_samples_per_s"] > 0
    ratio = row["mlpi_offline_samples_per_s"] / row["own_loop_samples_per_s"]
    assert f"{ratio:>8.3f}" in proc.stdout  # the same figure the benchmark printed

    out = tmp_path / "out"
    proc = run_cli(["report", str(runs_root), "--out", str(out), "--efficiency", str(eff)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "efficiency.png").read_bytes()[:8] == PNG_MAGIC and ink(out / "efficiency.png") > 50
    dom = (out / "report.html").read_text()
    assert re.search(r'<svg id="chart-efficiency"[^>]*><title id="chart-efficiency-title">Efficiency against each '
                     r"runtime's own loop</title>", dom)
    assert 'id="efficiency-line-1.00"' in dom and 'id="efficiency-line-0.95"' in dom
    assert re.search(rf'<td>onnxruntime</td><td class="num">{row["own_loop_samples_per_s"]:,.1f}</td>'
                     rf'<td class="num">{row["mlpi_offline_samples_per_s"]:,.1f}</td><td class="num">{ratio:.3f}</td>', dom)
    assert [c["key"] for c in json.loads(parse(dom).script_json[0])["charts"]] == ["throughput", "latency", "efficiency"]


def test_bad_efficiency_file(runs_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "eff.json"
    bad.write_text(json.dumps({"format": "something else", "rows": []}))
    proc = run_cli(["report", str(runs_root), "--out", str(tmp_path / "out"), "--efficiency", str(bad)], cwd=tmp_path)
    assert proc.returncode == 2
    assert f"error: efficiency file {bad} is not mlpi-backend-efficiency/1 output" in proc.stderr
    assert "hint: write it with: python benchmarks/backend_efficiency.py --json FILE" in proc.stderr


def test_missing_matplotlib_is_a_clear_error(runs_root: Path, tmp_path: Path) -> None:
    # matplotlib is installed here; blocking its import stands in for a machine without it.
    code = ("import sys; sys.modules['matplotlib'] = None; from mlpi.cli import main; "
            f"main(['report', {str(runs_root)!r}, '--out', {str(tmp_path / 'out')!r}])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["error: mlpi report needs matplotlib, which is not installed",
                                        "hint: pip install 'mlpi[report]'"]
    assert not (tmp_path / "out").exists()


def test_runs_sharing_backend_and_device_are_told_apart(runs_root: Path, tmp_path: Path) -> None:
    null_dir = next(p for p in run_dirs(runs_root) if "null" in p.name)
    root = tmp_path / "results"
    for name in ("a-first", "b-second"):
        shutil.copytree(null_dir, root / name)
    proc = run_cli(["report", str(root), str(root / "a-first"), "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(2 run(s))" in proc.stdout  # a run named twice is read once
    page = parse((tmp_path / "out" / "report.html").read_text())
    data = json.loads(page.script_json[0])
    labels = dict(sorted((r["run_id"], r["label"]) for r in data["runs"]))
    # Copies of one run: same settings and start time, so only the run id tells them apart.
    assert labels == {"a-first": "null/cpu [a-first]", "b-second": "null/cpu [b-second]"}
    ids = [attrs["id"] for _, attrs in page.tags if attrs.get("id")]
    assert "throughput-bar-Offline-a-first" in ids and "throughput-bar-Offline-b-second" in ids
    assert len(ids) == len(set(ids))


def test_runs_with_different_settings_are_labelled_by_them(runs_root: Path, tmp_path: Path) -> None:
    null_dir = next(p for p in run_dirs(runs_root) if "null" in p.name)
    root = tmp_path / "results"
    for name, batch, instances in (("a", 4, 1), ("b", 16, 2)):
        shutil.copytree(null_dir, root / name)
        result = json.loads((root / name / "result.json").read_text())
        result["settings"].update(batch_size=batch, instances=instances)
        for test in result["tests"]:  # the label says the batch the tests ran, not the one asked
            test["batch_size"] = batch
        (root / name / "result.json").write_text(json.dumps(result))
    proc = run_cli(["report", str(root), "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(parse((tmp_path / "out" / "report.html").read_text()).script_json[0])
    assert {r["run_id"]: r["label"] for r in data["runs"]} == {"a": "null/cpu bs4", "b": "null/cpu bs16 x2"}
