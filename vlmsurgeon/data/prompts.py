"""Prompt rows for `--objective grpo`, as the peers ship them, into the row shape `formats` gives
every row: the prompt as `messages` (system and user turns, earlier assistant turns as context,
ending with a user turn), its media, and every other column of the row as `columns`, which the
reward functions read (a `solution`, an `answer`). Nothing in a prompt row trains: GRPO generates
the answers and trains on those.

| format | recognised by | from |
|---|---|---|
| trl-prompt | `prompt` (text or messages) + `image` / `images` | TRL prompt-only (GRPOTrainer) |
| swift-prompt | `messages` + `images` / `videos` | ms-swift GRPO |
| sharegpt, query-response, alpaca, … | as `formats` reads them | LLaMA-Factory, ms-swift, LLaVA |

A final assistant turn is dropped (ms-swift's GRPO trainer drops it, `remove_response`) and
counted; a TRL `completion` column likewise (TRL's GRPOTrainer ignores it). The pre-pass
(`check`) holds each prompt to --seq-len with room for the longest answer, and each row to the
columns its rewards read."""

from __future__ import annotations

from typing import Any

from .formats import Converted, RowError, Spec, build_message, complete, convert

PROMPT = "prompt"
TRL_PROMPT, SWIFT_PROMPT = "trl-prompt", "swift-prompt"

# Bad-row reasons tests compare whole.
NO_USER = "the prompt has no user turn"
EMPTY_PROMPT = "empty prompt: its last user turn has no text and no media"
# TRL continues a conversational prompt that ends with an assistant turn (continue_final_message)
TRL_PREFILL = (
    "'prompt' ends with an assistant turn, which TRL continues as a prefilled answer: "
    "here GRPO generates the whole answer, so end the prompt with a user turn"
)
MEDIA_IN_ANSWER = "the model reads media, it does not write them"


def trl_prompt(value: Any, inline: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """TRL's `prompt` column: text (one user turn) or a list of messages."""
    if isinstance(value, str):
        return [build_message("user", value, inline)]
    if not isinstance(value, list):
        raise RowError("'prompt' must be text or a list of messages")
    out = []
    for k, message in enumerate(value):
        if not isinstance(message, dict):
            raise RowError(f"prompt message {k} is not an object")
        try:
            out.append(build_message(message.get("role"), message.get("content"), inline, loss=message.get("loss")))
        except RowError as exc:
            raise RowError(f"prompt message {k}: {exc}") from None
    return out


def trl_prompt_only(row: dict[str, Any], spec: Spec) -> bool:
    """TRL's prompt-only shape: a `prompt` column and no answer beside it."""
    return spec.formatting is None and "prompt" in row and not any(k in row for k in ("completion", "chosen"))


def answerless(row: dict[str, Any], spec: Spec) -> bool:
    """A row with no answer to learn from, which only GRPO reads: TRL's prompt-only shape, or a
    conversation without an assistant turn."""
    if trl_prompt_only(row, spec):
        return True
    try:
        messages = convert(row, spec).messages
    except RowError:
        return False
    return not any(m["role"] == "assistant" for m in messages)


def convert_prompt(row: dict[str, Any], spec: Spec) -> Converted:
    """One prompt row. A TRL text prompt is one user turn; with images and no placeholder, the
    images go before its text, where TRL puts them in a conversational prompt
    (`prepare_multimodal_messages`; TRL itself refuses images beside a text prompt). Any other
    row is read by its `formats` converter, its final assistant turn dropped."""
    inline: list[tuple[str, Any]] = []
    if "prompt" in row and spec.formatting is None:
        messages = trl_prompt(row["prompt"], inline)
        if messages and messages[-1]["role"] == "assistant":
            raise RowError(TRL_PREFILL)
        converted = complete(row, spec, TRL_PROMPT, messages, {"prompt", "completion"}, inline)
        converted.dropped = "completion" in row  # trl-lib/tldr's: TRL's GRPOTrainer does not read it
    else:
        converted = convert(row, spec)
        if converted.format == "messages" and spec.formatting is None:
            converted.format = SWIFT_PROMPT
        messages = converted.messages
        if messages and messages[-1]["role"] == "assistant":
            if any(p["type"] != "text" for p in messages[-1]["content"]):
                raise RowError(f"media inside an assistant turn (message {len(messages) - 1}): {MEDIA_IN_ANSWER}")
            messages.pop()
            converted.dropped = True
    for message in converted.messages:
        message["train"] = False  # context: GRPO trains on the answers it generates
    return converted


def check_prompt(messages: list[dict[str, Any]], images: list[Any], videos: list[Any]) -> None:
    """A prompt's own faults: no user turn, a last turn the answer cannot follow, an empty last
    user turn, media in a context answer, placeholders that do not match the media."""
    users = [k for k, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise RowError(NO_USER)
    role = messages[-1]["role"]
    if role not in ("user", "tool"):
        article = "an" if role[0] in "aeiou" else "a"
        raise RowError(f"the prompt ends with {article} {role} turn: the generated answer must follow a user turn")
    last = messages[users[-1]]["content"]
    if not any(p["type"] != "text" or p.get("text", "").strip() for p in last):
        raise RowError(EMPTY_PROMPT)
    for k, message in enumerate(messages):
        if message["role"] == "assistant" and any(p["type"] != "text" for p in message["content"]):
            raise RowError(f"media inside an assistant turn (message {k}): {MEDIA_IN_ANSWER}")
    for kind, refs in (("image", images), ("video", videos)):
        placeholders = sum(p["type"] == kind for m in messages for p in m["content"])
        if placeholders != len(refs):
            raise RowError(f"{placeholders} {kind} placeholder(s) but {len(refs)} {kind}(s)")


def length_problem(tokens: int, completion_tokens: int, seq_len: int) -> str | None:
    """A prompt that leaves no room under --seq-len for the longest answer sampled (a prompt is
    never cut: the model would answer another question)."""
    if tokens + completion_tokens <= seq_len:
        return None
    room = f" + --max-completion-length {completion_tokens}" if completion_tokens else ""
    return f"prompt {tokens} tokens{room} > --seq-len {seq_len}"


def missing_columns(columns: dict[str, Any], required: dict[str, tuple[str, ...]]) -> str | None:
    """The columns a reward reads that the row lacks (or holds empty), each named once."""
    missing = [
        f"reward '{name}' needs column '{column}'"
        for name, needed in required.items()
        for column in needed
        if column not in columns
    ]
    return "; ".join(missing) or None


__all__ = [
    "EMPTY_PROMPT",
    "NO_USER",
    "PROMPT",
    "SWIFT_PROMPT",
    "TRL_PREFILL",
    "TRL_PROMPT",
    "answerless",
    "check_prompt",
    "convert_prompt",
    "length_problem",
    "missing_columns",
    "trl_prompt",
    "trl_prompt_only",
]
