"""`eval` on preference pairs: no generation; each model scores the chosen and the rejected answer
of every pair by their summed log-probs (the quantity DPO's implicit reward is made of). Per
model: preference accuracy (chosen more likely) and mean margin; with `--compare`, the implicit
reward accuracy of the model with the compared one as its reference (DPO's rewards/accuracies)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlmsurgeon.data.collate import Collator
from vlmsurgeon.data.preference import PAIR, pair_conversations
from vlmsurgeon.data.rows import BadRow, Dataset, load_dataset_rows
from vlmsurgeon.errors import BadInput

from .evaluate import Model, _free_accelerator, checked_models


@dataclass
class PairRow:
    line: int
    where: str
    chosen: dict[str, float] = field(default_factory=dict)  # model name -> summed log-prob
    rejected: dict[str, float] = field(default_factory=dict)

    def margin(self, name: str) -> float:
        return self.chosen[name] - self.rejected[name]

    def to_json(self) -> dict[str, Any]:
        return {
            "row": self.line,
            "where": self.where,
            "logps": {"chosen": self.chosen, "rejected": self.rejected},
        }


@dataclass
class PairEvalResult:
    data: str
    models: list[Model]
    rows: list[PairRow]
    skipped: list[BadRow]
    limit: int | None = None

    def totals(self) -> dict[str, dict[str, float]]:
        """Per model: the share of pairs whose chosen answer is the likelier, and the mean margin."""
        n = len(self.rows)
        return {
            m.name: {
                "accuracy": sum(r.margin(m.name) > 0 for r in self.rows) / n,
                "margin": sum(r.margin(m.name) for r in self.rows) / n,
            }
            for m in self.models
        }

    def reward_accuracy(self) -> float | None:
        """With --compare: how often the model, against the compared one as its reference, gives
        the chosen answer the higher implicit reward (β cancels out)."""
        if len(self.models) < 2:
            return None
        return sum(r.margin("model") > r.margin("compare") for r in self.rows) / len(self.rows)

    def delta(self) -> dict[str, float] | None:
        totals = self.totals()
        if "compare" not in totals:
            return None
        return {k: totals["model"][k] - totals["compare"][k] for k in ("accuracy", "margin")}

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "kind": PAIR,
            "models": [vars(m) for m in self.models],
            "rows": len(self.rows),
            "limit": self.limit,
            "skipped": [{"row": b.line, "where": f"{b.unit} {b.line}", "reason": b.reason} for b in self.skipped],
            "totals": self.totals(),
            "delta": self.delta(),
            "reward_accuracy": self.reward_accuracy(),
            "per_row": [r.to_json() for r in self.rows],
        }


def read_pairs(data: str, *, image_root: str | None = None) -> Dataset | None:
    """The data as preference pairs, or None when it holds none (then it is scored by generation)."""
    try:
        pairs = load_dataset_rows(data, image_root=image_root, kind=PAIR)
    except BadInput:
        return None  # a dataset_info entry of another kind: the generation path says what it is
    return pairs if pairs.samples else None


def _logps(loaded: Any, collator: Collator, sample: Any) -> tuple[float, float]:
    """Summed log-probs of the chosen and the rejected answer, the model's logits kept only where
    an answer token is predicted."""
    import torch

    from .answer import _compute_dtype

    batch = collator(list(pair_conversations(sample)))
    device, dtype = next(loaded.model.parameters()).device, _compute_dtype(loaded.model)
    labels = batch.pop("labels")
    inputs = {
        k: (v.to(device).to(dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
        for k, v in batch.items()
    }
    sums = []
    with torch.no_grad():
        logits = loaded.model(**inputs, use_cache=False).logits
        for row in range(2):
            targets = labels[row, 1:].to(logits.device)
            keep = targets != -100
            picked = logits[row, :-1][keep].float().log_softmax(-1)
            sums.append(float(picked.gather(-1, targets[keep].unsqueeze(-1)).sum()))
        del logits
    return sums[0], sums[1]


def evaluate_pairs(
    source: str,
    pairs: Dataset,
    *,
    compare: str | None = None,
    base: str | None = None,
    limit: int | None = None,
    seq_len: int = 1 << 30,
    trust_remote_code: bool = False,
    on_row: Callable[[str, int, int], None] | None = None,
) -> PairEvalResult:
    """Score every pair under `source` (and `compare`), one model in memory at a time."""
    from .generation import load_for_inference

    if limit is not None and limit < 1:
        raise BadInput(f"--limit {limit}: must be at least 1", "e.g. --limit 50")
    samples = pairs.samples[:limit] if limit is not None else pairs.samples
    rows = [PairRow(s.line, s.where) for s in samples]
    models, bases = checked_models(source, compare, base, trust_remote_code)
    for model in models:
        loaded = load_for_inference(model.source, base=bases[model.name], trust_remote_code=trust_remote_code)
        model.kind = loaded.kind
        collator = Collator(loaded.processor, seq_len, **loaded.sampling)
        for done, (sample, row) in enumerate(zip(samples, rows, strict=True), 1):
            row.chosen[model.name], row.rejected[model.name] = _logps(loaded, collator, sample)
            if on_row:
                on_row(model.name, done, len(rows))
        del loaded
        gc.collect()
        _free_accelerator()
    return PairEvalResult(str(pairs.path), models, rows, sorted(pairs.bad, key=lambda b: b.line), limit)
