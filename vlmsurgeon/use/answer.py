"""Answering a conversation with a model in memory: the model's own chat template and processor,
media placeholders as users type them, greedy by default, streaming the text as it comes; and a
chat kept as history. `generation.py` loads the model; training scores answers through here too."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmsurgeon.errors import BadInput, RuntimeFailure


@dataclass
class Loaded:
    model: Any
    processor: Any
    kind: str  # one of KINDS
    source: str
    quantized: bool
    sampling: dict[str, Any] = field(default_factory=dict)  # the run's video_frames, video_fps, max_pixels
    _marks: dict[str, str] | None = field(default=None, repr=False)

    def placeholders(self) -> dict[str, str]:
        """media_placeholders of this processor, found once (two chat-template renders per kind)."""
        if self._marks is None:
            self._marks = media_placeholders(self.processor)
        return self._marks


@dataclass
class Answer:
    text: str
    tokens: int  # new tokens generated
    prompt_tokens: int
    seconds: float
    ids: list[int] = field(default_factory=list)  # the new tokens, for rewards that read completion_ids


def _media_count(messages: list[dict[str, Any]], kind: str) -> int:
    return sum(p.get("type") == kind for m in messages for p in _parts(m))


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def media_placeholders(processor: Any) -> dict[str, str]:
    """placeholder text -> "image" | "video": LLaMA-Factory's `<image>` / `<video>`, the processor's
    own token (Qwen's `<|image_pad|>`) and what its chat template writes for a media part (Qwen's
    `<|vision_start|><|image_pad|><|vision_end|>`), for the kinds the processor takes."""
    from vlmsurgeon.data.collate import render_chat

    found: dict[str, str] = {}
    kinds = ("image", "video") if getattr(processor, "video_processor", None) is not None else ("image",)
    for kind in kinds:
        marks = [f"<{kind}>", getattr(processor, f"{kind}_token", None)]
        try:
            text = [{"type": "text", "text": "X"}]
            with_media = render_chat(processor, [{"role": "user", "content": [{"type": kind}, *text]}])
            without = render_chat(processor, [{"role": "user", "content": text}])
            marks.append(_inserted(with_media, without).strip())
        except Exception:  # a processor without a usable chat template: its token and ours still count
            pass
        found.update({mark: kind for mark in marks if isinstance(mark, str) and mark})
    return found


def _inserted(longer: str, shorter: str) -> str:
    """What `longer` has that `shorter` lacks, between their common start and end."""
    start = len(os.path.commonprefix([longer, shorter]))
    end = len(os.path.commonprefix([longer[start:][::-1], shorter[start:][::-1]]))
    return longer[start : len(longer) - end]


def _pattern(placeholders: dict[str, str]) -> re.Pattern[str] | None:
    marks = sorted(placeholders, key=len, reverse=True)  # Qwen's whole sequence before its token
    return re.compile("|".join(map(re.escape, marks))) if marks else None


def split_placeholders(text: str, placeholders: dict[str, str]) -> list[dict[str, Any]]:
    """`text` as Sample parts: each typed placeholder a media part, the rest text."""
    pattern, parts, at = _pattern(placeholders), [], 0
    for match in pattern.finditer(text) if pattern else ():
        if match.start() > at:
            parts.append({"type": "text", "text": text[at : match.start()]})
        parts.append({"type": placeholders[match.group()]})
        at = match.end()
    if at < len(text):
        parts.append({"type": "text", "text": text[at:]})
    return parts


def _placed(messages: list[dict[str, Any]], placeholders: dict[str, str]) -> list[dict[str, Any]]:
    """The user turns with their typed placeholders as media parts, so that they are counted
    (the processor would expand its own token, or take `<image>` as words, unchecked)."""
    out = []
    for message in messages:
        parts = _parts(message)
        if message.get("role") == "user":
            parts = [
                q
                for p in parts
                for q in (split_placeholders(p.get("text", ""), placeholders) if p.get("type") == "text" else [p])
            ]
        out.append({**message, "content": parts})
    return out


def _check(loaded: Loaded, messages: list[dict[str, Any]], images: list[Any], videos: list[Any]) -> None:
    if not messages or messages[-1].get("role") != "user":
        raise BadInput("the last turn must be the user's", "end the conversation with a user message")
    for kind, given in (("image", images), ("video", videos)):
        placeholders = _media_count(messages, kind)
        if placeholders != len(given):
            raise BadInput(
                f"{placeholders} {kind} placeholder(s) but {len(given)} {kind}(s)",
                f'give one {kind} per {{"type": "{kind}"}} part or placeholder typed in the text',
            )
    if videos and getattr(loaded.processor, "video_processor", None) is None:
        raise BadInput(
            f"'{loaded.source}' takes no video (its processor, {type(loaded.processor).__name__}, "
            "has no video processor)",
            "pass images instead, or use a video model",
        )


def read_image(ref: Any) -> Any:
    """An RGB PIL image from a path, bytes, base64 or an image, through the media check that data
    check uses (media.check_media): BadInput with its line for a missing or unusable one."""
    from vlmsurgeon.data.media import MediaError, check_media, open_image

    try:
        return open_image(check_media(ref, "image"))
    except MediaError as exc:
        raise BadInput(str(exc), "check the path, or pass a PNG, JPEG or other image PIL reads") from None
    except Exception as exc:  # checked, yet the full decode failed (a truncated file)
        raise BadInput(
            f"cannot open image {ref if isinstance(ref, (str, Path)) else 'data'} ({type(exc).__name__})",
            "pass a PNG, JPEG or other image PIL reads",
        ) from exc


def read_video(ref: Any) -> Any:
    """A video reference checked as data check checks one (media.check_media), resolved; frames
    already decoded (an array, a list of images) as they are."""
    from vlmsurgeon.data.media import MediaError, check_media

    if not isinstance(ref, (str, Path, bytes, bytearray, dict)):
        return ref  # already frames
    try:
        return check_media(ref, "video")
    except MediaError as exc:
        raise BadInput(str(exc), "check the path, or pass a video PyAV decodes (mp4, webm, …)") from None


def _video(ref: Any, collator: Any) -> Any:
    """Frames sampled as finetune samples them: the collator's fps, frame cap and pixel budget
    (collate.VIDEO_FPS, VIDEO_MAX_FRAMES, VIDEO_FRAME_PIXELS by default), never every frame."""
    from vlmsurgeon.data.media import load_video

    resolved = read_video(ref)
    if not isinstance(resolved, (Path, bytes)):
        return resolved  # already frames
    try:
        return load_video(resolved, collator.video_frames, collator.video_fps, collator.frame_pixels)
    except Exception as exc:  # MediaError, or PyAV's own on a stream that fails past its header
        raise BadInput(
            f"cannot open video {ref if not isinstance(ref, bytes) else 'data'} "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
            "pass a video PyAV decodes (mp4, webm, …)",
        ) from exc


def _inputs(loaded: Loaded, messages: list[dict[str, Any]], images: list[Any], videos: list[Any]) -> Any:
    import torch

    from vlmsurgeon.data.collate import Collator, render_chat

    clean = [{"role": m["role"], "content": _parts(m)} for m in messages]
    text = render_chat(loaded.processor, clean, generation_prompt=True)
    try:
        collator = Collator(loaded.processor, 1 << 30, **loaded.sampling)
        batch = collator.encode(text, [read_image(i) for i in images], [_video(v, collator) for v in videos])
    except (ValueError, TypeError) as exc:  # placeholder/feature mismatches the processor finds
        raise BadInput(
            f"the processor refused the input ({str(exc).splitlines()[0][:200]})",
            "check the images and videos against the placeholders",
        ) from exc
    device = next(loaded.model.parameters()).device
    dtype = _compute_dtype(loaded.model)
    out = {}
    for key, value in dict(batch).items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out


def _compute_dtype(model: Any) -> Any:
    import torch

    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return torch.bfloat16 if torch.bfloat16 in floats else (floats[0] if floats else torch.float32)


def _streamer(processor: Any, on_text: Callable[[str], None]) -> Any:
    from transformers import TextStreamer

    class _Stream(TextStreamer):
        """TextStreamer's word-boundary decoding, handed to a callback instead of print."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return _Stream(getattr(processor, "tokenizer", processor), skip_prompt=True, skip_special_tokens=True)


def answer(
    loaded: Loaded,
    messages: list[dict[str, Any]],
    images: list[Any] = (),
    videos: list[Any] = (),
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    on_text: Callable[[str], None] | None = None,
) -> Answer:
    """The model's reply to `messages` (the Sample shape; the last turn the user's): greedy unless
    temperature > 0, only the new tokens decoded, streamed through `on_text` as they come."""
    import torch

    images, videos = list(images), list(videos)
    if max_new_tokens < 1:
        raise BadInput(f"max_new_tokens {max_new_tokens}: must be at least 1", "e.g. --max-new-tokens 64")
    if temperature < 0:
        raise BadInput(f"temperature {temperature}: must not be negative", "0 for greedy decoding")
    messages = _placed(messages, loaded.placeholders())
    _check(loaded, messages, images, videos)
    inputs = _inputs(loaded, messages, images, videos)
    tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature}
        if temperature > 0
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start = time.perf_counter()
    try:
        with torch.no_grad():
            output = loaded.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                streamer=_streamer(loaded.processor, on_text) if on_text else None,
                **sampling,
            )
    except torch.cuda.OutOfMemoryError as exc:
        raise RuntimeFailure("out of GPU memory while generating", "fewer --max-new-tokens or a smaller image") from exc
    seconds = time.perf_counter() - start
    prompt_tokens = int(inputs["input_ids"].shape[1])
    new = output[0, prompt_tokens:]
    text = tokenizer.decode(new, skip_special_tokens=True)
    return Answer(text, int(new.numel()), prompt_tokens, seconds, new.tolist())


def user_turn(text: str, images: int = 0, videos: int = 0) -> dict[str, Any]:
    """One user message in the Sample shape: its media placeholders first, then the text."""
    parts = [{"type": "image"}] * images + [{"type": "video"}] * videos + [{"type": "text", "text": text}]
    return {"role": "user", "content": [dict(p) for p in parts]}


def prompt_turn(loaded: Loaded, text: str, images: int = 0, videos: int = 0) -> dict[str, Any]:
    """The user turn of a typed prompt. Placeholders typed in it (`<image>`, or the model's own,
    see media_placeholders) mark where the media go, as in LLaMA-Factory's data, and must match
    the media given one for one; a prompt without any gets its media before the text."""
    placeholders = loaded.placeholders()
    parts = split_placeholders(text, placeholders)
    pattern = _pattern(placeholders)
    typed = list(dict.fromkeys(pattern.findall(text))) if pattern else []
    lead = []
    for kind, given in (("image", images), ("video", videos)):
        count = sum(p["type"] == kind for p in parts)
        if count and count != given:
            names = ", ".join(t for t in typed if placeholders[t] == kind)
            raise BadInput(
                f"the prompt has {count} {kind} placeholder(s) ({names}) but {given} {kind}(s) given",
                f"one {kind} per placeholder, or no placeholder to put the {kind}(s) before the text",
            )
        lead += [{"type": kind}] * (0 if count else given)
    return {"role": "user", "content": [*lead, *parts]}


@dataclass
class Chat:
    """A conversation kept as messages and media; every turn re-renders the whole history
    through the chat template."""

    loaded: Loaded
    max_new_tokens: int = 128
    temperature: float = 0.0
    messages: list[dict[str, Any]] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)  # images attached to the next turn

    def attach(self, path: str) -> None:
        self.pending.append(read_image(path))  # opened now, so a bad path is said at once

    def reset(self) -> None:
        self.messages, self.images, self.pending = [], [], []

    def ask(self, text: str, on_text: Callable[[str], None] | None = None) -> Answer:
        messages = [*self.messages, prompt_turn(self.loaded, text, len(self.pending))]
        images = [*self.images, *self.pending]
        reply = answer(
            self.loaded,
            messages,
            images,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            on_text=on_text,
        )
        self.messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": reply.text}]}]
        self.images, self.pending = images, []
        return reply
