"""Training data as users already have it: JSONL in the messages format (TRL, LLaMA-Factory),
LLaVA-style `conversations` with `<image>`, or a `datasets` directory (save_to_disk). Every row
is validated before training starts; bad rows are reported by line number and reason."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInput

IMAGE = "<image>"
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
         "model": "assistant", "system": "system"}


@dataclass
class Sample:
    """One conversation: messages with content parts ({"type": "image"} / {"type": "text"}),
    and its images (paths, or PIL images from a datasets directory), in placeholder order."""

    line: int
    messages: list[dict[str, Any]]
    images: list[Any] = field(default_factory=list)


@dataclass
class BadRow:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class Dataset:
    path: Path
    samples: list[Sample]
    bad: list[BadRow]
    sha256: str


def _parts(content: Any) -> list[dict[str, Any]]:
    """A message's content as parts; `<image>` inside a string becomes an image part."""
    if isinstance(content, list):
        parts = []
        for item in content:
            if not isinstance(item, dict) or item.get("type") not in ("image", "text"):
                raise ValueError("content parts must be {type: image} or {type: text, text: …}")
            if item["type"] == "text":
                parts.extend(_parts(str(item.get("text", ""))))
            else:
                parts.append({"type": "image"})
        return parts
    if not isinstance(content, str):
        raise ValueError("message content must be a string or a list of parts")
    pieces = content.split(IMAGE)
    parts = []
    for i, chunk in enumerate(pieces):
        if i:
            parts.append({"type": "image"})
        text = chunk.strip("\n") if len(pieces) > 1 else chunk  # "<image>\nQuestion" style
        if text.strip():
            parts.append({"type": "text", "text": text})
    return parts


def _messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    if "messages" in row:
        raw = [(m.get("role"), m.get("content")) for m in row["messages"] if isinstance(m, dict)]
    elif "conversations" in row:
        raw = [(m.get("from"), m.get("value")) for m in row["conversations"] if isinstance(m, dict)]
    else:
        raise ValueError("no 'messages' or 'conversations'")
    out = []
    for k, (role, content) in enumerate(raw):
        if role not in ROLES:
            raise ValueError(f"message {k}: unknown role {role!r}")
        out.append({"role": ROLES[role], "content": _parts(content)})
    if not out:
        raise ValueError("empty conversation")
    return out


def _check(messages: list[dict[str, Any]], images: list[Any]) -> None:
    assistant = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant:
        raise ValueError("no assistant turn")
    for k in assistant:
        text = "".join(p.get("text", "") for p in messages[k]["content"] if p["type"] == "text")
        if not text.strip():
            raise ValueError(f"empty assistant turn (message {k})")
    placeholders = sum(p["type"] == "image" for m in messages for p in m["content"])
    if placeholders != len(images):
        raise ValueError(f"{placeholders} image placeholder(s) but {len(images)} image(s)")


def _image_list(row: dict[str, Any]) -> list[Any]:
    images = row.get("images", row.get("image"))
    if images is None:
        return []
    return images if isinstance(images, list) else [images]


def _resolve_images(images: list[Any], base: Path) -> list[Any]:
    from PIL import Image

    resolved = []
    for image in images:
        if not isinstance(image, (str, Path)):
            resolved.append(image)  # already an image (datasets Image feature)
            continue
        path = (base / image) if not Path(image).is_absolute() else Path(image)
        if not path.is_file():
            raise ValueError(f"image not found: {image}")
        try:
            with Image.open(path) as handle:
                handle.verify()
        except Exception as exc:
            raise ValueError(f"cannot open image {image} ({type(exc).__name__})") from exc
        resolved.append(path)
    return resolved


def _sample(line: int, row: Any, base: Path) -> Sample:
    if not isinstance(row, dict):
        raise ValueError("row is not a JSON object")
    messages = _messages(row)
    images = _resolve_images(_image_list(row), base)
    _check(messages, images)
    return Sample(line, messages, images)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_dataset_rows(path: Path) -> Dataset:
    """Read and validate every row; never raises for a bad row (they are collected)."""
    if not path.exists():
        raise BadInput(f"data '{path}': no such file or directory",
                       "pass a .jsonl file or a datasets directory (save_to_disk)")
    samples, bad = [], []
    for line, row, error in _rows(path):
        if error:
            bad.append(BadRow(line, error))
            continue
        try:
            samples.append(_sample(line, row, path.parent if path.is_file() else path))
        except ValueError as exc:
            bad.append(BadRow(line, str(exc)))
    return Dataset(path, samples, bad, file_sha256(path))


def _rows(path: Path):
    if path.is_dir():
        try:
            from datasets import load_from_disk

            table = load_from_disk(str(path))
        except Exception as exc:
            raise BadInput(f"data '{path}': not a datasets directory ({type(exc).__name__})",
                           "save it with Dataset.save_to_disk, or pass a .jsonl file") from exc
        if hasattr(table, "keys") and "train" in table:
            table = table["train"]
        for i, row in enumerate(table, start=1):
            yield i, row, None
        return
    with path.open(encoding="utf-8") as fh:
        for i, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                yield i, json.loads(text), None
            except json.JSONDecodeError as exc:
                yield i, None, f"invalid JSON ({exc.msg} at column {exc.colno})"
