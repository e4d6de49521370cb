"""The report's charts, drawn with matplotlib's object API (no pyplot, no GUI backend).

Each chart is rendered twice from one figure: an SVG string to inline in the HTML (text kept
as text, ids made unique per chart) and a PNG to write beside it. A chart with nothing to
show still renders, saying so, so a report never fails for a missing piece.
"""

from __future__ import annotations

import io
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlpi.core.contract.errors import PluginError
from mlpi.report.data import PERCENTILES, Bar, Efficiency, RunRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

QUICK_HATCH = "//"
SIMULATED_HATCH = "xx"
PERCENTILE_COLORS = {"p50": "#4c78a8", "p90": "#f58518", "p99": "#e45756"}
RUN_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d", "#bab0ac", "#eeca3b")
MARKER_NOTES = {
    QUICK_HATCH: f"hatched {QUICK_HATCH}: quick run (not valid for submission)",
    SIMULATED_HATCH: f"hatched {SIMULATED_HATCH}: simulated (not measured on hardware)",
}
#: A panel whose largest value is this many times its smallest gets a log axis.
LOG_SCALE_SPREAD = 50.0
THROUGHPUT_AXIS = {"Offline": "samples/s", "Server": "QPS (completed samples/s)"}
PNG_DPI = 110
LATENCY_TITLE = "Latency percentiles per scenario"


@dataclass(frozen=True)
class Chart:
    """One rendered chart: ``key`` names its id in the page and its PNG file."""

    key: str
    title: str
    svg: str
    png: bytes
    empty: bool


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PluginError("mlpi report needs matplotlib, which is not installed", "pip install 'mlpi[report]'") from None
    return matplotlib


def run_colors(runs: list[RunRecord]) -> dict[str, str]:
    """One colour per run, the same in every chart."""
    return {run.run_id: RUN_COLORS[number % len(RUN_COLORS)] for number, run in enumerate(runs)}


def _hatch(bar: Bar) -> str | None:
    if bar.test.simulated:
        return SIMULATED_HATCH
    return QUICK_HATCH if bar.test.quick else None


def _tick(bar: Bar, *, model: bool = False) -> str:
    """The run's label, one part a line (backend/device, then what tells it from the others),
    with the model first where a panel mixes models, and the markers a reader must not miss."""
    marks = [m for m, on in (("INVALID", bar.test.valid is False), ("quick", bar.test.quick), ("simulated", bar.test.simulated)) if on]
    parts = list(bar.run.label_parts or [bar.run.label])
    if model and bar.run.model not in parts:
        parts.insert(0, bar.run.model)
    label = "\n".join(parts)
    return f"{label}\n[{', '.join(marks)}]" if marks else label


def _panel_width(panels: Iterable[list[Bar]], *, models: bool = False) -> float:
    """Inches for a panel of bars whose tick labels do not run into each other: 1.25 a bar, or
    more where a label's longest line needs it (about 0.075 inch a character at 8 points)."""
    width = 1.0
    for bars in panels:
        mixed = models and len({b.run.model for b in bars}) > 1
        longest = max((len(line) for b in bars for line in _tick(b, model=mixed).splitlines()), default=0)
        width = max(width, len(bars) * max(1.25, 0.075 * longest + 0.2) + 1)
    return width


def _figure(panels: int, height: float, width_per_panel: float) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    columns = min(max(panels, 1), 3)
    rows = -(-max(panels, 1) // columns)
    fig = Figure(figsize=(max(6.0, width_per_panel * columns), height * rows), layout="constrained")
    axes = [fig.add_subplot(rows, columns, n + 1) for n in range(max(panels, 1))]
    return fig, axes


def _empty(fig: Figure, axes: Axes, message: str) -> None:
    axes.set_axis_off()
    axes.text(0.5, 0.5, textwrap.fill(message, 72), ha="center", va="center", fontsize=11, transform=axes.transAxes, gid="no-data")


def _marker_note(fig: Figure, hatches: set[str | None]) -> None:
    notes = [text for hatch, text in MARKER_NOTES.items() if hatch in hatches]
    if notes:
        fig.supxlabel("   ".join(notes), fontsize=8)


def _log_scale(values: list[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) and max(positive) / min(positive) > LOG_SCALE_SPREAD


def _ms(value: float) -> str:
    """A latency value label: ``2,210`` rather than ``2.21e+03``, three significant digits below 100."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _short(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def throughput(groups: dict[tuple[str, str], list[Bar]], colors: dict[str, str]) -> Chart:
    """Bars per run, one panel per model x scenario (Offline samples/s, Server QPS)."""
    _matplotlib()
    fig, axes = _figure(len(groups), 3.8 if groups else 2.4, max(4.2, _panel_width(groups.values())))
    fig.suptitle("Throughput per backend/device")
    if not groups:
        _empty(fig, axes[0], "No data: these runs have no completed Offline or Server performance test.")
        return render("throughput", "Throughput per backend/device", fig, empty=True)
    hatches: set[str | None] = set()
    for ax, ((model, scenario), bars) in zip(axes, groups.items()):
        positions = list(range(len(bars)))
        values = [b.test.value or 0.0 for b in bars]
        log = _log_scale(values)
        for pos, bar in zip(positions, bars):
            hatch = _hatch(bar)
            hatches.add(hatch)
            patch = ax.bar(pos, bar.test.value, color=colors[bar.run.run_id], hatch=hatch, edgecolor="#333333", linewidth=0.6)
            patch.patches[0].set_gid(f"bar-{scenario}-{bar.run.run_id}")
            ax.annotate(_short(bar.test.value or 0.0), (pos, bar.test.value or 0.0), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(positions, [_tick(b) for b in bars], fontsize=8)
        ax.set_title(f"{model} · {scenario}", fontsize=10)
        unit = THROUGHPUT_AXIS.get(scenario, bars[0].test.unit or "")
        ax.set_ylabel(f"{unit}, log scale" if log else unit)
        ax.set_xlabel("backend/device")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(min(values) / 2, max(values) * 4)
        else:
            ax.set_ylim(0, max(values) * 1.18 or 1.0)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(groups):]:
        ax.set_axis_off()
    _marker_note(fig, hatches)
    return render("throughput", "Throughput per backend/device", fig, empty=False)


def latency(groups: dict[str, list[Bar]]) -> Chart:
    """p50/p90/p99 per run, one panel per scenario, in milliseconds."""
    return render("latency", LATENCY_TITLE, latency_figure(groups), empty=not groups)


def latency_figure(groups: dict[str, list[Bar]]) -> Figure:
    """The latency chart's figure. Its one legend (p50/p90/p99) sits outside every panel, at
    the figure's right, so it never hides a bar or a value label."""
    _matplotlib()
    fig, axes = _figure(len(groups), 3.8 if groups else 2.4, max(4.6, _panel_width(groups.values(), models=True)))
    fig.suptitle(LATENCY_TITLE)
    if not groups:
        _empty(fig, axes[0], "No latency data: these runs have no completed Server, SingleStream or MultiStream "
                             "performance test with percentiles in its LoadGen log (Offline has no latency metric).")
        return fig
    from matplotlib.patches import Patch

    width = 0.8 / len(PERCENTILES)
    hatches: set[str | None] = set()
    for ax, (scenario, bars) in zip(axes, groups.items()):
        values = [v for b in bars for v in b.test.latency_ms.values()]
        log = _log_scale(values)
        for pos, bar in enumerate(bars):
            hatch = _hatch(bar)
            hatches.add(hatch)
            for n, pct in enumerate(PERCENTILES):
                value = bar.test.latency_ms[pct]
                x = pos + (n - 1) * width
                patch = ax.bar(x, value, width, color=PERCENTILE_COLORS[pct], hatch=hatch, edgecolor="#333333", linewidth=0.5)
                patch.patches[0].set_gid(f"bar-{scenario}-{bar.run.run_id}-{pct}")
                ax.annotate(_ms(value), (x, value), xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=6, rotation=90)
        several_models = len({b.run.model for b in bars}) > 1
        ax.set_xticks(range(len(bars)), [_tick(b, model=several_models) for b in bars], fontsize=8)
        kind = bars[0].test.latency_kind or ""
        ax.set_title(f"{scenario} ({kind})", fontsize=10)
        ax.set_ylabel("latency (ms, log scale)" if log else "latency (ms)")
        ax.set_xlabel("run")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(min(values) / 2, max(values) * 8)
        else:
            ax.set_ylim(0, max(values) * 1.3)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(groups):]:
        ax.set_axis_off()
    fig.legend(handles=[Patch(color=PERCENTILE_COLORS[p], label=p) for p in PERCENTILES], loc="outside right upper",
               fontsize=8, title="percentile", title_fontsize=8)
    _marker_note(fig, hatches)
    return fig


def efficiency(data: Efficiency) -> Chart:
    """mlpi Offline / own loop per backend, with reference lines at 1.0 and 0.95."""
    _matplotlib()
    fig, (ax,) = _figure(1, 4.0, max(4.5, 1.6 * len(data.rows) + 2))
    title = "Efficiency against each runtime's own loop"
    fig.suptitle(title)
    ratios = [row.ratio for row in data.rows]
    for pos, row in enumerate(data.rows):
        patch = ax.bar(pos, row.ratio, 0.6, color=RUN_COLORS[pos % len(RUN_COLORS)], edgecolor="#333333", linewidth=0.6)
        patch.patches[0].set_gid(f"bar-efficiency-{row.backend}")
        ax.annotate(f"{row.ratio:.3f}", (pos, row.ratio), xytext=(0, -4), textcoords="offset points", ha="center",
                    va="top", fontsize=9, color="white", fontweight="bold")
    ax.axhline(1.0, color="#222222", linewidth=1.2, label="1.0 = the runtime's own loop", gid="line-1.00")
    ax.axhline(0.95, color="#e45756", linewidth=1.2, linestyle="--", label="0.95", gid="line-0.95")
    ax.set_xticks(range(len(data.rows)), [f"{r.backend}\n{r.mlpi_offline:,.1f} / {r.own_loop:,.1f} samples/s" for r in data.rows],
                  fontsize=8)
    ax.set_ylim(0, max(1.3, max(ratios) * 1.2))
    ax.set_ylabel("mlpi Offline / own loop (throughput ratio)")
    ax.set_xlabel("backend (mlpi / own loop)")
    detail = ", ".join(part for part in (
        data.model,
        f"batch {data.batch_size}" if data.batch_size else "",
        f"{data.duration_s:g} s per side" if data.duration_s else "",
    ) if part)
    ax.set_title(detail, fontsize=9)
    ax.legend(fontsize=8, loc="upper center", ncols=2)
    ax.grid(axis="y", alpha=0.3)
    return render("efficiency", title, fig, empty=False)


_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(href="#|url\(#)([^")]+)')


def render(key: str, title: str, fig: Figure, *, empty: bool) -> Chart:
    """SVG (for inlining) and PNG bytes of ``fig``."""
    matplotlib = _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=PNG_DPI, facecolor="white")
    svg = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"mlpi-{key}"}):
        fig.savefig(svg, format="svg", facecolor="white", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    return Chart(key, title, inline_svg(svg.getvalue(), key, title), png.getvalue(), empty)


def inline_svg(text: str, key: str, title: str) -> str:
    """An SVG document made fit to sit in a page beside others: no XML prolog, every id
    prefixed with the chart's key (so two charts' ids never clash), an id and a title."""
    body = text[text.index("<svg"):]
    body = _ID.sub(lambda m: f'id="{key}-{m.group(1)}"', body)
    body = _REF.sub(lambda m: f"{m.group(1)}{key}-{m.group(2)}", body)
    escaped = title.replace("&", "&amp;").replace("<", "&lt;")
    head_end = body.index(">") + 1
    head = body[:head_end].replace("<svg ", f'<svg id="chart-{key}" role="img" aria-labelledby="chart-{key}-title" ', 1)
    return f'{head}<title id="chart-{key}-title">{escaped}</title>{body[head_end:]}'
