"""`data check` and finetune's pre-pass: every row through the model's own processor before any
weight is loaded. A row whose image/video tokens do not fit `--seq-len`, or whose labels would
all be cut, is a bad row found here (with its row, token count and the limit); rows cut only in
text after their media are counted as truncated. A preference pair is measured twice, its chosen
and its rejected conversation; a pair or KTO row is never cut: an answer scored in part is not
the answer that was judged, so a side past the limit is a bad row, naming the side. A GRPO
prompt is measured as it is asked (with the generation prompt): it and the longest answer
sampled must fit, and every column a reward reads must be there."""

from __future__ import annotations

import copy
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vlmsurgeon.errors import BadInput

from .collate import pixel_budgeted_part, size_of
from .preference import LABEL, PAIR, SAME_ANSWER, SFT, pair_conversations
from .prompts import PROMPT, length_problem, missing_columns
from .rows import BadRow, Dataset, Sample


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
    video_sampling: dict[str, Any] = field(default_factory=dict)  # fps, max_frames, frame_pixels
    # Preference data only (row_kind pair or label). For a pair, `tokens` above are its longer
    # side's, what --seq-len must hold; these are the parts: prompt (up to the first trained
    # token, media included), chosen and rejected (from there to the end of that side), or for
    # KTO prompt and completion.
    row_kind: str = SFT
    pairs: int = 0  # usable pairs
    identical: int = 0  # rows refused because chosen and rejected are the same answer
    desirable: int = 0  # KTO rows labelled true
    undesirable: int = 0  # KTO rows labelled false
    preference_tokens: dict[str, list[int]] = field(default_factory=dict)
    # Prompt rows only (grpo): `tokens` are the prompts', with the generation prompt
    completion_tokens: int = 0  # --max-completion-length: what each prompt must leave room for
    columns: dict[str, int] = field(default_factory=dict)  # usable rows with each column the rewards may read
    packing: Any = None  # --packing: packing.Padding, the padding share before and after, sequences per epoch

    @property
    def skipped(self) -> int:
        return len(self.bad) + len(self.over_limit)

    def stats(self) -> dict[str, dict[str, int]]:
        return {kind: _percentiles(values) for kind, values in self.tokens.items()}

    def preference_stats(self) -> dict[str, dict[str, int]]:
        return {part: _percentiles(values) for part, values in self.preference_tokens.items()}

    def preference(self) -> dict[str, Any] | None:
        """The preference figures as `to_json` and `record` give them (None for other data)."""
        if self.row_kind not in (PAIR, LABEL):
            return None
        if self.row_kind == PAIR:
            return {"kind": PAIR, "pairs": self.pairs, "identical": self.identical, "tokens": self.preference_stats()}
        return {
            "kind": self.row_kind,
            "desirable": self.desirable,
            "undesirable": self.undesirable,
            "tokens": self.preference_stats(),
        }

    def prompts(self) -> dict[str, Any] | None:
        """The prompt figures (None for other data): prompts, the room kept for each answer, the
        columns present with their counts, prompt token lengths."""
        if self.row_kind != PROMPT:
            return None
        return {
            "kind": PROMPT,
            "prompts": self.rows,
            "completion_tokens": self.completion_tokens,
            "columns": dict(sorted(self.columns.items())),
            "tokens": {"prompt": _percentiles(self.tokens.get("total", []))},
        }

    def figures(self) -> dict[str, Any]:
        """The objective's own figures (and packing's), keyed as `to_json` and `record` give them."""
        if self.row_kind == PROMPT:
            return {"prompts": self.prompts()}
        if self.packing is not None:
            return {"packing": self.packing.to_json()}
        return {"preference": self.preference()} if self.row_kind != SFT else {}

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "reader": self.kind,
            "rows": self.rows,
            "images": self.images,
            "videos": self.videos,
            "formats": self.formats,
            "seq_len": self.seq_len,
            "truncated": self.truncated,
            "skipped": self.skipped,
            "bad_rows": [str(b) for b in self.bad],
            "over_limit": [str(b) for b in self.over_limit],
            "tokens": self.stats(),
            "notes": self.notes,
            "processor": self.processor,
        } | self.figures()

    def record(self) -> dict[str, Any]:
        """What vlmsurgeon.json keeps under `data` (besides path and hash)."""
        kept = {
            "rows": self.rows,
            "images": self.images,
            "videos": self.videos,
            "truncated": self.truncated,
            "skipped": self.skipped,
            "formats": self.formats,
            "tokens": self.stats(),
            "seq_len": self.seq_len,
        }
        if self.videos:
            kept["video_sampling"] = self.video_sampling
        return kept | self.figures()


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {"p50": 0, "p95": 0, "max": 0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]  # noqa: E731
    return {"p50": pick(0.5), "p95": pick(0.95), "max": ordered[-1]}


def _limit_problem(stats: Any, seq_len: int) -> str | None:
    if stats.media_end > seq_len:
        media = " and ".join(
            f"{n} {k} tokens" for k, n in (("image", stats.image_tokens), ("video", stats.video_tokens)) if n
        )
        return (
            f"{stats.tokens} tokens: its {media} end at position {stats.media_end}, past --seq-len "
            f"{seq_len} (cutting inside media breaks the model)"
        )
    if stats.first_label >= seq_len:
        return (
            f"{stats.tokens} tokens: its first trained token is at position {stats.first_label}, so "
            f"--seq-len {seq_len} would cut every label"
        )
    return None


def _media_problem(sample: Sample, stats: Any, collator: Any) -> str | None:
    """Media the processor was given but the token sequence does not show: it would be dropped."""
    if sample.images and collator.media_ids.get("image") is not None and stats.image_tokens == 0:
        return f"{len(sample.images)} image(s), but the chat template wrote no image placeholder for them"
    if sample.videos and stats.video_tokens == 0 and not stats.video_inputs:
        return (
            f"{len(sample.videos)} video(s), but neither a video token nor a video input came out of "
            "this model's chat template and processor"
        )
    return None


# Over-limit video rows whose fixes are measured (each fix is one more pass through the processor);
# later ones name the options without figures.
FIGURED = 3


def _sampling_note(sampling: dict[str, Any]) -> str | None:
    """The video sampling the user did not choose, said once, with the options that change it."""
    said = {
        "video_fps": (f"{sampling['fps'] or 0:g} fps", "--video-fps"),
        "video_frames": (f"at most {sampling['max_frames']} frames", "--video-frames"),
        "max_pixels": (f"at most {sampling['frame_pixels'] or 0:,} pixels a frame", "--max-pixels"),
    }
    parts = [said[name] for name in sampling["defaults"]]
    if not parts:
        return None
    join = lambda items: items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]  # noqa: E731
    return (
        f"videos sampled at the defaults, {join([p for p, _ in parts])} "
        f"(set {join([f for _, f in parts]).replace(' and ', ' or ')} to change them)"
    )


def _floor2(value: float) -> float:
    """`value` rounded down to two significant digits: 0.634 → 0.63, 1843 → 1800."""
    if value <= 0:
        return 0
    step = 10 ** (math.floor(math.log10(value)) - 1)
    return math.floor(value / step + 1e-9) * step


def _video_fixes(sample: Sample, stats: Any, collator: Any) -> str:
    """What each option that shrinks the row's video would make of it: a value at which the whole
    row fits, and the row's tokens there, measured through the processor."""
    from .collate import Collator, pixel_budgeted

    seq_len, given = collator.seq_len, dict(collator.given)
    text = stats.tokens - stats.video_tokens
    fixes: list[str] = []

    def fit(flag: str, start: float, make: Any) -> None:
        """Try `start`, then smaller values, until the row fits; report the last one tried."""
        value, tokens = start, None
        for _ in range(4):
            value = make(value)
            try:
                processor, change = (
                    (_with_max_pixels(collator.processor, value), {"max_pixels": value})
                    if flag == "--max-pixels"
                    else (collator.processor, {flag[2:].replace("-", "_"): value})
                )
                tokens = Collator(processor, seq_len, **{**given, **change}).count(sample)
            except Exception:  # the processor refuses that value: this option is no fix here
                return
            if tokens <= seq_len:
                break
            value *= 0.8
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        fixes.append(f"{tokens} {'tokens ' if not fixes else ''}at {flag} {shown}")

    if text < seq_len:
        scale = (seq_len - text) / stats.video_tokens
        if collator.video_fps:
            fit("--video-fps", collator.video_fps * scale, lambda v: max(0.1, float(_floor2(v))))
        if stats.frames > 2:
            fit("--video-frames", stats.frames * scale, lambda v: max(2, int(v) // 2 * 2))
        if pixel_budgeted(collator.processor) and stats.frame_pixels:
            size = size_of(collator.processor.video_processor)
            floor = size["shortest_edge"]
            fit(
                "--max-pixels",
                min(stats.frame_pixels, size["longest_edge"]) * scale,
                lambda v: max(int(_floor2(v)), floor),
            )
    held = "it would be " + ", ".join(fixes) + ", or it fits whole" if fixes else "it fits whole"
    return f"; {held} at --seq-len {stats.tokens}"


def _with_max_pixels(processor: Any, pixels: int) -> Any:
    """A copy of `processor` as `--max-pixels pixels` would set it (the original stays as it is)."""
    clone = copy.copy(processor)
    for name in ("image_processor", "video_processor"):
        if getattr(processor, name, None) is not None:
            setattr(clone, name, copy.deepcopy(getattr(processor, name)))
    apply_overrides(clone, {"max_pixels": pixels})
    return clone


def _sides(sample: Sample, row_kind: str) -> list[tuple[str, Sample]]:
    """The conversations a row trains as: itself (SFT: unnamed; KTO: its completion), or a pair's
    chosen and rejected conversation (the prompt and media shared, the final answer swapped)."""
    if row_kind in (SFT, PROMPT):
        return [("", sample)]
    if row_kind != PAIR:
        return [("completion", sample)]
    assert sample.rejected is not None  # every pair has one (load_dataset_rows)
    chosen, rejected = pair_conversations(sample)
    return [("chosen", chosen), ("rejected", rejected)]


def _cut_problem(stats: Any, seq_len: int, side: str) -> str:
    what = side if side == "completion" else f"{side} answer"
    return (
        f"{stats.tokens} tokens, {stats.tokens - seq_len} past --seq-len {seq_len}: the {what} would be cut, "
        "and a preference answer is scored whole (raise --seq-len, or shorten the answer)"
    )


def _measure(
    sample: Sample, collator: Any, seq_len: int, report: DataReport
) -> tuple[list[Any] | None, BadRow | None, bool]:
    """Each side's RowStats, or the row's problem: (stats, None, _) or (None, problem, over_limit).
    A side's problem is today's row rule (media past the limit, every label cut, media dropped),
    and for preference rows any cut at all; its reason begins with the side's name."""
    row_kind = report.row_kind
    measured = []
    for side, conversation in _sides(sample, row_kind):
        named = f"{side}: " if side else ""
        try:
            stats = collator.measure(conversation)
        except BadInput:
            raise
        except Exception as exc:  # the processor refused this row's content
            first = str(exc).splitlines()[0][:160] if str(exc) else ""
            reason = f"{named}the processor refused it ({type(exc).__name__}: {first})"
            return None, BadRow(sample.line, reason, sample.unit), False
        dropped = _media_problem(conversation, stats, collator)
        if row_kind == PROMPT:  # not cut: the prompt and its longest answer must fit
            problem = dropped or length_problem(stats.tokens, report.completion_tokens, seq_len)
        else:
            problem = dropped or _limit_problem(stats, seq_len)
        if problem is None and row_kind in (PAIR, LABEL) and stats.tokens > seq_len:
            problem = _cut_problem(stats, seq_len, side)
        if problem and not dropped and stats.video_tokens and row_kind != PROMPT:
            figured = sum("; it would be" in b.reason for b in report.over_limit) < FIGURED
            problem += (
                _video_fixes(conversation, stats, collator)
                if figured
                else "; lower --video-fps, --video-frames or --max-pixels, or raise --seq-len"
            )
        if problem:
            return None, BadRow(sample.line, named + problem, sample.unit), True
        measured.append(stats)
    return measured, None, False


def check_rows(
    data: Dataset,
    collator: Any,
    *,
    completion_tokens: int = 0,
    required_columns: dict[str, tuple[str, ...]] | None = None,
) -> tuple[DataReport, list[Sample]]:
    """Measure every row; returns the report and the rows that train. A source without a single
    row is bad input: a check that passes on nothing would let a CI gate pass on nothing. Prompt
    rows (grpo) must leave `completion_tokens` under --seq-len and hold the columns each reward
    needs (`required_columns`: reward name -> columns)."""
    if not data.samples and not data.bad:
        raise BadInput(f"data '{data.path}': no rows", "check the file's format (see docs/data.md)")
    seq_len = collator.seq_len
    report = DataReport(
        str(data.path),
        data.kind,
        0,
        0,
        0,
        dict(data.formats),
        seq_len,
        bad=list(data.bad),
        notes=data.messages(),
        row_kind=data.row_kind,
        completion_tokens=completion_tokens if data.row_kind == PROMPT else 0,
    )
    tokens: dict[str, list[int]] = {"text": [], "image": [], "video": [], "total": []}
    parts: dict[str, list[int]] = (
        {"prompt": [], "chosen": [], "rejected": []} if data.row_kind == PAIR else {"prompt": [], "completion": []}
    )
    usable = []
    takes_video = getattr(collator.processor, "video_processor", None) is not None
    for sample in data.samples:
        if sample.videos and not takes_video:
            report.bad.append(
                BadRow(
                    sample.line,
                    f"{len(sample.videos)} video(s), but this model's processor takes no video input",
                    sample.unit,
                )
            )
            continue
        missing = missing_columns(sample.columns, required_columns or {}) if data.row_kind == PROMPT else None
        if missing:
            report.bad.append(BadRow(sample.line, missing, sample.unit))
            continue
        measured, problem, over_limit = _measure(sample, collator, seq_len, report)
        if problem is not None:
            (report.over_limit if over_limit else report.bad).append(problem)
            continue
        assert measured is not None
        usable.append(sample)
        longest = max(measured, key=lambda s: s.tokens)  # a pair: what --seq-len must hold
        report.truncated += longest.tokens > seq_len
        for kind, value in (
            ("text", longest.text_tokens),
            ("image", longest.image_tokens),
            ("video", longest.video_tokens),
            ("total", longest.tokens),
        ):
            tokens[kind].append(value)
        if data.row_kind in (PAIR, LABEL):
            # the prompt ends where the first trained token (the final answer) starts, on both sides
            parts["prompt"].append(measured[0].first_label)
            for part, stats in zip(list(parts)[1:], measured, strict=True):
                parts[part].append(stats.tokens - stats.first_label)
    report.tokens = tokens
    report.rows = len(usable)
    report.formats = dict(Counter(s.format for s in usable))
    report.images = sum(len(s.images) for s in usable)
    report.videos = sum(len(s.videos) for s in usable)
    if data.row_kind == PROMPT:
        report.columns = dict(Counter(k for s in usable for k in s.columns))
    elif data.row_kind != SFT:
        report.preference_tokens = parts
        report.identical = sum(b.reason == SAME_ANSWER for b in data.bad)
        if data.row_kind == PAIR:
            report.pairs = len(usable)
        else:
            report.desirable = sum(s.label is True for s in usable)
            report.undesirable = sum(s.label is False for s in usable)
    with_tools = sum(1 for s in usable if s.tools)
    if with_tools:
        from .collate import renders_tools

        if not renders_tools(collator.processor):
            report.notes.append(
                f"{with_tools} row(s) describe tools, but this model's chat template does "
                "not render tools: their descriptions do not reach the model"
            )
    if any(s.videos for s in data.samples):
        report.video_sampling = {k: v for k, v in collator.video_sampling().items() if k != "defaults"}
        note = _sampling_note(collator.video_sampling())
        if note:
            report.notes.append(note)
    if report.truncated:
        report.notes.append(
            f"{report.truncated} row(s) longer than --seq-len {seq_len}: text after their "
            "media is cut (their first labels are kept)"
        )
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


def _set_size(part: Any, size: dict[str, Any], attr: str = "size") -> None:
    """Write `size` back in the type the part held (a SizeDict stays a SizeDict)."""
    held = getattr(part, attr, None)
    setattr(part, attr, size if isinstance(held, dict) or held is None else type(held)(**size))


def _set_image_size(part: Any, size: dict[str, Any], side: int) -> None:
    _set_size(part, {"height": side, "width": side} if "height" in size else {k: side for k in size})
    if getattr(part, "do_center_crop", False) and size_of(part, "crop_size"):  # CLIP-style: the crop is the size
        _set_size(part, {"height": side, "width": side}, "crop_size")


def apply_overrides(processor: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """Set the pixel budget on the processor's image and video processors; returns what was set
    (a setting no part of this processor knows is refused, never ignored)."""
    applied: dict[str, Any] = {}
    parts = [p for p in (getattr(processor, "image_processor", None), getattr(processor, "video_processor", None)) if p]
    for name, value in overrides.items():
        touched = False
        for part in parts:
            size = size_of(part)
            if size is None:
                continue
            if name in ("max_pixels", "min_pixels") and pixel_budgeted_part(part):
                size["longest_edge" if name == "max_pixels" else "shortest_edge"] = int(value)
                _set_size(part, size)
                if hasattr(part, name):
                    setattr(part, name, int(value))
                touched = True
            elif name == "image_size" and not pixel_budgeted_part(part):  # there, sizes are pixel counts
                _set_image_size(part, size, int(value))
                touched = True
        if not touched:
            raise BadInput(
                f"--{name.replace('_', '-')}: this model's processor has no such setting",
                "use --max-pixels/--min-pixels for Qwen-style processors, --image-size for fixed-size ones",
            )
        applied[name] = value
    return applied
