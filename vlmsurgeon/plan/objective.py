"""What `plan` needs to know of a training objective to price its step: how many sequences a
sample becomes, whether a pass without a graph runs before the policy's, and which knobs the
objective reads. `finetune` trains them (train/objectives.py, train/runconfig.py); plan may not
import train/, so the facts are stated here and tests/test_plan_objective.py keeps the two equal."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmsurgeon.errors import BadInput

OBJECTIVES = ("sft", "dpo", "ipo", "orpo", "simpo", "kto")
PAIRED = frozenset({"dpo", "ipo", "orpo", "simpo"})  # a sample is a pair: chosen and rejected, 2 sequences
REFERENCE = frozenset({"dpo", "ipo", "kto"})  # a reference pass (the adapter disabled) under no_grad
# which objectives read each knob (as train/runconfig.py KNOBS: a knob the objective does not read is refused)
KNOBS = {
    "beta": ("dpo", "ipo", "orpo", "simpo", "kto"),
    "simpo_gamma": ("simpo",),
    "desirable_weight": ("kto",),
    "undesirable_weight": ("kto",),
}


@dataclass(frozen=True)
class Objective:
    """An objective and the knobs given for it (recorded; no knob changes memory)."""

    name: str = "sft"
    knobs: dict[str, float] = field(default_factory=dict, hash=False, compare=True)

    @property
    def paired(self) -> bool:
        return self.name in PAIRED

    @property
    def reference(self) -> bool:
        return self.name in REFERENCE

    def sequences(self, batch: int) -> int:
        """Sequences the policy's forward and backward run per step: 2 per pair."""
        return 2 * batch if self.paired else batch

    def no_grad_sequences(self, batch: int) -> int:
        """Sequences of the largest forward that runs without a graph before the policy's: the
        reference on the pairs (dpo, ipo); kto runs its reference on the completions, then on the
        batch's KL completions, then the policy on those, one after another, each `batch`; 0: none."""
        if self.name == "kto":
            return batch
        return self.sequences(batch) if self.reference else 0

    def describe(self, batch: int) -> str:
        knobs = ", ".join(f"{k} {v:g}" for k, v in self.knobs.items())
        name = f"{self.name} ({knobs})" if knobs else self.name
        if self.name == "sft":
            return f"{name}: the model's own loss on {batch} sequence(s) per step"
        if self.name == "kto":
            return (
                f"{name}: {batch} completion(s) per step; before them, without a graph, the reference (the model "
                f"with its adapter disabled) on them and on {batch} KL completion(s), and the policy on those"
            )
        seqs = f"{batch} pair(s) as {self.sequences(batch)} sequences per step (chosen + rejected)"
        if not self.reference:
            return f"{name}: {seqs}; reference-free"
        return f"{name}: {seqs}; before them, without a graph, the reference: the model with its adapter disabled"

    def to_json(self, batch: int) -> dict[str, object]:
        return {
            "name": self.name,
            "knobs": dict(self.knobs),
            "paired": self.paired,
            "reference": self.reference,
            "sequences": self.sequences(batch),
            "no_grad_sequences": self.no_grad_sequences(batch),
        }


def objective(name: str | None = None, knobs: dict[str, float | None] | None = None, options: bool = True) -> Objective:
    """An objective with the knobs given (None: not given); BadInput for an unknown objective, a
    knob it does not read, or a value out of range. Named as options (`--beta`), or as a budget
    entry's keys (`beta`) with `options=False`."""
    name = name or "sft"

    def label(key: str) -> str:
        return f"--{key.replace('_', '-')}" if options else key

    if name not in OBJECTIVES:
        raise BadInput(f"{label('objective')} '{name}': unknown objective", "one of " + ", ".join(OBJECTIVES))
    given = {k: v for k, v in (knobs or {}).items() if v is not None}
    for knob, value in given.items():
        if knob not in KNOBS:
            raise BadInput(f"{label(knob)}: unknown knob", "one of " + ", ".join(map(label, KNOBS)))
        if name not in KNOBS[knob]:
            raise BadInput(
                f"{label(knob)} applies to objective {' or '.join(KNOBS[knob])}, not {name}",
                f"drop {label(knob)}, or set the objective that reads it",
            )
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (value < 0 if knob == "simpo_gamma" else value <= 0):
            bound = ">= 0" if knob == "simpo_gamma" else "> 0"
            raise BadInput(f"{label(knob)} {value!r}: must be a number {bound}", f"e.g. {label(knob)} 0.1")
    return Objective(name, {k: float(v) for k, v in given.items()})
