"""The built-in verifiable rewards, in TRL's reward signature (`completions`, the row's `solution`,
`**kwargs` -> one float, or None where the reward does not apply, per completion), and the parsers
they read answers with: `exact`, `choice` (a letter), `numeric` (the last number), `format`
(<think>…</think><answer>…</answer>) and `iou` (a box)."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_QUOTES = {'"': '"', "'": "'", "`": "`", "“": "”", "‘": "’", "«": "»"}


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational form (a list of messages whose
    content is a string or a list of parts); the messages' texts joined by newlines."""
    if isinstance(completion, str):
        return completion
    messages = [completion] if isinstance(completion, dict) else list(completion or [])
    texts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.append("".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"))
    return "\n".join(texts)


def answer_part(text: str) -> str:
    """The inside of the last `<answer>…</answer>` when there is one, else what follows the last
    `</think>` (the reasoning is not the answer), else the whole text."""
    found = _ANSWER.findall(text)
    if found:
        return found[-1]
    return text.rpartition("</think>")[2] if "</think>" in text else text


def normalize(text: str) -> str:
    """For `exact`: case folded, whitespace collapsed, surrounding quotes and trailing . ! ? gone."""
    text = " ".join(text.casefold().split())
    while True:
        before = text
        text = text.rstrip(".!?").strip()
        if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
        if text == before:
            return text


def _accepted(solution: Any) -> set[str]:
    """The normalised answers a solution accepts: itself, or any of a list of them."""
    if solution is None:
        return set()
    listed = solution if isinstance(solution, (list, tuple)) else [solution]
    return {normalize(answer_part(str(s))) for s in listed if s is not None}


def exact(completions: list[Any], solution: list[Any], **kwargs: Any) -> list[float | None]:
    """1.0 when the answer (inside <answer> if present) equals the solution, or one of a list of
    them, after `normalize`; None where the solution is missing."""
    rewards: list[float | None] = []
    for completion, sol in zip(completions, solution, strict=True):
        gold = _accepted(sol)
        rewards.append(float(normalize(answer_part(completion_text(completion))) in gold) if gold else None)
    return rewards


# "Answer: B", "the answer is (B)", "option B", "correct choice: B."
_LETTER_AFTER = re.compile(r"\b(?:answer|option|choice)\b(?:\s+is)?\s*[:\-]?\s*\(?([A-Z])(?![A-Za-z])", re.I)
_LETTER_ALONE = re.compile(r"^\s*\(?([A-Za-z])\s*[).:]?\s*$")
_LETTER_PAREN = re.compile(r"\(([A-Z])\)")
_LETTER_LINE = re.compile(r"^\s*([A-Z])[.):](?:\s|$)", re.M)


def choice_letter(text: str) -> str | None:
    """The multiple-choice letter an answer picks, in this order: the whole answer is a letter ("b",
    "(B)", "B."); the last "answer/option/choice (is) (:) B"; the last "(B)"; the first line starting
    "B." / "B)" / "B:" ("B. London, because…"). Capitals only except in the first form; else None."""
    text = answer_part(text)
    alone = _LETTER_ALONE.match(text)
    if alone:
        return alone.group(1).upper()
    for pattern, pick in ((_LETTER_AFTER, -1), (_LETTER_PAREN, -1), (_LETTER_LINE, 0)):
        found = [m.group(1) for m in pattern.finditer(text) if m.group(1).isupper()]
        if found:
            return found[pick]
    return None


def choice(completions: list[Any], solution: list[Any], **kwargs: Any) -> list[float | None]:
    """1.0 when the completion picks the solution's letter; None where the solution has no letter."""
    rewards: list[float | None] = []
    for completion, sol in zip(completions, solution, strict=True):
        gold = None if sol is None else choice_letter(str(sol))
        rewards.append(None if gold is None else float(choice_letter(completion_text(completion)) == gold))
    return rewards


_NUMBER = re.compile(
    r"(?<![\w./])([-−+]?)(?:(\d+)/(\d+)(?![\d/])|(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)(?:[eE]([-+]?\d+))?)"
)


def last_number(text: str) -> float | None:
    """The last number in the answer (inside <answer>, else the last \\boxed{}, else after the
    last </think>, else the text): integers, decimals, signs, thousands separators ("1,234.5"),
    exponents ("1e-3") and simple fractions ("3/4" = 0.75); None when there is none."""
    inner = _ANSWER.findall(text)
    boxed = _BOXED.findall(text)
    text = inner[-1] if inner else boxed[-1] if boxed else answer_part(text)
    value = None
    for m in _NUMBER.finditer(text):
        sign = -1.0 if m.group(1) in ("-", "−") else 1.0
        if m.group(2) is not None:
            if int(m.group(3)) == 0:
                continue
            value = sign * int(m.group(2)) / int(m.group(3))
        else:
            exponent = f"e{m.group(5)}" if m.group(5) else ""
            value = sign * float(m.group(4).replace(",", "") + exponent)
    return value


def _number(solution: Any) -> float | None:
    if isinstance(solution, bool) or solution is None:
        return None
    if isinstance(solution, numbers.Real):
        return float(solution) if math.isfinite(solution) else None
    value = last_number(str(solution))
    return value if value is not None and math.isfinite(value) else None


def numeric(completions: list[Any], solution: list[Any], **kwargs: Any) -> list[float | None]:
    """1.0 when the completion's last number equals the solution's (relative 1e-6, absolute 1e-9);
    None where the solution holds no number."""
    rewards: list[float | None] = []
    for completion, sol in zip(completions, solution, strict=True):
        gold = _number(sol)
        got = last_number(completion_text(completion))
        same = got is not None and math.isclose(got, gold, rel_tol=1e-6, abs_tol=1e-9) if gold is not None else False
        rewards.append(None if gold is None else float(same))
    return rewards


_FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.S)


def think_answer(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """`format`: 1.0 when the whole completion is <think>…</think> then <answer>…</answer>."""
    return [float(_FORMAT.fullmatch(completion_text(c)) is not None) for c in completions]


think_answer.__name__ = "format"  # TRL names a reward's metric after its function


_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BOX_LIST = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_BOX_POINTS = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")


def parse_box(value: Any) -> tuple[float, float, float, float] | None:
    """x1, y1, x2, y2 from a list of four numbers or from text: the first `[x1, y1, x2, y2]` (JSON,
    a ```json fence, {"bbox_2d": [...]}) or `(x1,y1),(x2,y2)` (Qwen-VL's <box>…</box> and
    <|box_start|>…<|box_end|>), inside <answer> when there is one. None when there is none."""
    if isinstance(value, dict):
        value = value.get("bbox_2d", value.get("bbox"))
    if isinstance(value, (list, tuple)):
        if len(value) == 4 and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
            return tuple(float(v) for v in value)  # type: ignore[return-value]
        return None
    if not isinstance(value, str):
        return None
    text = answer_part(value)
    found = [m for m in (_BOX_LIST.search(text), _BOX_POINTS.search(text)) if m]
    if not found:
        return None
    first = min(found, key=lambda m: m.start())
    return tuple(float(v) for v in first.groups())  # type: ignore[return-value]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes; 0.0 when either has no area."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, width) * max(0.0, height)
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def iou(completions: list[Any], solution: list[Any], **kwargs: Any) -> list[float | None]:
    """IoU of the completion's box with the solution's, in the coordinates both are given in; 0.0
    when the completion has no box, None when the solution's is missing or has no area."""
    rewards: list[float | None] = []
    for completion, sol in zip(completions, solution, strict=True):
        gold = parse_box(sol)
        if gold is None or not all(map(math.isfinite, gold)) or gold[2] <= gold[0] or gold[3] <= gold[1]:
            rewards.append(None)
            continue
        box = parse_box(completion_text(completion))
        rewards.append(0.0 if box is None or not all(map(math.isfinite, box)) else box_iou(box, gold))
    return rewards


BUILTINS: dict[str, tuple[Callable[..., list[float | None]], tuple[str, ...]]] = {
    "exact": (exact, ("solution",)),
    "choice": (choice, ("solution",)),
    "numeric": (numeric, ("solution",)),
    "format": (think_answer, ()),
    "iou": (iou, ("solution",)),
}
