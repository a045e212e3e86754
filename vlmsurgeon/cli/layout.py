"""Fitting output into a width: rich tables laid out as aligned columns (no box, no trailing
spaces), long words shortened with an ellipsis in the middle, never broken mid-word.
Used by `render` through `FitConsole`, so every table any command prints obeys the same rules."""

from __future__ import annotations

import re
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

GAP = 2  # spaces between columns
MIN_COLUMN = 8  # narrowest a text column is squeezed to before lines are cut
ELLIPSIS = "…"


def ellipsize(text: Text, width: int) -> Text:
    """`text` shortened to `width` cells by cutting its middle: both ends of a module path
    say more than its middle."""
    if text.cell_len <= width:
        return text
    if width <= 1:
        return Text(ELLIPSIS[:width])
    keep = width - 1
    head, tail = (keep + 1) // 2, keep // 2
    plain = text.plain
    out = text[:head]
    out.append(ELLIPSIS)
    out.append_text(text[len(plain) - tail :] if tail else Text())
    return out


def wrap(text: Text | str, width: int) -> list[Text]:
    """Lines of at most `width` cells, broken between words (a line's indent is kept on its
    continuations); a word longer than the width is shortened in the middle, never split."""
    text = Text(text) if isinstance(text, str) else text
    out: list[Text] = []
    for line in text.split("\n", allow_blank=True):
        line.rstrip()
        if line.cell_len <= width:
            out.append(line)
            continue
        plain = line.plain
        indent = len(plain) - len(plain.lstrip(" "))
        prefix = " " * indent if indent < width // 2 else ""
        current: Text | None = None
        for match in re.finditer(r"\S+", plain):
            word = line[match.start() : match.end()]
            if current is not None and current.cell_len + 1 + word.cell_len <= width:
                current.append(" ")
                current.append_text(word)
                continue
            if current is not None:
                out.append(current)
            current = Text(prefix)
            current.append_text(ellipsize(word, width - len(prefix)))
        out.append(current if current is not None else Text())
    return out


def wrap_sentence(text: Text | str, width: int) -> list[Text]:
    """`SUBJECT: rest` broken between words; when it does not fit and its subject is one word (a
    path), the subject gets a line of its own, so the rest breaks at the same words whatever
    the path."""
    text = Text(text) if isinstance(text, str) else text
    at = text.plain.find(": ")
    if text.cell_len <= width or at <= 0 or " " in text.plain[:at] or "\n" in text.plain:
        return wrap(text, width)
    rest = Text("  ")
    rest.append_text(text[at + 2 :])
    return wrap(text[: at + 1], width) + wrap(rest, width)


def _cell(value: Any) -> Text:
    if isinstance(value, Text):
        return value.copy()
    return Text.from_markup(value) if isinstance(value, str) else Text(str(value))


def _cell_width(cell: Text) -> int:
    return max(cell_len(line) for line in cell.plain.split("\n"))


def _longest_word(cells: list[Text]) -> int:
    return max((len(w) for c in cells for w in c.plain.split()), default=0)


def _widths(header: list[Text], rows: list[list[Text]], shrinkable: list[bool], width: int) -> list[int]:
    """Natural widths, then the widest shrinkable column narrowed one cell at a time: first not
    below its longest word, then down to MIN_COLUMN (the first column, which names the row,
    last of all)."""
    cols = range(len(header))
    natural = [max([header[c].cell_len, *(_cell_width(r[c]) for r in rows)]) for c in cols]
    widths = list(natural)
    budget = width - GAP * (len(widths) - 1)
    words = [max(header[c].cell_len, _longest_word([r[c] for r in rows])) for c in cols]
    least = [min(natural[c], max(header[c].cell_len, MIN_COLUMN)) for c in cols]
    for floors in (words, [words[0], *least[1:]], least):
        while sum(widths) > budget:
            candidates = [c for c in cols if shrinkable[c] and widths[c] > floors[c]]
            if not candidates:
                break
            widest = max(candidates, key=lambda c: widths[c])
            widths[widest] -= 1
    return widths


def _spans(row: list[Text]) -> bool:
    """A row with text in its first cell only is a heading: it may run across the columns."""
    return bool(row) and bool(row[0].plain.strip()) and not any(c.plain.strip() for c in row[1:])


def _line(cells: list[Text], widths: list[int], right: list[bool]) -> Text:
    line = Text()
    for c, (cell, w) in enumerate(zip(cells, widths, strict=False)):
        if c:
            line.append(" " * GAP)
        pad = " " * max(0, w - cell.cell_len)
        if right[c]:
            line.append(pad)
            line.append_text(cell)
        else:
            line.append_text(cell)
            line.append(pad)
    line.rstrip()
    return line


def table_lines(table: Table, width: int, *, plain: bool) -> list[Text]:
    """A rich Table as aligned lines no wider than `width`: title, header, a rule, rows (cells
    wrapped between words), caption. Right-justified (numeric) columns are never narrowed."""
    width = max(width, 20)
    header = [_cell(col.header) for col in table.columns]
    cells = [[_cell(v) for v in col.cells] for col in table.columns]
    rows = [[cells[c][r] for c in range(len(cells))] for r in range(len(table.rows))]
    right = [col.justify == "right" for col in table.columns]
    shrinkable = [not r and not col.no_wrap for r, col in zip(right, table.columns, strict=True)]
    sized = [r for r in rows if not _spans(r)]
    widths = _widths(header, sized, shrinkable, width)
    lines: list[Text] = []
    if table.title:
        lines += wrap_sentence(_cell(table.title), width)
    for h in header:
        h.stylize("bold")
    lines.append(_line(header, widths, right))
    rule = "-" if plain else "─"
    lines.append(_line([Text(rule * w, style="dim") for w in widths], widths, right))
    for row in rows:
        if _spans(row):
            lines += wrap(row[0], width)
            continue
        wrapped = [wrap(cell, w) for cell, w in zip(row, widths, strict=False)]
        for i in range(max(len(w) for w in wrapped)):
            lines.append(_line([w[i] if i < len(w) else Text() for w in wrapped], widths, right))
    if table.caption:
        lines += wrap(_cell(table.caption), width)
    return [line if line.cell_len <= width else ellipsize(line, width) for line in lines]


class FitConsole(Console):
    """A Console whose tables fit its width; when it does not write to a terminal, every line it
    prints is plain text without trailing spaces."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._printed = False  # a table after other output is set off by a blank line

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        plain = not self.is_terminal
        fitted: list[Any] = []
        for obj in objects:
            if isinstance(obj, Table):
                lines = table_lines(obj, self.width, plain=plain)
                fitted.append(Text("\n").join([Text(), *lines] if self._printed else lines))
            else:
                fitted.append(obj)
        self._printed = True
        if not plain:
            super().print(*fitted, **kwargs)
            return
        with self.capture() as captured:
            super().print(*fitted, **kwargs)
        self.file.write("\n".join(line.rstrip() for line in captured.get().split("\n")))
        self.file.flush()
