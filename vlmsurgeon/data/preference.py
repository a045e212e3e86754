"""Preference rows as the peers ship them, into the row shape `formats` gives every row: the
prompt and the chosen answer as `messages` (only that final assistant message trains; earlier
assistant turns are context), the rejected answer beside it, or for KTO one completion and its
label. The media belong to the prompt: chosen and rejected share them.

| format | recognised by | from |
|---|---|---|
| trl-preference | `prompt` + `chosen` + `rejected` | TRL preference, explicit prompt |
| trl-preference-implicit | `chosen` + `rejected`, the prompt their shared start | TRL preference, implicit prompt |
| trl-kto | `prompt` + `completion` + `label` | TRL unpaired preference |
| swift-rejected_response | `messages` + `rejected_response` | ms-swift RLHF (DPO/ORPO/SimPO) |
| swift-rejected_messages | `messages` + `rejected_messages` | ms-swift RLHF |
| swift-kto | `messages` + `label` | ms-swift KTO |
| llamafactory-ranking-FORMATTING | dataset_info `"ranking": true` | LLaMA-Factory preference datasets |
| llamafactory-kto-FORMATTING | dataset_info `columns.kto_tag` | LLaMA-Factory KTO datasets |

A row's kind is what the objective trains on: "sft" (a conversation), "pair" (dpo, ipo, orpo,
simpo), "label" (kto) or "prompt" (grpo, read by `prompts`). A row of another kind is a bad row
whose reason names the objective that reads it, never trained as something else."""

from __future__ import annotations

import dataclasses
from typing import Any

from .formats import (
    ROLES,
    Converted,
    RowError,
    Spec,
    _from_messages,
    _pick,
    _tag_role,
    _turns,
    build_message,
    complete,
    convert,
)
from .prompts import NO_USER, PROMPT, answerless, convert_prompt, trl_prompt_only
from .prompts import trl_prompt as _trl_prompt

SFT, PAIR, LABEL = "sft", "pair", "label"
KINDS = (SFT, PAIR, LABEL, PROMPT)
# the options that train each kind, for the hints of rows read as another kind
OBJECTIVES = {
    SFT: "--objective sft",
    PAIR: "--objective dpo (or ipo, orpo, simpo)",
    LABEL: "--objective kto",
    PROMPT: "--objective grpo",
}

# Bad-row reasons the report counts by (identical pairs), or tests compare whole.
SAME_ANSWER = "chosen and rejected are the same answer"
NO_REJECTED = "no rejected answer: a preference row needs chosen and rejected"
NO_LABEL = "no label: a KTO row needs a completion and a true/false label"
# a prompt with no answer, read as sft, pair or label
ANSWERLESS = f"no assistant turn: a prompt-only row, train it with {OBJECTIVES[PROMPT]}"
AS_SFT = {
    PAIR: f"a preference pair (chosen and rejected): train it with {OBJECTIVES[PAIR]}",
    LABEL: f"a KTO row (completion with a true/false label): train it with {OBJECTIVES[LABEL]}",
}
AS_PAIR_LABELLED = f"a KTO row (a label, no rejected answer): train it with {OBJECTIVES[LABEL]}"
# TRL's KTOTrainer splits pairs into two labelled rows; a Sample here is one row, so it does not
AS_LABEL_PAIR = f"a preference pair, not a labelled row: train it with {OBJECTIVES[PAIR]}"

# ms-swift keys that make a `messages` row a pair
_SWIFT_PAIR_KEYS = ("rejected_response", "rejected_messages", "rejected_images")


def _conversational(value: Any) -> bool:
    """TRL's is_conversational: a list of messages (dicts with a role)."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def shape(row: dict[str, Any], spec: Spec, kind: str) -> tuple[str, str] | None:
    """(format name, "pair" | "label") for a preference row, None for a conversation.
    A dataset_info entry says it for all its rows; a plain file's rows say it by their keys."""
    if spec.formatting is not None:  # LLaMA-Factory: the entry decides, as its converters do
        if spec.ranking:
            return f"llamafactory-ranking-{spec.formatting}", PAIR
        if "kto_tag" in spec.columns:
            return f"llamafactory-kto-{spec.formatting}", LABEL
        return None
    if "messages" in row and any(key in row for key in _SWIFT_PAIR_KEYS):
        return ("swift-rejected_messages" if "rejected_messages" in row else "swift-rejected_response"), PAIR
    if "chosen" in row and "rejected" in row:
        explicit = "prompt" in row and _conversational(row["prompt"]) == _conversational(row["chosen"])
        return ("trl-preference" if explicit else "trl-preference-implicit"), PAIR
    # An SFT file may carry a `label` column of its own (a category): only a true/false one makes
    # it a KTO row there; read for KTO, any `label` is one (and a wrong one a bad row).
    if "label" in row and (kind != SFT or isinstance(row["label"], bool)):
        if "messages" in row:
            return "swift-kto", LABEL
        if "prompt" in row and "completion" in row:
            return "trl-kto", LABEL
    return None


def convert_row(row: Any, spec: Spec, kind: str = SFT) -> Converted:
    """One row as `kind` (sft, pair, label or prompt): a conversation through `formats.convert`,
    a prompt through `prompts`, a pair or a labelled completion here. A row of another kind
    raises with the objective that reads it."""
    if kind not in KINDS:
        raise ValueError(f"row kind {kind!r}: one of {', '.join(KINDS)}")
    if not isinstance(row, dict):
        raise RowError("row is not a JSON object")
    found = shape(row, spec, SFT if kind == PROMPT else kind)
    if found is not None and found[1] == LABEL and answerless(row, spec):
        found = None  # a label beside a prompt with no answer: a column for GRPO's rewards, not KTO's
    if kind == PROMPT:
        if found is not None:
            raise RowError(AS_SFT[found[1]])
        return convert_prompt(row, spec)
    if kind == SFT:
        if found is not None:
            raise RowError(AS_SFT[found[1]])
        if trl_prompt_only(row, spec):
            raise RowError(ANSWERLESS)
        return convert(row, spec)
    if found is None:
        raise RowError(ANSWERLESS if answerless(row, spec) else NO_REJECTED if kind == PAIR else NO_LABEL)
    name, row_kind = found
    if row_kind != kind:
        raise RowError(AS_PAIR_LABELLED if kind == PAIR else AS_LABEL_PAIR)
    inline: list[tuple[str, Any]] = []
    # LLaMA-Factory's names end with the entry's formatting; one reader takes them all
    reader = READERS[name.rsplit("-", 1)[0] if name.startswith("llamafactory-") else name]
    prompt, answer, rejected, label, used = reader(row, spec, inline)
    for message in prompt:
        message["train"] = False  # context: a preference objective scores the final answer only
    for message in (answer, rejected):
        if message is not None:
            message["train"] = True
    converted = complete(row, spec, name, [*prompt, answer], used, inline)
    converted.rejected, converted.label = rejected, label
    return converted


# ---------------------------------------------------------------- answers and labels


def _answer(value: Any, key: str) -> dict[str, Any]:
    """An answer column as one assistant message: text, a message, or a list of exactly one.
    Media in it stay as parts (with no reference kept), which `check_answers` refuses."""
    if isinstance(value, list):
        if len(value) != 1:
            raise RowError(f"'{key}' must be one assistant message, not {len(value)}")
        value = value[0]
    if isinstance(value, dict):
        role = ROLES.get(value.get("role"), value.get("role"))
        if role != "assistant":
            raise RowError(f"'{key}' is a {role!r} message, not an assistant answer")
        return build_message("assistant", value.get("content"), [])
    if value is not None and not isinstance(value, str):
        raise RowError(f"'{key}' must be text or an assistant message, not {type(value).__name__}")
    return build_message("assistant", value, [])


def _label(value: Any, key: str, *, numbers: bool) -> bool:
    """A KTO label: true / false. TRL and ms-swift sum their labels, so 1 / 0 mean the same there
    (`numbers`); LLaMA-Factory reads only booleans (any other kto_tag makes it an SFT row)."""
    if isinstance(value, bool):
        return value
    if numbers and type(value) is int and value in (0, 1):
        return bool(value)
    allowed = "true or false" + (" (or 1 / 0)" if numbers else "")
    raise RowError(f"'{key}' must be {allowed}, not {value!r}")


def _split_last_turn(messages: list[dict[str, Any]], key: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The prompt and the final answer: what follows the last user or tool turn (ms-swift's
    get_last_user_round), which must be one assistant message."""
    last = max((k for k, m in enumerate(messages) if m["role"] in ("user", "tool")), default=-1)
    if last < 0:
        raise RowError(NO_USER)
    tail = messages[last + 1 :]
    if not tail:
        raise RowError(f"'{key}' ends with a {messages[-1]['role']} turn: no answer after it")
    if len(tail) != 1 or tail[0]["role"] != "assistant":
        raise RowError(
            f"'{key}' has {len(tail)} messages after its last user turn: the answer must be one assistant message"
        )
    return messages[: last + 1], tail[0]


# what a reader gives: the prompt, the answer (chosen or completion), the rejected answer, the label, the columns read
Read = tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any] | None, bool | None, set[str]]


# ---------------------------------------------------------------- TRL


def _trl_pair(row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]) -> Read:
    prompt = _trl_prompt(row["prompt"], inline)
    return (
        prompt,
        _answer(row["chosen"], "chosen"),
        _answer(row["rejected"], "rejected"),
        None,
        {"prompt", "chosen", "rejected"},
    )


def _trl_implicit(row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]) -> Read:
    """TRL's extract_prompt: the longest shared start of chosen and rejected is the prompt (whole
    messages, or characters up to a space for text); a `prompt` column of another kind is not read."""
    chosen, rejected = row["chosen"], row["rejected"]
    if chosen == rejected:
        raise RowError(SAME_ANSWER)
    if isinstance(chosen, str) and isinstance(rejected, str):
        at = next((i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b), None)
        at = min(len(chosen), len(rejected)) if at is None else at
        if at and chosen[at - 1] == " ":  # the space before the answer stays with the answer
            at -= 1
        prompt = [build_message("user", chosen[:at], inline)] if chosen[:at].strip() else []
        return prompt, _answer(chosen[at:], "chosen"), _answer(rejected[at:], "rejected"), None, {"chosen", "rejected"}
    if not (_conversational(chosen) and _conversational(rejected)):
        raise RowError("'chosen' and 'rejected' must both be text or both lists of messages")
    at = next((i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b), None)
    at = min(len(chosen), len(rejected)) if at is None else at
    prompt = _trl_prompt(chosen[:at], inline)
    return prompt, _answer(chosen[at:], "chosen"), _answer(rejected[at:], "rejected"), None, {"chosen", "rejected"}


def _trl_kto(row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]) -> Read:
    prompt = _trl_prompt(row["prompt"], inline)
    label = _label(row["label"], "label", numbers=True)
    return prompt, _answer(row["completion"], "completion"), None, label, {"prompt", "completion", "label"}


# ---------------------------------------------------------------- ms-swift


def _swift_messages(row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    return _from_messages(row, spec, inline)[0]


def _text_of(message: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["type"], p.get("text", "")) for p in message["content"]]


def _swift_pair(row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]) -> Read:
    """messages + rejected_response (the rejected final answer: text or one message) or
    rejected_messages (the whole rejected conversation, whose prompt must be the same)."""
    prompt, chosen = _split_last_turn(_swift_messages(row, spec, inline), "messages")
    used = {"messages", "rejected_response", "rejected_messages", "rejected_images"}
    if "rejected_messages" not in row and "rejected_response" not in row:
        raise RowError(
            "'rejected_images' but no 'rejected_response': pairs that differ only in their images are not "
            "supported (the media belong to the prompt, shared by both answers)"
        )
    given = row.get("rejected_images")
    if given is not None and _as_list(given) != _as_list(row.get(spec.col("images"))):
        raise RowError(
            "'rejected_images' differ from 'images': a pair here shares its prompt's media between both answers"
        )
    if "rejected_messages" in row:
        other = _from_messages({"messages": row["rejected_messages"]}, Spec(tags=spec.tags), [])
        other_prompt, rejected = _split_last_turn(other[0], "rejected_messages")
        if [(m["role"], _text_of(m)) for m in other_prompt] != [(m["role"], _text_of(m)) for m in prompt]:
            raise RowError("'rejected_messages' has another prompt than 'messages': a pair shares one prompt")
        return prompt, chosen, rejected, None, used
    return prompt, chosen, _answer(row["rejected_response"], "rejected_response"), None, used


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else (value if isinstance(value, list) else [value])


def _swift_kto(row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]) -> Read:
    prompt, completion = _split_last_turn(_swift_messages(row, spec, inline), "messages")
    return prompt, completion, None, _label(row["label"], "label", numbers=True), {"messages", "label"}


# ---------------------------------------------------------------- LLaMA-Factory


def _lf_alpaca_prompt(row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]) -> tuple[list, set[str]]:
    """LLaMA-Factory's alpaca prompt: history turns, then `instruction\\ninput` as the user turn."""
    prompt, query, history = spec.col("prompt", "instruction"), spec.col("query", "input"), spec.col("history")
    out = []
    for question, answer in _turns(row.get(history), history):
        out += [build_message("user", question, inline), build_message("assistant", answer, inline)]
    out.append(build_message("user", "\n".join(str(row[k]) for k in (prompt, query) if row.get(k)), inline))
    return out, {prompt, query, history}


def _lf_turn(value: Any, spec: Spec, key: str, *, sharegpt: bool) -> dict[str, Any]:
    """A ranking dataset's chosen / rejected turn object, read with the entry's tags (sharegpt's
    defaults from / value, as for its conversations)."""
    if not isinstance(value, dict):
        raise RowError(f"'{key}' must be a message object (LLaMA-Factory's sharegpt ranking format)")
    tags = {**({"role_tag": "from", "content_tag": "value"} if sharegpt else {}), **spec.tags}
    role = _tag_role(value.get(tags.get("role_tag", "role")), Spec(spec.formatting, spec.columns, tags))
    return _answer({"role": role, "content": value.get(tags.get("content_tag", "content"))}, key)


def _lf_ranking(row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]) -> Read:
    chosen_key, rejected_key = spec.col("chosen"), spec.col("rejected")
    used = {chosen_key, rejected_key}
    if spec.formatting == "alpaca":
        prompt, more = _lf_alpaca_prompt(row, spec, inline)
        chosen, rejected = _answer(row.get(chosen_key), chosen_key), _answer(row.get(rejected_key), rejected_key)
        return prompt, chosen, rejected, None, used | more
    name, converter = _pick(row, spec)
    prompt, more = converter(row, spec, inline)
    sharegpt = name == "sharegpt"
    chosen = _lf_turn(row.get(chosen_key), spec, chosen_key, sharegpt=sharegpt)
    rejected = _lf_turn(row.get(rejected_key), spec, rejected_key, sharegpt=sharegpt)
    return prompt, chosen, rejected, None, used | more


def _lf_kto(row: dict[str, Any], spec: Spec, inline: list[tuple[str, Any]]) -> Read:
    key = spec.columns["kto_tag"]
    label = _label(row.get(key), key, numbers=False)
    if spec.formatting == "alpaca":
        prompt, more = _lf_alpaca_prompt(row, spec, inline)
        response = spec.col("response", "output")
        return prompt, _answer(row.get(response), response), None, label, more | {key, response}
    name, converter = _pick(row, spec)
    messages, more = converter(row, spec, inline)
    prompt, completion = _split_last_turn(messages, next(iter(more)))
    return prompt, completion, None, label, more | {key}


READERS = {
    "trl-preference": _trl_pair,
    "trl-preference-implicit": _trl_implicit,
    "trl-kto": _trl_kto,
    "swift-rejected_response": _swift_pair,
    "swift-rejected_messages": _swift_pair,
    "swift-kto": _swift_kto,
    "llamafactory-ranking": _lf_ranking,
    "llamafactory-kto": _lf_kto,
}


# ---------------------------------------------------------------- checks


def _text(message: dict[str, Any]) -> str:
    return "".join(p.get("text", "") for p in message["content"] if p["type"] == "text")


def check_answers(messages: list[dict[str, Any]], rejected: dict[str, Any] | None, kind: str) -> None:
    """A pair's or a KTO row's own faults (the conversation's are `rows._check`'s): a prompt with
    a user turn that the answer follows, answers that are text and not empty, two answers that differ."""
    prompt, answer = messages[:-1], messages[-1]
    if not any(m["role"] == "user" and m["content"] for m in prompt):
        raise RowError(NO_USER)
    if prompt[-1]["role"] not in ("user", "tool"):
        role = prompt[-1]["role"]
        article = "an" if role[0] in "aeiou" else "a"
        raise RowError(f"the prompt ends with {article} {role} turn: the answer must follow a user turn")
    sides = [("chosen", answer), ("rejected", rejected)] if kind == PAIR else [("completion", answer)]
    for side, message in sides:
        assert message is not None  # a pair always has its rejected answer (convert_row)
        if any(p["type"] != "text" for p in message["content"]):
            raise RowError(f"media inside the {side} answer: the model reads media, it does not write them")
        if not _text(message).strip():
            raise RowError(f"empty {side} answer")
    if kind == PAIR and rejected is not None and _text(answer).strip() == _text(rejected).strip():
        raise RowError(SAME_ANSWER)


def pair_conversations(sample: Any) -> tuple[Any, Any]:
    """The chosen and the rejected conversation of a preference row: the same prompt and media,
    the last assistant message swapped."""
    chosen = dataclasses.replace(sample, rejected=None)
    rejected = dataclasses.replace(sample, messages=[*sample.messages[:-1], sample.rejected], rejected=None)
    return chosen, rejected


__all__ = [
    "ANSWERLESS",
    "KINDS",
    "LABEL",
    "PAIR",
    "PROMPT",
    "SAME_ANSWER",
    "SFT",
    "check_answers",
    "convert_row",
    "pair_conversations",
    "shape",
]
