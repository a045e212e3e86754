"""`eval` on prompt rows (what `--objective grpo` trains on): each model answers every prompt
greedily and its answers are scored by the `--reward` functions, as GRPO scores its samples. Per
model: each reward's mean over the rows it applies to (TRL's `rewards/{name}/mean`) and the mean
weighted sum (TRL's `reward`, a None counting 0); with `--compare`, before/after."""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlmsurgeon.data.prompts import PROMPT
from vlmsurgeon.data.rows import BadRow, Dataset, Sample, load_dataset_rows
from vlmsurgeon.errors import BadInput

from .evaluate import Model, _free_accelerator, checked_models, prompt_text
from .rewards import Reward, missing_columns, score

TOTAL = "reward"


def mean_key(name: str) -> str:
    return f"rewards/{name}/mean"


def _plain(value: Any) -> Any:
    """A column's value as JSON can hold it (a table's numpy values as lists and numbers)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return str(value)


@dataclass
class PromptRow:
    """One prompt; `predictions`, `rewards` (name -> value, None where it does not apply), `tokens`
    and `seconds` are keyed by model name."""

    line: int
    where: str
    prompt: str
    columns: dict[str, Any]  # the columns the rewards read
    predictions: dict[str, str] = field(default_factory=dict)
    rewards: dict[str, dict[str, float | None]] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def total(self, name: str, weights: dict[str, float]) -> float:
        """The weighted sum of the rewards that apply (TRL's nansum)."""
        return sum(weights[r] * v for r, v in self.rewards[name].items() if v is not None)

    def to_json(self, weights: dict[str, float]) -> dict[str, Any]:
        return {
            "row": self.line,
            "where": self.where,
            "prompt": self.prompt,
            "columns": {k: _plain(v) for k, v in self.columns.items()},
            "predictions": self.predictions,
            "rewards": self.rewards,
            TOTAL: {name: self.total(name, weights) for name in self.rewards},
            "tokens": self.tokens,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }


@dataclass
class PromptEvalResult:
    data: str
    models: list[Model]
    rewards: list[Reward]
    rows: list[PromptRow]
    skipped: list[BadRow]
    limit: int | None = None

    @property
    def weights(self) -> dict[str, float]:
        return {r.name: r.weight for r in self.rewards}

    def applied(self) -> dict[str, dict[str, int]]:
        """Per model, per reward: on how many rows it gave a number (not None)."""
        return {
            m.name: {r.name: sum(row.rewards[m.name][r.name] is not None for row in self.rows) for r in self.rewards}
            for m in self.models
        }

    def totals(self) -> dict[str, dict[str, float]]:
        """Per model: each reward's mean over the rows it applies to, and the mean weighted total."""
        out = {}
        for m in self.models:
            figures = {}
            for r in self.rewards:
                values = [v for row in self.rows if (v := row.rewards[m.name][r.name]) is not None]
                figures[mean_key(r.name)] = sum(values) / len(values) if values else math.nan
            figures[TOTAL] = sum(row.total(m.name, self.weights) for row in self.rows) / len(self.rows)
            out[m.name] = figures
        return out

    def delta(self) -> dict[str, float] | None:
        totals = self.totals()
        if "compare" not in totals:
            return None
        return {k: totals["model"][k] - totals["compare"][k] for k in totals["model"]}

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "kind": PROMPT,
            "models": [vars(m) for m in self.models],
            "rows": len(self.rows),
            "limit": self.limit,
            "skipped": [{"row": b.line, "where": f"{b.unit} {b.line}", "reason": b.reason} for b in self.skipped],
            "rewards": [
                {"name": r.name, "weight": r.weight, "columns": list(r.columns), "origin": r.origin}
                for r in self.rewards
            ],
            "totals": self.totals(),
            "applied": self.applied(),
            "delta": self.delta(),
            "per_row": [r.to_json(self.weights) for r in self.rows],
        }


def read_prompts(data: str, rewards: list[Reward], *, image_root: str | None = None) -> tuple[Dataset, list[BadRow]]:
    """The prompt rows, and the rows skipped: bad as prompts, or without a column a reward reads."""
    dataset = load_dataset_rows(data, image_root=image_root, kind=PROMPT)
    skipped = list(dataset.bad)
    usable = []
    for sample in dataset.samples:
        missing = missing_columns(rewards, sample.columns)
        if missing:
            column, reward = missing[0]
            skipped.append(BadRow(sample.line, f"no '{column}' column, which reward '{reward}' reads", sample.unit))
        else:
            usable.append(sample)
    skipped.sort(key=lambda b: b.line)
    if not usable:
        first = f": {skipped[0]}" if skipped else ""
        raise BadInput(
            f"eval --reward: {data} has no prompt row to score ({len(skipped)} row(s) skipped{first})",
            "each row needs a user turn to answer and the columns its rewards read (e.g. 'solution')",
        )
    dataset.samples = usable
    return dataset, skipped


def _trl_prompt(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A prompt as TRL hands it to a reward: role and content parts, without our `train` flag."""
    return [{"role": m["role"], "content": [dict(p) for p in m["content"]]} for m in messages]


def _answer_and_score(
    loaded: Any,
    name: str,
    samples: list[Sample],
    rows: list[PromptRow],
    rewards: list[Reward],
    max_new_tokens: int,
    on_row: Callable[[str, int, int], None] | None,
) -> None:
    from .answer import answer

    ids = []
    for done, (sample, row) in enumerate(zip(samples, rows, strict=True), 1):
        result = answer(
            loaded,
            sample.messages,
            list(sample.images),
            list(sample.videos),
            max_new_tokens=max_new_tokens,
            temperature=0.0,
        )
        row.predictions[name], row.tokens[name], row.seconds[name] = result.text, result.tokens, result.seconds
        ids.append(list(result.ids))
        if on_row:
            on_row(name, done, len(rows))
    names = sorted({c for s in samples for c in s.columns})
    table = score(
        rewards,
        [_trl_prompt(s.messages) for s in samples],
        [[{"role": "assistant", "content": row.predictions[name]}] for row in rows],
        {c: [s.columns.get(c) for s in samples] for c in names},
        [s.where for s in samples],
        ids,
    )
    for row, values in zip(rows, table.tolist(), strict=True):
        row.rewards[name] = {r.name: None if math.isnan(v) else v for r, v in zip(rewards, values, strict=True)}


def evaluate_prompts(
    source: str,
    data: str,
    rewards: list[Reward],
    *,
    compare: str | None = None,
    base: str | None = None,
    max_new_tokens: int = 128,
    limit: int | None = None,
    image_root: str | None = None,
    trust_remote_code: bool = False,
    on_row: Callable[[str, int, int], None] | None = None,
) -> PromptEvalResult:
    """Answer every prompt with `source` (and `compare`), one model in memory at a time, and score
    the answers with `rewards` (at least one), each model's as soon as it has answered them all."""
    from .generation import load_for_inference

    if not rewards:
        raise BadInput("eval: prompt rows are scored by reward functions, and none was given", "e.g. --reward exact")
    if limit is not None and limit < 1:
        raise BadInput(f"--limit {limit}: must be at least 1", "e.g. --limit 50")
    dataset, skipped = read_prompts(data, rewards, image_root=image_root)
    samples = dataset.samples[:limit] if limit is not None else dataset.samples
    columns = sorted({c for r in rewards for c in r.columns})
    rows = [PromptRow(s.line, s.where, prompt_text(s.messages), {c: s.columns[c] for c in columns}) for s in samples]
    models, bases = checked_models(source, compare, base, trust_remote_code)
    for model in models:
        loaded = load_for_inference(model.source, base=bases[model.name], trust_remote_code=trust_remote_code)
        model.kind = loaded.kind
        _answer_and_score(loaded, model.name, samples, rows, rewards, max_new_tokens, on_row)
        del loaded
        gc.collect()
        _free_accelerator()
    return PromptEvalResult(str(data), models, rewards, rows, skipped, limit)
