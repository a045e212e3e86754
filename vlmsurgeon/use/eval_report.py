"""The `eval` report folder: predictions.jsonl, report.json and report.html (a static page with
inline thumbnails, the answers side by side and the totals), staged beside the target and renamed
into place, so a folder that exists is complete."""

from __future__ import annotations

import base64
import errno
import html
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vlmsurgeon.errors import BadInput, RuntimeFailure, VlmSurgeonError
from vlmsurgeon.fsutil import PATH_ERRNOS, clean_leftovers, publish

from .evaluate import METRICS, EvalResult, Row

THUMB = 128  # longest side of an inline thumbnail, in pixels
LABELS = {"exact_match": "exact match", "f1": "token F1", "rouge_l": "ROUGE-L"}
_LEFTOVERS = (".{name}.*",)
_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top}
th{background:#f3f3f3}td.text{white-space:pre-wrap;max-width:28em}.scores{color:#555;font-size:.85em}
.up{color:#186a1d}.down{color:#a11}img{display:block;margin-bottom:.3em}"""


def _refused(out: Path, exc: OSError) -> VlmSurgeonError:
    """An OSError on -o as one line: the path's fault is bad input, the machine's a runtime failure."""
    why = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENAMETOOLONG:
        return BadInput(
            f"-o {out}: name too long for the file system ({len(out.name.encode())} bytes, path "
            f"{len(str(out).encode())})",
            "choose a shorter name: the report is staged beside it as "
            ".NAME.XXXXXXXX, and most file systems allow 255 bytes",
        )
    if exc.errno in PATH_ERRNOS:
        return BadInput(
            f"-o {out}: cannot write the report in {out.parent} ({why})", "choose a folder you can write to"
        )
    return RuntimeFailure(f"-o {out}: cannot write the report ({why})", "check the disk and try again")


def check_target(out: Path) -> None:
    """Refuse, before any model is loaded, a target that exists and is not an empty folder, or
    that cannot be written: a probe named like the staging folder is made and removed."""
    try:
        if out.exists() and not (out.is_dir() and not any(out.iterdir())):
            raise BadInput(f"-o {out}: already exists", "choose a new folder, or remove it first")
        if not out.parent.is_dir():
            raise BadInput(f"-o {out}: parent folder {out.parent} does not exist", "create it first")
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise _refused(out, exc) from exc


def write_report(result: EvalResult, out: Path) -> Path:
    """Write the three files into a staging folder beside `out`, then rename it to `out`."""
    out = Path(out)
    check_target(out)
    clean_leftovers(out, _LEFTOVERS)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise _refused(out, exc) from exc
    try:
        lines = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in result.rows)
        (staging / "predictions.jsonl").write_text(lines, encoding="utf-8")
        (staging / "report.json").write_text(
            json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (staging / "report.html").write_text(render_html(result), encoding="utf-8")
        if out.is_dir():
            out.rmdir()  # empty (checked above): os.replace would refuse a non-empty one anyway
        publish(staging, out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _refused(out, exc) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def thumbnail(ref: Any) -> str:
    """A data URI of the image shrunk to at most THUMB pixels a side (JPEG: small, and photos)."""
    from vlmsurgeon.data.media import open_image

    image = open_image(ref)
    image.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _signed(value: float) -> str:
    cls = "up" if value > 0 else "down" if value < 0 else ""
    return f'<span class="{cls}">{value:+.3f}</span>'


def _totals_table(result: EvalResult) -> str:
    totals, delta = result.totals(), result.delta()
    head = "".join(f"<th>{LABELS[m]}</th>" for m in METRICS)
    body = []
    for model in result.models:
        cells = "".join(f"<td>{_fmt(totals[model.name][m])}</td>" for m in METRICS)
        body.append(
            f'<tr data-model="{model.name}"><th>{html.escape(model.name)}: {html.escape(model.source)}</th>{cells}</tr>'
        )
    if delta is not None:
        cells = "".join(f"<td>{_signed(delta[m])}</td>" for m in METRICS)
        body.append(f'<tr data-model="delta"><th>delta (model − compare)</th>{cells}</tr>')
    return f'<table id="totals"><tr><th></th>{head}</tr>{"".join(body)}</table>'


def _media_cell(row: Row) -> str:
    parts = []
    for kind, ref in row.media:
        if kind == "image":
            parts.append(f'<img alt="image" src="{thumbnail(ref)}">')
        else:
            name = ref.name if isinstance(ref, Path) else "inline video"
            parts.append(f"<span>[video: {html.escape(name)}]</span>")
    return "".join(parts)


def _answer_cell(row: Row, name: str) -> str:
    scores = row.scores[name]
    figures = " · ".join(f"{LABELS[m]} {_fmt(scores[m])}" for m in METRICS)
    return (
        f'<td class="text answer" data-model="{name}">{html.escape(row.predictions[name])}'
        f'<div class="scores">{figures}</div></td>'
    )


def _rows_table(result: EvalResult) -> str:
    names = [m.name for m in result.models]
    compare = "compare" in names
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names) + ("<th>delta</th>" if compare else "")
    body = []
    for row in result.rows:
        cells = "".join(_answer_cell(row, n) for n in names)
        if compare:
            delta = row.delta() or {}
            cells += '<td class="delta">' + "<br>".join(f"{LABELS[m]} {_signed(delta[m])}" for m in METRICS) + "</td>"
        body.append(
            f'<tr class="row" data-row="{row.line}"><td>{html.escape(row.where)}</td><td>{_media_cell(row)}</td>'
            f'<td class="text">{html.escape(row.prompt)}</td><td class="text">{html.escape(row.reference)}</td>'
            f"{cells}</tr>"
        )
    return (
        f'<table id="rows"><tr><th>row</th><th>media</th><th>prompt</th><th>reference</th>{head}</tr>'
        f"{''.join(body)}</table>"
    )


def render_html(result: EvalResult) -> str:
    skipped = ""
    if result.skipped:
        items = "".join(f"<li>{html.escape(f'{b.unit} {b.line}: {b.reason}')}</li>" for b in result.skipped)
        skipped = f'<h2>Skipped: {len(result.skipped)} row(s)</h2><ul id="skipped">{items}</ul>'
    limit = f" (first {result.limit})" if result.limit else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>vlmsurgeon eval: '
        f"{html.escape(result.data)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>vlmsurgeon eval</h1><p>{html.escape(result.data)}: {len(result.rows)} row(s) scored{limit}, "
        f"{len(result.skipped)} skipped. Means over the scored rows; greedy decoding.</p>"
        f"{_totals_table(result)}{_rows_table(result)}{skipped}</body></html>\n"
    )
