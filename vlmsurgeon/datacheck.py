"""`data check` and finetune's pre-pass: every row through the model's own processor before any
weight is loaded. A row whose image/video tokens do not fit `--seq-len`, or whose labels would
all be cut, is a bad row found here (with its row, token count and the limit); rows cut only in
text after their media are counted as truncated."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .data import BadRow, Dataset, Sample
from .errors import BadInput


@dataclass
class DataReport:
    path: str
    kind: str
    rows: int
    images: int
    videos: int
    formats: dict[str, int]
    seq_len: int
    truncated: int = 0
    bad: list[BadRow] = field(default_factory=list)
    over_limit: list[BadRow] = field(default_factory=list)
    tokens: dict[str, list[int]] = field(default_factory=dict)  # text / image / video / total
    notes: list[str] = field(default_factory=list)
    processor: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return len(self.bad) + len(self.over_limit)

    def stats(self) -> dict[str, dict[str, int]]:
        return {kind: _percentiles(values) for kind, values in self.tokens.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "reader": self.kind, "rows": self.rows, "images": self.images,
            "videos": self.videos, "formats": self.formats, "seq_len": self.seq_len,
            "truncated": self.truncated, "skipped": self.skipped,
            "bad_rows": [str(b) for b in self.bad], "over_limit": [str(b) for b in self.over_limit],
            "tokens": self.stats(), "notes": self.notes, "processor": self.processor,
        }

    def record(self) -> dict[str, Any]:
        """What vlmsurgeon.json keeps under `data` (besides path and hash)."""
        return {"rows": self.rows, "images": self.images, "videos": self.videos,
                "truncated": self.truncated, "skipped": self.skipped, "formats": self.formats,
                "tokens": self.stats(), "seq_len": self.seq_len}


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {"p50": 0, "p95": 0, "max": 0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]  # noqa: E731
    return {"p50": pick(0.5), "p95": pick(0.95), "max": ordered[-1]}


def _limit_problem(stats: Any, seq_len: int) -> str | None:
    if stats.media_end > seq_len:
        media = " and ".join(f"{n} {k} tokens" for k, n in (("image", stats.image_tokens),
                                                            ("video", stats.video_tokens)) if n)
        return (f"{stats.tokens} tokens: its {media} end at position {stats.media_end}, past --seq-len "
                f"{seq_len} (cutting inside media breaks the model)")
    if stats.first_label >= seq_len:
        return (f"{stats.tokens} tokens: its first trained token is at position {stats.first_label}, so "
                f"--seq-len {seq_len} would cut every label")
    return None


def _media_problem(sample: Sample, stats: Any, collator: Any) -> str | None:
    """Media the processor was given but the token sequence does not show: it would be dropped."""
    if sample.images and collator.media_ids.get("image") is not None and stats.image_tokens == 0:
        return f"{len(sample.images)} image(s), but the chat template wrote no image placeholder for them"
    if sample.videos and stats.video_tokens == 0 and not stats.video_inputs:
        return (f"{len(sample.videos)} video(s), but neither a video token nor a video input came out of "
                "this model's chat template and processor")
    return None


def check_rows(data: Dataset, collator: Any) -> tuple[DataReport, list[Sample]]:
    """Measure every row; returns the report and the rows that train."""
    seq_len = collator.seq_len
    report = DataReport(str(data.path), data.kind, 0, 0, 0, dict(data.formats), seq_len,
                        bad=list(data.bad), notes=data.messages())
    tokens: dict[str, list[int]] = {"text": [], "image": [], "video": [], "total": []}
    usable = []
    takes_video = getattr(collator.processor, "video_processor", None) is not None
    for sample in data.samples:
        if sample.videos and not takes_video:
            report.bad.append(BadRow(sample.line, f"{len(sample.videos)} video(s), but this model's processor "
                                     "takes no video input", sample.unit))
            continue
        try:
            stats = collator.measure(sample)
        except BadInput:
            raise
        except Exception as exc:  # the processor refused this row's content
            first = str(exc).splitlines()[0][:160] if str(exc) else ""
            report.bad.append(BadRow(sample.line, f"the processor refused it ({type(exc).__name__}: {first})",
                                     sample.unit))
            continue
        problem = _media_problem(sample, stats, collator) or _limit_problem(stats, seq_len)
        if problem:
            report.over_limit.append(BadRow(sample.line, problem, sample.unit))
            continue
        usable.append(sample)
        report.truncated += stats.tokens > seq_len
        for kind, value in (("text", stats.text_tokens), ("image", stats.image_tokens),
                            ("video", stats.video_tokens), ("total", stats.tokens)):
            tokens[kind].append(value)
    report.tokens = tokens
    report.rows = len(usable)
    report.formats = dict(Counter(s.format for s in usable))
    report.images = sum(len(s.images) for s in usable)
    report.videos = sum(len(s.videos) for s in usable)
    with_tools = sum(1 for s in usable if s.tools)
    if with_tools:
        from .collate import renders_tools

        if not renders_tools(collator.processor):
            report.notes.append(f"{with_tools} row(s) describe tools, but this model's chat template does "
                                "not render tools: their descriptions do not reach the model")
    if report.truncated:
        report.notes.append(f"{report.truncated} row(s) longer than --seq-len {seq_len}: text after their "
                            "media is cut (their first labels are kept)")
    return report, usable


PIXEL_OPTIONS = ("max_pixels", "min_pixels", "image_size")


def processor_overrides(opts: Any) -> dict[str, Any]:
    """--max-pixels / --min-pixels (Qwen-style pixel budgets) and --image-size, as processor
    settings; recorded with the run."""
    out: dict[str, Any] = {}
    for name in PIXEL_OPTIONS:
        value = getattr(opts, name, None)
        if value is not None:
            out[name] = value
    return out


def apply_overrides(processor: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """Set the pixel budget on the processor's image and video processors; returns what was set
    (a setting no part of this processor knows is refused, never ignored)."""
    applied: dict[str, Any] = {}
    parts = [p for p in (getattr(processor, "image_processor", None), getattr(processor, "video_processor", None)) if p]
    for name, value in overrides.items():
        touched = False
        for part in parts:
            size = getattr(part, "size", None)
            if name in ("max_pixels", "min_pixels") and isinstance(size, dict) and "longest_edge" in size \
                    and "shortest_edge" in size and hasattr(part, "merge_size"):
                size = dict(size)
                size["longest_edge" if name == "max_pixels" else "shortest_edge"] = int(value)
                part.size = size
                if hasattr(part, name):
                    setattr(part, name, int(value))
                touched = True
            elif name == "image_size" and isinstance(size, dict):
                part.size = ({"height": int(value), "width": int(value)} if "height" in size
                             else {k: int(value) for k in size})
                touched = True
        if not touched:
            raise BadInput(f"--{name.replace('_', '-')}: this model's processor has no such setting",
                           "use --max-pixels/--min-pixels for Qwen-style processors, --image-size for "
                           "fixed-size ones")
        applied[name] = value
    return applied
