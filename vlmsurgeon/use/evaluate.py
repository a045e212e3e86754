"""Generation metrics on a dataset: each row's conversation up to its last assistant turn is the
prompt, that turn is the reference; a model (and, with a second source, the model to compare it
with) answers greedily and is scored by exact match and token F1 (SQuAD-style normalisation) and
ROUGE-L (Google's rouge-score). Rows that cannot be scored are counted with their reason."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlmsurgeon.data.preference import ANSWERLESS
from vlmsurgeon.data.rows import BadRow, Sample, load_dataset_rows
from vlmsurgeon.errors import BadInput

METRICS = ("exact_match", "f1", "rouge_l")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)
_WORDS = re.compile(r"\w+", re.UNICODE)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 over normalised words; 1.0 when both normalise to nothing."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class _UnicodeWords:
    """rouge-score's default tokenizer keeps only [a-z0-9]: text in other scripts would score 0.
    Same splitting otherwise (lower case, runs of word characters), no stemming."""

    def tokenize(self, text: str) -> list[str]:
        return _WORDS.findall(text.lower())


_SCORER: Any = None


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words), from rouge-score."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeWords())
    return float(_SCORER.score(reference, prediction)["rougeL"].fmeasure)


def score(prediction: str, reference: str) -> dict[str, float]:
    return {
        "exact_match": exact_match(prediction, reference),
        "f1": token_f1(prediction, reference),
        "rouge_l": rouge_l(prediction, reference),
    }


@dataclass
class Model:
    name: str  # "model", or "compare" for --compare
    source: str
    kind: str = ""


@dataclass
class Row:
    """One scored row: `predictions`, `scores`, `tokens` and `seconds` are keyed by model name."""

    line: int
    where: str
    prompt: str
    reference: str
    media: list[tuple[str, Any]] = field(default_factory=list)  # ("image" | "video", resolved ref)
    predictions: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def delta(self) -> dict[str, float] | None:
        if "compare" not in self.scores:
            return None
        return {m: self.scores["model"][m] - self.scores["compare"][m] for m in METRICS}

    def to_json(self) -> dict[str, Any]:
        return {
            "row": self.line,
            "where": self.where,
            "prompt": self.prompt,
            "reference": self.reference,
            "predictions": self.predictions,
            "scores": self.scores,
            "delta": self.delta(),
            "tokens": self.tokens,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }


@dataclass
class EvalResult:
    data: str
    models: list[Model]
    rows: list[Row]
    skipped: list[BadRow]
    limit: int | None = None

    def totals(self) -> dict[str, dict[str, float]]:
        """Means over the scored rows, per model."""
        return {
            m.name: {k: sum(r.scores[m.name][k] for r in self.rows) / len(self.rows) for k in METRICS}
            for m in self.models
        }

    def delta(self) -> dict[str, float] | None:
        """model − compare, per metric: what the fine-tune gained."""
        totals = self.totals()
        if "compare" not in totals:
            return None
        return {k: totals["model"][k] - totals["compare"][k] for k in METRICS}

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "models": [vars(m) for m in self.models],
            "rows": len(self.rows),
            "limit": self.limit,
            "skipped": [{"row": b.line, "where": f"{b.unit} {b.line}", "reason": b.reason} for b in self.skipped],
            "totals": self.totals(),
            "delta": self.delta(),
            "per_row": [r.to_json() for r in self.rows],
        }


def _text(message: dict[str, Any]) -> str:
    return "".join(p.get("text", "") if p["type"] == "text" else f"<{p['type']}>" for p in message["content"])


def split_sample(sample: Sample) -> tuple[list[dict[str, Any]], str]:
    """The prompt (messages before the last assistant turn) and the reference (that turn's text)."""
    last = max(k for k, m in enumerate(sample.messages) if m["role"] == "assistant")
    reference = "".join(p.get("text", "") for p in sample.messages[last]["content"] if p["type"] == "text")
    return [dict(m) for m in sample.messages[:last]], reference.strip()


def prompt_text(messages: list[dict[str, Any]]) -> str:
    return "\n".join(f"{m['role']}: {_text(m)}" for m in messages)


def load_rows(
    data: str, *, image_root: str | None = None, limit: int | None = None
) -> tuple[list[tuple[Sample, Row]], list[BadRow]]:
    """The rows to score (with their prompts and references) and those that cannot be scored."""
    dataset = load_dataset_rows(data, image_root=image_root)
    skipped = list(dataset.bad)
    rows = []
    for sample in dataset.samples:
        prompt, reference = split_sample(sample)
        if not prompt or prompt[-1]["role"] != "user":
            before = f"a '{prompt[-1]['role']}' turn" if prompt else "nothing"
            skipped.append(
                BadRow(
                    sample.line,
                    f"the last assistant turn follows {before}, not a user turn: no prompt to answer",
                    sample.unit,
                )
            )
            continue
        media = [("image", ref) for ref in sample.images] + [("video", ref) for ref in sample.videos]
        rows.append((sample, Row(sample.line, sample.where, prompt_text(prompt), reference, media)))
    skipped.sort(key=lambda b: b.line)
    if not rows:
        first = f": {skipped[0]}" if skipped else ""
        prompts = [b for b in skipped if b.reason == ANSWERLESS]
        if prompts:
            raise BadInput(
                f"eval: {data} has no row to evaluate: {len(prompts)} of {len(skipped)} row(s) are prompts with "
                f"no answer to compare with (first: {prompts[0].unit} {prompts[0].line})",
                "score the answers with --reward, e.g. --reward exact against each row's 'solution'",
            )
        raise BadInput(
            f"eval: {data} has no row to evaluate ({len(skipped)} row(s) skipped{first})",
            "each row needs a user turn and an assistant turn to compare against",
        )
    if limit is not None:
        rows = rows[:limit]
    return rows, skipped


def _generate(
    loaded: Any,
    name: str,
    rows: list[tuple[Sample, Row]],
    max_new_tokens: int,
    on_row: Callable[[str, int, int], None] | None,
) -> None:
    from .answer import answer

    for done, (sample, row) in enumerate(rows, 1):
        prompt, _ = split_sample(sample)
        result = answer(
            loaded, prompt, list(sample.images), list(sample.videos), max_new_tokens=max_new_tokens, temperature=0.0
        )
        row.predictions[name] = result.text
        row.scores[name] = score(result.text, row.reference)
        row.tokens[name] = result.tokens
        row.seconds[name] = result.seconds
        if on_row:
            on_row(name, done, len(rows))


def checked_models(
    source: str, compare: str | None, base: str | None, trust_remote_code: bool
) -> tuple[list[Model], dict[str, str | None]]:
    """SOURCE (and --compare) checked before any of them spends time: the models and the base
    each loads onto (--base is for a bare adapter: SOURCE's, and --compare's when that is one too)."""
    from .generation import check_source, source_kind

    models = [Model("model", source)] + ([Model("compare", compare)] if compare else [])
    bases = {"model": base}
    check_source(source, base=base, trust_remote_code=trust_remote_code)
    if compare:
        try:
            bases["compare"] = base if source_kind(compare) == "adapter" else None
            check_source(compare, base=bases["compare"], trust_remote_code=trust_remote_code)
        except BadInput as exc:
            raise BadInput(f"--compare {exc.what}", exc.hint) from exc
    return models, bases


def evaluate(
    source: str,
    data: str,
    *,
    compare: str | None = None,
    base: str | None = None,
    max_new_tokens: int = 128,
    limit: int | None = None,
    image_root: str | None = None,
    trust_remote_code: bool = False,
    on_row: Callable[[str, int, int], None] | None = None,
) -> EvalResult:
    """Score `source` (and `compare`, on the same rows) on `data`. One model is in memory at a time.
    `base` is the base checkpoint of a bare adapter given as `source`."""
    import gc

    from .generation import load_for_inference

    if limit is not None and limit < 1:
        raise BadInput(f"--limit {limit}: must be at least 1", "e.g. --limit 50")
    # the data and both sources are checked before SOURCE spends its time generating
    rows, skipped = load_rows(data, image_root=image_root, limit=limit)
    models, bases = checked_models(source, compare, base, trust_remote_code)
    for model in models:
        loaded = load_for_inference(model.source, base=bases[model.name], trust_remote_code=trust_remote_code)
        model.kind = loaded.kind
        _generate(loaded, model.name, rows, max_new_tokens, on_row)
        del loaded
        gc.collect()
        _free_accelerator()
    return EvalResult(str(data), models, [row for _, row in rows], skipped, limit)


def _free_accelerator() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
