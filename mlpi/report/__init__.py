"""``mlpi report``: a self-contained HTML report of run directories, with its charts as PNG.

``data`` reads runs into chart series, ``charts`` draws them with matplotlib, ``html``
builds the page and ``build`` writes the folder. matplotlib is imported only when drawing.
"""

from mlpi.report.build import ReportOutcome, build_report

__all__ = ["ReportOutcome", "build_report"]
