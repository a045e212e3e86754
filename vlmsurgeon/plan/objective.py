"""What `plan` needs to know of a training objective to price its step: how many sequences a
sample becomes, whether a pass without a graph runs before the policy's, whether the step
generates first (grpo), and which knobs the objective reads. `finetune` trains them
(train/objectives.py, train/runconfig.py); plan may not import train/, so the facts are stated
here and tests/test_plan_objective.py keeps the two equal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmsurgeon.errors import BadInput

OBJECTIVES = ("sft", "dpo", "ipo", "orpo", "simpo", "kto", "grpo")
PAIRED = frozenset({"dpo", "ipo", "orpo", "simpo"})  # a sample is a pair: chosen and rejected, 2 sequences
REFERENCE = frozenset({"dpo", "ipo", "kto"})  # a reference pass (the adapter disabled) under no_grad; grpo's: beta > 0
# which objectives read each knob (as train/runconfig.py KNOBS: a knob the objective does not read is refused)
KNOBS = {
    "beta": ("dpo", "ipo", "orpo", "simpo", "kto", "grpo"),
    "simpo_gamma": ("simpo",),
    "desirable_weight": ("kto",),
    "undesirable_weight": ("kto",),
    "num_generations": ("grpo",),
    "max_completion_length": ("grpo",),
    "temperature": ("grpo",),
    "epsilon": ("grpo",),
    "loss_type": ("grpo",),
    "importance_sampling": ("grpo",),
    "reward": ("grpo",),
    "completions_every": ("grpo",),
}
# finetune's values for grpo's knobs where the run sets none (train/objectives.py GrpoKnobs, train/grpo.py)
GRPO_DEFAULTS: dict[str, Any] = {
    "num_generations": 8,
    "max_completion_length": 512,
    "temperature": 1.0,
    "beta": 0.0,
    "epsilon": 0.2,
    "loss_type": "dapo",
    "importance_sampling": "token",
    "completions_every": 10,
}


@dataclass(frozen=True)
class Rule:
    """What a knob takes: one of `words`; a list (`listed`, recorded as given); or a number
    (`whole`: an integer) above `least` (`or_equal`: at least `least`)."""

    least: float = 0
    or_equal: bool = False
    whole: bool = False
    words: tuple[str, ...] = ()
    listed: bool = False
    example: str = "0.1"
    why: str = ""


RULES = {
    "beta": Rule(),  # grpo also takes 0: no KL term, no reference pass
    "simpo_gamma": Rule(or_equal=True, example="0.5"),
    "desirable_weight": Rule(example="1.0"),
    "undesirable_weight": Rule(example="1.0"),
    "num_generations": Rule(
        least=2, or_equal=True, whole=True, example="8", why="GRPO's advantage is a reward against its group's mean"
    ),
    "max_completion_length": Rule(least=1, or_equal=True, whole=True, example="512"),
    "temperature": Rule(example="1.0"),
    "epsilon": Rule(example="0.2"),
    "loss_type": Rule(words=("grpo", "dr_grpo", "dapo")),
    "importance_sampling": Rule(words=("token", "sequence")),
    "reward": Rule(listed=True, example="exact"),
    "completions_every": Rule(least=1, or_equal=True, whole=True, example="10"),
}
ZERO_BETA = frozenset({"grpo"})  # objectives whose beta may be 0


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):  # rewards: specs, or finetune's records of them
        return ",".join(str(v.get("spec", v)) if isinstance(v, dict) else str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Objective:
    """An objective and the knobs given for it (recorded; of them only grpo's group size,
    completion length and beta change memory)."""

    name: str = "sft"
    knobs: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def knob(self, key: str) -> Any:
        """A knob as given, else finetune's value for it (grpo's; None for the others')."""
        return self.knobs.get(key, GRPO_DEFAULTS.get(key) if self.generates else None)

    @property
    def paired(self) -> bool:
        return self.name in PAIRED

    @property
    def generates(self) -> bool:
        """The step samples its completions before it trains on them (grpo)."""
        return self.name == "grpo"

    @property
    def group(self) -> int:
        """Sequences a prompt becomes: G completions for grpo, else 1."""
        return int(self.knob("num_generations")) if self.generates else 1

    @property
    def completion(self) -> int | None:
        """grpo's longest completion (the head runs on completion positions only); None otherwise."""
        return int(self.knob("max_completion_length")) if self.generates else None

    @property
    def reference(self) -> bool:
        return self.name in REFERENCE or (self.generates and float(self.knob("beta")) > 0)

    def sequences(self, batch: int) -> int:
        """Sequences the policy's forward and backward run per step: 2 per pair, G per prompt."""
        return 2 * batch if self.paired else batch * self.group

    def no_grad_sequences(self, batch: int) -> int:
        """Sequences of the largest forward that runs without a graph before the policy's: the
        reference on the pairs (dpo, ipo) or on the completions (grpo with beta > 0); kto runs its
        reference on the completions, then on the batch's KL completions, then the policy on those,
        one after another, each `batch`; 0: none."""
        if self.name == "kto":
            return batch
        return self.sequences(batch) if self.reference else 0

    def describe(self, batch: int) -> str:
        knobs = ", ".join(f"{k} {_shown(v)}" for k, v in self.knobs.items())
        name = f"{self.name} ({knobs})" if knobs else self.name
        reference = "the reference: the model with its adapter disabled"
        if self.name == "sft":
            return f"{name}: the model's own loss on {batch} sequence(s) per step"
        if self.name == "kto":
            return (
                f"{name}: {batch} completion(s) per step; before them, without a graph, the reference (the model "
                f"with its adapter disabled) on them and on {batch} KL completion(s), and the policy on those"
            )
        if self.generates:
            return (
                f"{name}: {batch} prompt(s) × {self.group} completions of at most {self.completion} tokens = "
                f"{self.sequences(batch)} sequences per step, sampled first (generate: KV cache, no graph), then "
                + (f"{reference}, without a graph, and the policy" if self.reference else "the policy")
                + " on them"
            )
        seqs = f"{batch} pair(s) as {self.sequences(batch)} sequences per step (chosen + rejected)"
        if not self.reference:
            return f"{name}: {seqs}; reference-free"
        return f"{name}: {seqs}; before them, without a graph, {reference}"

    def to_json(self, batch: int) -> dict[str, object]:
        data: dict[str, object] = {
            "name": self.name,
            "knobs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.knobs.items()},
            "paired": self.paired,
            "reference": self.reference,
            "sequences": self.sequences(batch),
            "no_grad_sequences": self.no_grad_sequences(batch),
        }
        if self.generates:
            data.update(num_generations=self.group, max_completion_length=self.completion)
        return data


def _checked(knob: str, value: Any, name: str, label: str) -> Any:
    """The knob's value as recorded; BadInput when it is out of its rule."""
    rule = RULES[knob]
    if rule.words:
        if value not in rule.words:
            raise BadInput(
                f"{label} {value!r}: must be one of {', '.join(rule.words)}", f"e.g. {label} {rule.words[-1]}"
            )
        return value
    if rule.listed:
        if not isinstance(value, (list, tuple)) or not value:
            raise BadInput(f"{label} {value!r}: must be a list of one or more", f"e.g. {label} {rule.example}")
        return tuple(value)
    or_equal = rule.or_equal or (knob == "beta" and name in ZERO_BETA)
    kinds = int if rule.whole else (int, float)
    number = isinstance(value, kinds) and not isinstance(value, bool)
    if not number or (value < rule.least if or_equal else value <= rule.least):
        bound = f"{'>=' if or_equal else '>'} {rule.least:g}"
        why = f" ({rule.why})" if rule.why else ""
        kind = "a whole number" if rule.whole else "a number"
        raise BadInput(f"{label} {value!r}: must be {kind} {bound}{why}", f"e.g. {label} {rule.example}")
    return int(value) if rule.whole else float(value)


def objective(name: str | None = None, knobs: dict[str, Any] | None = None, options: bool = True) -> Objective:
    """An objective with the knobs given (None: not given), grpo's unset ones at finetune's values;
    BadInput for an unknown objective, a knob it does not read, or a value out of range. Named as
    options (`--beta`), or as a budget entry's keys (`beta`) with `options=False`."""
    name = name or "sft"

    def label(key: str) -> str:
        return f"--{key.replace('_', '-')}" if options else key

    if name not in OBJECTIVES:
        raise BadInput(f"{label('objective')} '{name}': unknown objective", "one of " + ", ".join(OBJECTIVES))
    given = {k: v for k, v in (knobs or {}).items() if v is not None}
    checked = {}
    for knob, value in given.items():
        if knob not in KNOBS:
            raise BadInput(f"{label(knob)}: unknown knob", "one of " + ", ".join(map(label, KNOBS)))
        if name not in KNOBS[knob]:
            raise BadInput(
                f"{label(knob)} applies to objective {' or '.join(KNOBS[knob])}, not {name}",
                f"drop {label(knob)}, or set the objective that reads it",
            )
        checked[knob] = _checked(knob, value, name, label(knob))
    if name == "grpo":
        checked = {**GRPO_DEFAULTS, **checked}
    return Objective(name, checked)
