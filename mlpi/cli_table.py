"""Tables that never cut a cell: what ``results list``, ``results show``, ``compare``, the run
summary and ``mlpi models``/``backends`` print rows with.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import click

# -- tables that never cut a cell ------------------------------------------------------------
#
# ``results list``, ``results show`` and ``compare`` print their rows with :func:`emit`:
#
# - stdout not a terminal (a pipe, a file): plain text, a header line then one line per row,
#   the cells padded and separated by at least two spaces, nothing cut, no box drawing;
# - a terminal wide enough: a table without vertical rules (two spaces between columns, as
#   piped); cells may wrap at spaces, never inside a word, so a run id or a model, backend,
#   device or system name is always whole on one line;
# - a narrower terminal: first the columns whose value is the same in every row move to one
#   ``every row:`` line under the table, then low-value columns (each table names them, in
#   order) are left out, with a line saying which;
# - narrower still: one block per row, ``column  value`` on each line (like psql's expanded
#   display), every value whole.
#
# Every cell goes through :func:`mlpi.cli_output.printable` first, and is given to rich as
# ``Text`` (never read as markup), as :func:`mlpi.cli_output.terminal_cell` does.


@dataclass(frozen=True)
class Column:
    name: str
    #: When the terminal is too narrow, columns with a ``drop`` rank are left out, lowest
    #: first; None: always shown.
    drop: int | None = None
    right: bool = False
    #: Its cells never wrap (``- (INVALID)`` reads as one statement).
    whole: bool = False


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def _terminal_width() -> int:
    import shutil

    return max(20, shutil.get_terminal_size().columns)  # $COLUMNS first, then the terminal's own


def emit(title: str, columns: list[Column], lines: list[list[Any]], *, sections: list[bool] | None = None,
          terminal: bool | None = None, width: int | None = None, file: Any = None) -> None:
    """Print rows as the terminal allows (see above). ``sections`` marks the rows that start a
    new group (a blank line before them in the table). ``terminal``, ``width`` and ``file``
    default to whether stdout is a terminal, its width ($COLUMNS first) and stdout."""
    from mlpi.cli_output import printable

    cells = [[printable(c) for c in line] for line in lines]
    names = [c.name for c in columns]

    def echo(text: str = "") -> None:
        click.echo(text, file=file)

    if not (_stdout_is_terminal() if terminal is None else terminal):
        for line in _plain(names, cells):
            echo(line)
        return
    width = width or _terminal_width()
    fitted = _fit(columns, cells, width)
    if fitted is None:  # blocks: what every row shares once, then each row's own values
        echo(printable(title))
        same = _constant(cells)
        if same:
            echo(_every_row([names[i] for i in same], cells[0], same, width))
        own = [i for i in range(len(names)) if i not in same]
        key_width = max(len(names[i]) for i in own) if own else 0
        for line in cells:
            echo()
            for i in own:
                echo(f"  {names[i]:<{key_width}}  {line[i]}")
        return
    shown, widths, same, left_out = fitted
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # No vertical rules, two spaces between columns: a run id selected with the mouse comes
    # without box characters, and the rows read as the piped ones do.
    table = Table(title=Text(printable(title)), title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, collapse_padding=True)
    for index, w in zip(shown, widths):
        table.add_column(names[index], justify="right" if columns[index].right else "left", width=w, overflow="fold")
    for number, line in enumerate(cells):
        if sections and number and sections[number]:
            table.add_section()
        table.add_row(*(Text(line[i]) for i in shown))
    Console(file=file, width=width, height=25, highlight=False).print(table)
    if same:
        echo(_every_row([names[i] for i in same], cells[0], same, width))
    if left_out:
        named = [*(names[i] + "," for i in left_out[:-1]), names[left_out[-1]]]  # "p50 ms" kept whole
        before, after = "not shown, the terminal being too narrow:", "(widen it, or pipe the output: every column, nothing cut)"
        echo(_wrap([*before.split(" "), *named, *after.split(" ")], " ", width))


def _every_row(names: list[str], first: list[str], indexes: list[int], width: int) -> str:
    """``every row: system lab-1; device cpu``, wrapped between columns, never inside a value."""
    items = [f"{name} {first[i]}" for name, i in zip(names, indexes)]
    return _wrap(["every row:", *(item + ";" for item in items[:-1]), items[-1]], " ", width)


def _wrap(pieces: list[str], separator: str, width: int) -> str:
    """The pieces joined, a line break (and two spaces) instead of the separator where the
    next piece would pass ``width``; a piece is never broken (a longer one has its own line)."""
    from rich.cells import cell_len

    lines = [pieces[0]]
    for piece in pieces[1:]:
        if cell_len(lines[-1]) + len(separator) + cell_len(piece) <= width:
            lines[-1] += separator + piece
        else:
            lines.append("  " + piece)
    return "\n".join(lines)


def _plain(names: list[str], cells: list[list[str]]) -> list[str]:
    """A header line and one line per row, each cell padded to its column, two spaces apart."""
    from rich.cells import cell_len

    widths = [max([cell_len(n), *(cell_len(line[i]) for line in cells)]) for i, n in enumerate(names)]

    def join(values: list[str]) -> str:
        return "  ".join(v + " " * (w - cell_len(v)) for v, w in zip(values, widths)).rstrip()

    return [join(names), *(join(line) for line in cells)]


def _constant(cells: list[list[str]]) -> list[int]:
    """The columns holding one value in every row (none when there are fewer than two rows)."""
    if len(cells) < 2:
        return []
    return [i for i in range(len(cells[0])) if len({line[i] for line in cells}) == 1]


def _fit(columns: list[Column], cells: list[list[str]], width: int) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """The columns a rich table of ``width`` shows and their widths, the columns moved to the
    ``every row:`` line, and those left out; None when even the columns always shown do not
    fit with each at its longest word (then rows are printed as blocks)."""
    from rich.cells import cell_len

    def longest_word(text: str) -> int:
        return max((cell_len(w) for w in text.split()), default=1)

    count = len(columns)
    natural = [max([cell_len(columns[i].name), *(cell_len(line[i]) for line in cells)]) for i in range(count)]
    narrowest = [natural[i] if columns[i].whole else max([longest_word(columns[i].name), *(longest_word(line[i]) for line in cells)])
                 for i in range(count)]
    constant = _constant(cells)
    removable = sorted(constant, key=lambda i: (columns[i].drop is None, columns[i].drop or 0, -i))
    removable += sorted((i for i in range(count) if columns[i].drop is not None and i not in constant),
                        key=lambda i: columns[i].drop or 0)
    hidden: list[int] = []

    def room(shown: list[int]) -> int:  # two spaces between columns
        return width - 2 * (len(shown) - 1)

    while True:
        shown = [i for i in range(count) if i not in hidden]
        if shown and sum(narrowest[i] for i in shown) <= room(shown):
            break
        if not removable:
            return None
        hidden.append(removable.pop(0))
    widths = {i: natural[i] for i in shown}
    while sum(widths.values()) > room(shown):  # narrow the widest column that can still wrap
        widest = max((i for i in shown if widths[i] > narrowest[i]), key=lambda i: widths[i])
        widths[widest] -= 1
    return (shown, [widths[i] for i in shown], [i for i in hidden if i in constant],
            [i for i in hidden if i not in constant])


# -- mlpi results ----------------------------------------------------------------------------


__all__ = ["Column", "emit"]
