"""Row formats as the peers ship them, one converter each, into one shape: messages with text /
image / video parts and a `train` flag, plus the row's media references in placeholder order.

| format | recognised by | from |
|---|---|---|
| messages | `messages` | TRL, ms-swift, OpenAI, LLaMA-Factory (openai-style sharegpt) |
| sharegpt | `conversations` | LLaMA-Factory sharegpt, LLaVA |
| prompt-completion | `prompt` + `completion` | TRL |
| query-response | `query` + `response` | ms-swift |
| alpaca | `instruction` + `output` | LLaMA-Factory alpaca |

A LLaMA-Factory `dataset_info.json` entry picks the format and renames columns and tags.
Preference rows (pairs, KTO labels) are read by `preference`, prompt rows (GRPO) by `prompts`,
on top of these converters."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

IMAGE, VIDEO = "<image>", "<video>"
ROLES = {
    "user": "user",
    "human": "user",
    "system": "system",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    # tool use: the call is written by the model (trained), the result comes from outside
    "function_call": "assistant",
    "tool_call": "assistant",
    "tool": "tool",
    "observation": "tool",
    "tool_response": "tool",
    "function": "tool",
    "ipython": "tool",
}
_MEDIA_PARTS = {"image": "image", "image_url": "image", "input_image": "image", "video": "video", "video_url": "video"}


@dataclass(frozen=True)
class Spec:
    """How to read one source: a format name (None: recognise it per row), column renames
    (canonical -> actual) and sharegpt tags, as in LLaMA-Factory's dataset_info.json."""

    formatting: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    ranking: bool = False  # dataset_info's "ranking": true, a preference (chosen / rejected) dataset

    def col(self, name: str, default: str | None = None) -> str:
        return self.columns.get(name, default or name)


@dataclass
class Converted:
    messages: list[dict[str, Any]]
    images: list[Any]
    videos: list[Any]
    used: set[str]
    format: str
    tools: list[Any] = field(default_factory=list)
    rejected: dict[str, Any] | None = None  # a preference pair's rejected final assistant message
    label: bool | None = None  # a KTO row's desirable (True) / undesirable (False)
    dropped: bool = False  # a prompt row's final answer, dropped: GRPO generates it (`prompts`)


class RowError(ValueError):
    """A row that cannot be used, with the reason (reported by line)."""


def split_placeholders(text: str) -> list[dict[str, Any]]:
    """A string's `<image>` / `<video>` placeholders as parts; text around them kept."""
    parts: list[dict[str, Any]] = []
    rest = text
    marked = IMAGE in text or VIDEO in text
    while rest:
        at = [(rest.find(tag), tag) for tag in (IMAGE, VIDEO) if tag in rest]
        if not at:
            chunk, rest = rest, ""
        else:
            pos, tag = min(at)
            chunk, rest = rest[:pos], rest[pos + len(tag) :]
        chunk = chunk.strip("\n") if marked else chunk  # "<image>\nQuestion" style
        if chunk.strip():
            parts.append({"type": "text", "text": chunk})
        if at:
            parts.append({"type": "image" if tag == IMAGE else "video"})
    return parts


def _inline_ref(item: dict[str, Any], kind: str) -> Any:
    """The media an OpenAI / transformers-style part carries itself, if any."""
    for key in (f"{kind}_url", kind, "url", "path"):
        value = item.get(key)
        if isinstance(value, dict):
            value = value.get("url", value)
        if value is not None and not (key == kind and value == kind):
            return value
    return None


def content_parts(content: Any, inline: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """A message's content as parts; media a part carries itself is appended to `inline`."""
    if content is None:
        return []
    if isinstance(content, str):
        return split_placeholders(content)
    if not isinstance(content, list):
        raise RowError("message content must be a string or a list of parts")
    parts: list[dict[str, Any]] = []
    for item in content:
        if isinstance(item, str):
            parts.extend(split_placeholders(item))
            continue
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            parts.extend(split_placeholders(str(item.get("text", ""))))
        elif kind in _MEDIA_PARTS:
            media = _MEDIA_PARTS[kind]
            ref = _inline_ref(item, kind.replace("_url", ""))
            parts.append({"type": media, "inline": ref is not None})
            if ref is not None:
                inline.append((media, ref))
        elif kind in ("audio", "input_audio", "audio_url"):
            raise RowError("audio input is not supported (this tool trains image/video-text models)")
        else:
            raise RowError(f"unknown content part type {kind!r} (expected text, image, image_url or video)")
    return parts


def _tool_calls_text(message: dict[str, Any]) -> str:
    calls = [c.get("function", c) if isinstance(c, dict) else c for c in message["tool_calls"]]
    return json.dumps(calls, ensure_ascii=False)


def build_message(
    role: Any,
    content: Any,
    inline: list[tuple[str, Any]],
    *,
    loss: Any = None,
    tool_calls: bool = False,
    raw: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if role not in ROLES:
        raise RowError(f"unknown role {role!r} (known: {', '.join(sorted(ROLES))})")
    canonical = ROLES[role]
    parts = content_parts(content, inline)
    if tool_calls and raw is not None:
        parts.append({"type": "text", "text": _tool_calls_text(raw)})
    if loss is not None and not isinstance(loss, bool):
        raise RowError(f"'loss' must be true or false, not {loss!r}")
    train = canonical == "assistant" and loss is not False
    return {"role": canonical, "content": parts, "train": train}


def _messages_list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise RowError(f"'{key}' must be a non-empty list of messages")
    return value


def _from_messages(
    row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]
) -> tuple[list[dict[str, Any]], set[str]]:
    key = spec.col("messages")
    if key not in row and "messages" in spec.columns.values():
        key = "messages"
    role_tag, content_tag = spec.tags.get("role_tag", "role"), spec.tags.get("content_tag", "content")
    out = []
    for k, message in enumerate(_messages_list(row.get(key), key)):
        if not isinstance(message, dict):
            raise RowError(f"message {k} is not an object")
        try:
            out.append(
                build_message(
                    _tag_role(message.get(role_tag), spec),
                    message.get(content_tag),
                    inline,
                    loss=message.get("loss"),
                    tool_calls=bool(message.get("tool_calls")),
                    raw=message,
                )
            )
        except RowError as exc:
            raise RowError(f"message {k}: {exc}") from None
    return out, {key}


def _tag_role(role: Any, spec: Spec) -> Any:
    """LLaMA-Factory tags rename the roles (user_tag: "human" …): map them back."""
    for canonical, tag in (
        ("user", "user_tag"),
        ("assistant", "assistant_tag"),
        ("system", "system_tag"),
        ("observation", "observation_tag"),
        ("function_call", "function_tag"),
    ):
        if tag in spec.tags and role == spec.tags[tag]:
            return canonical
    return role


def _from_sharegpt(
    row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]
) -> tuple[list[dict[str, Any]], set[str]]:
    key = (
        spec.col("messages", "conversations")
        if "messages" in spec.columns
        else ("conversations" if "conversations" in row else "conversation")
    )
    tags = {"role_tag": "from", "content_tag": "value", **spec.tags}
    merged = Spec(spec.formatting, spec.columns, tags)
    out = []
    for k, message in enumerate(_messages_list(row.get(key), key)):
        if not isinstance(message, dict):
            raise RowError(f"message {k} is not an object")
        role = message.get(tags["role_tag"], message.get("role"))
        content = message.get(tags["content_tag"], message.get("content"))
        try:
            out.append(build_message(_tag_role(role, merged), content, inline, loss=message.get("loss")))
        except RowError as exc:
            raise RowError(f"message {k}: {exc}") from None
    return out, {key}


def _turns(pairs: Any, key: str) -> list[tuple[Any, Any]]:
    if pairs is None:
        return []
    if not isinstance(pairs, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise RowError(f"'{key}' must be a list of [question, answer] pairs")
    return [tuple(p) for p in pairs]


def _qa(
    history: list[tuple[Any, Any]], question: Any, answer: Any, inline: list[tuple[str, Any]]
) -> list[dict[str, Any]]:
    out = []
    for q, a in [*history, (question, answer)]:
        out.append(build_message("user", q, inline))
        out.append(build_message("assistant", a, inline))
    return out


def _from_alpaca(
    row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]
) -> tuple[list[dict[str, Any]], set[str]]:
    prompt, query, response = (
        spec.col("prompt", "instruction"),
        spec.col("query", "input"),
        spec.col("response", "output"),
    )
    history = spec.col("history")
    question = "\n".join(str(row[k]) for k in (prompt, query) if row.get(k))
    if response not in row:
        raise RowError(f"alpaca row without '{response}'")
    messages = _qa(_turns(row.get(history), history), question, row[response], inline)
    return messages, {prompt, query, response, history}


def _from_query_response(
    row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]
) -> tuple[list[dict[str, Any]], set[str]]:
    history = spec.col("history")
    return _qa(_turns(row.get(history), history), row["query"], row["response"], inline), {"query", "response", history}


def _side(value: Any, role: str, inline: list[tuple[str, Any]], key: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [build_message(role, value, inline)]
    return [
        build_message(m.get("role"), m.get("content"), inline, loss=m.get("loss"))
        for m in _messages_list(value, key)
        if isinstance(m, dict)
    ]


def _from_prompt_completion(
    row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]
) -> tuple[list[dict[str, Any]], set[str]]:
    return (
        _side(row["prompt"], "user", inline, "prompt") + _side(row["completion"], "assistant", inline, "completion")
    ), {"prompt", "completion"}


Converter = Callable[[dict[str, Any], Spec, list[tuple[str, Any]]], tuple[list[dict[str, Any]], set[str]]]
# name -> (recognises a row by its keys, converter); the first that recognises a row reads it.
FORMATS: dict[str, tuple[Callable[[dict[str, Any]], bool], Converter]] = {
    "messages": (lambda r: "messages" in r, _from_messages),
    "sharegpt": (lambda r: "conversations" in r or "conversation" in r, _from_sharegpt),
    "prompt-completion": (lambda r: "prompt" in r and "completion" in r, _from_prompt_completion),
    "query-response": (lambda r: "query" in r and "response" in r, _from_query_response),
    "alpaca": (lambda r: "instruction" in r and "output" in r, _from_alpaca),
}
# LLaMA-Factory's `formatting` values, and which of our readers they mean.
FORMATTING = {"sharegpt": None, "alpaca": "alpaca", "openai": "messages"}


def _media_column(row: dict[str, Any], spec: Spec, kind: str) -> tuple[list[Any], str]:
    key = spec.col(kind)
    value = row.get(key)
    if value is None and kind == "images":
        key, value = "image", row.get("image")  # LLaVA: one image per row, singular
    if value is None:
        return [], key
    return (value if isinstance(value, list) else [value]), key


def _pick(row: dict[str, Any], spec: Spec) -> tuple[str, Converter]:
    if spec.formatting == "sharegpt":
        name = (
            "messages"
            if spec.col("messages", "conversations") in row and spec.tags.get("role_tag") == "role"
            else "sharegpt"
        )
        return name, FORMATS[name][1]
    if spec.formatting == "alpaca":
        return "alpaca", FORMATS["alpaca"][1]
    for name, (recognises, converter) in FORMATS.items():
        if recognises(row):
            return name, converter
    keys = ", ".join(sorted(map(str, row))[:8]) or "none"
    raise RowError(
        f"unknown row format (keys: {keys}); expected one of: messages, conversations, "
        "prompt+completion, query+response, instruction+output"
    )


def convert(row: Any, spec: Spec = Spec()) -> Converted:
    """One row into the common shape. Placeholder-free rows with media get the placeholders TRL
    inserts: all images (then videos) at the start of the first user turn."""
    if not isinstance(row, dict):
        raise RowError("row is not a JSON object")
    name, converter = _pick(row, spec)
    inline: list[tuple[str, Any]] = []
    messages, used = converter(row, spec, inline)
    return complete(row, spec, name, messages, used, inline)


def complete(
    row: dict[str, Any],
    spec: Spec,
    name: str,
    messages: list[dict[str, Any]],
    used: set[str],
    inline: list[tuple[str, Any]],
) -> Converted:
    """What every format shares once its messages are read: the system column, tools, and the
    media, placed (TRL's rule when the row has no placeholders) and in placeholder order."""
    system_key = spec.col("system")
    if row.get(system_key) and not any(m["role"] == "system" for m in messages):
        messages.insert(0, build_message("system", row[system_key], inline))
    used.add(system_key)
    tools_key = spec.col("tools")
    tools = _tools(row.get(tools_key))
    used.add(tools_key)
    images, image_key = _media_column(row, spec, "images")
    videos, video_key = _media_column(row, spec, "videos")
    used |= {image_key, video_key}
    images, videos = _place_media(messages, images, videos, inline)
    return Converted(messages, images, videos, {u for u in used if u in row}, name, tools)


def _tools(value: Any) -> list[Any]:
    """Tool descriptions (a list, or its JSON text as LLaMA-Factory and ms-swift store it)."""
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError("'tools' is text but not JSON") from None
    return value if isinstance(value, list) else [value]


def _place_media(
    messages: list[dict[str, Any]], images: list[Any], videos: list[Any], inline: list[tuple[str, Any]]
) -> tuple[list[Any], list[Any]]:
    parts = [p for m in messages for p in m["content"] if p["type"] in ("image", "video")]
    if inline:
        if images or videos:
            raise RowError("media given both inside the messages and in an images/videos column")
        for part in parts:
            part.pop("inline", None)
        return [r for k, r in inline if k == "image"], [r for k, r in inline if k == "video"]
    for part in parts:
        part.pop("inline", None)
    if not parts and (images or videos):
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise RowError("media but no user turn to place them in")
        first_user["content"][:0] = [{"type": "image"}] * len(images) + [{"type": "video"}] * len(videos)
    return images, videos
