"""The report page: one self-contained HTML file (inline CSS and SVG, no external resource).

Every charted value is also in a text table, and the whole data set is embedded as JSON in
a ``<script type="application/json" id="report-data">`` block for tools that read the page.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from mlpi.core.results.rundir import format_figure
from mlpi.report.charts import Chart
from mlpi.report.data import (
    PERCENTILES,
    Bar,
    Efficiency,
    RunRecord,
    ScenarioResult,
    format_ms,
    validity,
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#1d1d1f}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
.meta{color:#555;margin:.2rem 0}
.notice{background:#fff7e0;border-left:4px solid #f0b400;padding:.5rem .8rem;margin:.6rem 0}
.warn{background:#fdecea;border-left:4px solid #e45756;padding:.5rem .8rem;margin:.6rem 0}
figure{margin:1rem 0}figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:.85rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left}th{background:#f4f4f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.flag td{background:#fffbea}
code{font-size:.85rem}
"""

#: Runs in the viewer: checks the embedded data parses and writes the summary line.
SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById('report-data').textContent);
  var tests = data.runs.reduce(function (n, r) { return n + r.tests.length; }, 0);
  var drawn = data.charts.filter(function (c) { return !c.empty; }).length;
  var summary = document.getElementById('summary');
  summary.textContent = data.runs.length + ' run(s), ' + tests + ' test(s), ' + drawn + ' of ' +
    data.charts.length + ' chart(s) with data.';
  document.documentElement.setAttribute('data-report', 'ready');
})();
"""


def _cell(value: Any, numeric: bool = False) -> str:
    cls = ' class="num"' if numeric else ""
    return f"<td{cls}>{escape(str(value))}</td>"


def _table(table_id: str, head: list[str], rows: list[tuple[list[str], bool]]) -> str:
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    flag = ' class="flag"'
    body = "".join(f"<tr{flag if flagged else ''}>{''.join(cells)}</tr>" for cells, flagged in rows)
    return f'<table id="{table_id}"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _figure(chart: Chart) -> str:
    return (f'<figure id="figure-{chart.key}">{chart.svg}<figcaption>{escape(chart.title)} '
            f'(also <a href="{chart.key}.png">{chart.key}.png</a>)</figcaption></figure>')


def submission_text(run: RunRecord) -> str:
    """``yes``, or ``no: <why>`` (quick, a test INVALID, an accuracy test without a score...)."""
    return "yes" if run.submission_valid else f"no: {'; '.join(run.submission_reasons) or 'not recorded as valid'}"


def _runs_table(runs: list[RunRecord]) -> str:
    rows = []
    for run in runs:
        weights = f" ({run.weights} weights)" if run.weights == "random" else ""
        cells = [
            _cell(run.run_id), _cell(run.label), _cell(f"{run.backend} {run.backend_version}"), _cell(run.device),
            _cell(f"{run.model}{weights}"), _cell(run.precision), _cell(run.setting or "-"), _cell(run.status),
            _cell("yes" if run.quick else "no"), _cell("yes" if run.simulated else "no"),
            _cell(submission_text(run)),
        ]
        rows.append((cells, run.quick or run.simulated or not run.submission_valid))
    head = ["run", "label", "backend", "device", "model", "precision", "batch (as run), instances", "status", "quick", "simulated",
            "submission valid"]
    return _table("table-runs", head, rows)


def _tests_table(runs: list[RunRecord]) -> str:
    rows = []
    for run in runs:
        for test in run.tests:
            cells = [_cell(run.label), _cell(run.model), _cell(test.scenario), _cell(test.mode), _cell(test.batch_text()),
                     _cell(format_figure(test.value, test.unit), True), _cell(test.metric or "-"), _cell(validity(test))]
            rows.append((cells, test.quick or test.simulated or _unscored(test)))
    return _table("table-tests", ["run", "model", "scenario", "mode", "batch", "result", "metric", "validity"], rows)


def _throughput_table(groups: dict[tuple[str, str], list[Bar]]) -> str:
    rows = []
    for (model, scenario), bars in groups.items():
        for bar in bars:
            cells = [_cell(model), _cell(scenario), _cell(bar.run.label),
                     _cell(format_figure(bar.test.value, bar.test.unit), True), _cell(validity(bar.test)),
                     _cell(bar.test.batch_text())]
            rows.append((cells, bar.test.quick or bar.test.simulated))
    return _table("table-throughput", ["model", "scenario", "backend/device", "throughput", "validity", "batch"], rows)


def _latency_table(groups: dict[str, list[Bar]]) -> str:
    rows = []
    for scenario, bars in groups.items():
        for bar in bars:
            cells = [_cell(scenario), _cell(bar.run.label), _cell(bar.run.model), _cell(bar.test.latency_kind or "")]
            cells += [_cell(format_ms(bar.test.latency_ms[p]), True) for p in PERCENTILES]
            cells += [_cell(validity(bar.test)), _cell(bar.test.batch_text())]
            rows.append((cells, bar.test.quick or bar.test.simulated))
    head = ["scenario", "run", "model", "latency of", *(f"{p} (ms)" for p in PERCENTILES), "validity", "batch"]
    return _table("table-latency", head, rows)


def _efficiency_table(data: Efficiency) -> str:
    rows = []
    for row in data.rows:
        valid = "-" if row.valid is None else ("VALID" if row.valid else "INVALID")
        cells = [_cell(row.backend), _cell(f"{row.own_loop:,.1f}", True), _cell(f"{row.mlpi_offline:,.1f}", True),
                 _cell(f"{row.ratio:.3f}", True), _cell(valid)]
        rows.append((cells, row.ratio < 0.95))
    return _table("table-efficiency", ["backend", "own loop (samples/s)", "mlpi Offline (samples/s)", "ratio", "mlpi validity"], rows)


def _unscored(test: ScenarioResult) -> bool:
    """An accuracy test that ran to the end and has no score."""
    return test.status == "ok" and not test.scored


def _notices(runs: list[RunRecord]) -> str:
    parts = []
    quick = [r.label for r in runs if r.quick]
    simulated = [r.label for r in runs if r.simulated]
    if quick:
        parts.append(f'<p class="notice" id="notice-quick">Quick runs (short development runs, not valid for submission): '
                     f"{escape(', '.join(quick))}. Their bars are hatched and their rows highlighted.</p>")
    if simulated:
        parts.append(f'<p class="notice" id="notice-simulated">Simulated results (not measured on real hardware): '
                     f"{escape(', '.join(simulated))}.</p>")
    unscored = [f"{r.label} ({', '.join(t.scenario for t in r.tests if _unscored(t))})" for r in runs
                if any(_unscored(t) for t in r.tests)]
    if unscored:
        parts.append(f'<p class="notice" id="notice-unscored">Accuracy tests without a score (no accuracy figure, '
                     f"e.g. a dataset without ground truth; not valid for submission): {escape('; '.join(unscored))}.</p>")
    return "".join(parts)


def _json_for_script(data: Any) -> str:
    """JSON that cannot end the script element it sits in."""
    return json.dumps(data, indent=1).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page(
    *,
    runs: list[RunRecord],
    throughput: tuple[Chart, dict[tuple[str, str], list[Bar]]],
    latency: tuple[Chart, dict[str, list[Bar]]],
    efficiency: tuple[Chart, Efficiency] | None,
    warnings: list[str],
    generated: str,
    version: str,
    data: dict[str, Any],
) -> str:
    """The whole report page as one string."""
    sections = [
        f'<section id="section-runs"><h2>Runs</h2>{_runs_table(runs)}<h3>Tests</h3>{_tests_table(runs)}</section>'
        if runs else '<section id="section-runs"><h2>Runs</h2><p>No runs were given.</p></section>',
        f'<section id="section-throughput"><h2>Throughput per backend/device</h2>'
        f"<p>Offline: samples per second; Server: completed queries per second (one sample each). "
        f"Grouped by model and scenario.</p>{_figure(throughput[0])}"
        + (_throughput_table(throughput[1]) if throughput[1] else "<p>No throughput data.</p>") + "</section>",
        f'<section id="section-latency"><h2>Latency percentiles per scenario</h2>'
        f"<p>From each test's LoadGen log, in milliseconds: per sample for Server and SingleStream, per query "
        f"for MultiStream. Offline has no latency metric.</p>{_figure(latency[0])}"
        + (_latency_table(latency[1]) if latency[1] else '<p id="latency-empty">No latency data.</p>') + "</section>",
    ]
    if efficiency is not None:
        chart, eff = efficiency
        sections.append(
            f'<section id="section-efficiency"><h2>Efficiency against each runtime\'s own loop</h2>'
            f"<p>mlpi Offline throughput divided by the runtime's own tight loop on the same model, batch and "
            f"options (<code>{escape(eff.source.name)}</code>, model {escape(eff.model)}). 1.0 is parity; "
            f"rows below 0.95 are highlighted.</p>{_figure(chart)}{_efficiency_table(eff)}</section>"
        )
    if warnings:
        items = "".join(f"<li>{escape(w)}</li>" for w in warnings)
        sections.append(f'<section id="section-warnings"><h2>Skipped</h2><div class="warn"><ul>{items}</ul></div></section>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>mlpi report</title><style>{CSS}</style></head><body>"
        f'<header><h1>mlpi report</h1><p class="meta">Generated {escape(generated)} by mlpi {escape(version)} '
        f"from {len(runs)} run(s).</p><p class=\"meta\" id=\"summary\"></p>{_notices(runs)}</header>"
        + "".join(sections)
        + f'<script type="application/json" id="report-data">{_json_for_script(data)}</script>'
        f"<script>{SCRIPT}</script></body></html>\n"
    )
