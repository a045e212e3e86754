"""Training data as users already have it. `readers` find the rows (JSONL, JSON arrays, tables,
`datasets` folders, LLaMA-Factory dataset_info.json), `formats` turn each into one shape
(`preference` for pairs and KTO rows, `prompts` for GRPO's prompts), `media` checks every image
and video. Every row is
validated before training; bad rows are reported by row and reason, and columns no reader used
are reported with a count, never dropped silently."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .formats import RowError, Spec
from .media import MediaError, check_media
from .preference import ANSWERLESS, KINDS, SFT, check_answers, convert_row
from .prompts import PROMPT, check_prompt
from .readers import open_source


@dataclass
class Sample:
    """One conversation: messages with content parts ({"type": "image" | "video" | "text"}) and a
    `train` flag per message, and its media (paths, bytes or PIL images) in placeholder order.
    A preference pair is the prompt and the chosen answer (the final assistant message, the only
    one with `train` set), the rejected answer in `rejected` (the same message shape; the same
    prompt and media); a KTO row is the prompt and its completion, with `label`. A prompt row
    (GRPO) is the prompt alone, no message trained, and the row's other columns in `columns`,
    which the reward functions read."""

    line: int
    messages: list[dict[str, Any]]
    images: list[Any] = field(default_factory=list)
    videos: list[Any] = field(default_factory=list)
    format: str = "messages"
    unit: str = "line"
    tools: list[Any] = field(default_factory=list)
    rejected: dict[str, Any] | None = None
    label: bool | None = None  # KTO: desirable (True) / undesirable (False)
    columns: dict[str, Any] = field(default_factory=dict)  # a prompt row's columns no reader used

    @property
    def where(self) -> str:
        return f"{self.unit} {self.line}"


@dataclass
class BadRow:
    line: int
    reason: str
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.unit} {self.line}: {self.reason}"


@dataclass
class Dataset:
    path: Path
    samples: list[Sample]
    bad: list[BadRow]
    sha256: str
    kind: str = "jsonl"
    formats: dict[str, int] = field(default_factory=dict)
    unused: dict[str, int] = field(default_factory=dict)  # column -> rows that had it
    notes: list[str] = field(default_factory=list)
    row_kind: str = SFT  # what the rows were read as: sft, pair (dpo, ipo, orpo, simpo), label (kto), prompt (grpo)

    @property
    def images(self) -> int:
        return sum(len(s.images) for s in self.samples)

    @property
    def videos(self) -> int:
        return sum(len(s.videos) for s in self.samples)

    def messages(self) -> list[str]:
        """What was read but not used, said once each with a count."""
        said = list(self.notes)
        for column, rows in sorted(self.unused.items()):
            said.append(f"column '{column}' is not used ({rows} row(s) have it)")
        untrained = sum(1 for s in self.samples for m in s.messages if m["role"] == "assistant" and not m["train"])
        if untrained and self.row_kind == SFT:
            said.append(f"{untrained} assistant turn(s) marked loss: false are context only (not trained)")
        elif untrained and self.row_kind == PROMPT:
            said.append(f"{untrained} earlier assistant turn(s) are context only (GRPO generates the answer)")
        elif untrained:
            said.append(
                f"{untrained} earlier assistant turn(s) are context only (preference rows train the final answer)"
            )
        return said


def _check(messages: list[dict[str, Any]], images: list[Any], videos: list[Any]) -> None:
    assistant = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant:
        raise RowError(ANSWERLESS)
    for k in assistant:
        text = "".join(p.get("text", "") for p in messages[k]["content"] if p["type"] == "text")
        if not text.strip():
            raise RowError(f"empty assistant turn (message {k})")
        if any(p["type"] != "text" for p in messages[k]["content"]):
            raise RowError(
                f"media inside an assistant turn (message {k}): the model reads media, it does not write them"
            )
    if not any(messages[k]["train"] for k in assistant):
        raise RowError("every assistant turn is marked loss: false, so nothing would train")
    for kind, refs in (("image", images), ("video", videos)):
        placeholders = sum(p["type"] == kind for m in messages for p in m["content"])
        if placeholders != len(refs):
            raise RowError(f"{placeholders} {kind} placeholder(s) but {len(refs)} {kind}(s)")


def _media(refs: list[Any], base: Path, root: Path | None, kind: str) -> list[Any]:
    return [check_media(ref, kind, base, root) for ref in refs]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_dataset_rows(path: Path | str, *, image_root: Path | str | None = None, kind: str = SFT) -> Dataset:
    """Read and validate every row as `kind`: "sft" (conversations), "pair" (chosen / rejected,
    for dpo, ipo, orpo, simpo), "label" (a completion with a true/false label, for kto) or
    "prompt" (a prompt and the columns its rewards read, for grpo). Never raises for a bad row
    (they are collected); a row of another kind is one, whose reason names the objective that
    reads it."""
    if kind not in KINDS:
        raise ValueError(f"row kind {kind!r}: one of {', '.join(KINDS)}")
    source = open_source(path, kind)
    root = Path(image_root) if image_root else None
    samples, bad = [], []
    formats: Counter[str] = Counter()
    unused: Counter[str] = Counter()
    dropped = 0
    for line, row, error in source.rows():
        if error:
            bad.append(BadRow(line, error, source.unit))
            continue
        try:
            converted = convert_row(row, source.spec, kind)
            images = _media(converted.images, source.base, root, "image")
            videos = _media(converted.videos, source.base, root, "video")
            if kind == PROMPT:
                check_prompt(converted.messages, images, videos)
            else:
                if kind != SFT:
                    check_answers(converted.messages, converted.rejected, kind)
                _check(converted.messages, images, videos)
        except (RowError, MediaError) as exc:
            bad.append(BadRow(line, str(exc), source.unit))
            continue
        formats[converted.format] += 1
        dropped += converted.dropped
        # a prompt row's other columns go to the rewards; any other row's are said unused
        columns = {k: v for k, v in row.items() if k not in converted.used and v not in (None, "", [], {})}
        if kind != PROMPT:
            unused.update(list(columns))
        samples.append(
            Sample(
                line,
                converted.messages,
                images,
                videos,
                converted.format,
                source.unit,
                converted.tools,
                converted.rejected,
                converted.label,
                columns if kind == PROMPT else {},
            )
        )
    notes = list(source.notes)
    if dropped:
        notes.append(f"{dropped} final assistant turn(s) dropped: GRPO generates the answer")
    target = source.path
    return Dataset(target, samples, bad, file_sha256(target), source.kind, dict(formats), dict(unused), notes, kind)


__all__ = ["BadRow", "Dataset", "Sample", "Spec", "load_dataset_rows", "file_sha256"]
