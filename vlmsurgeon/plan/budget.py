"""Parameter budgets for CI: a YAML file of models, each with a preset (or freeze) and limits in
human units; every limit is checked against `plan`'s figures, computed without weights."""

from __future__ import annotations

import math
import os
import re
import tempfile
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlmsurgeon import fsutil
from vlmsurgeon.errors import BadInput, RuntimeFailure, VlmSurgeonError
from vlmsurgeon.model.components import ALL_COMPONENTS
from vlmsurgeon.model.report import human, percent
from vlmsurgeon.recipe.preset import load_preset, read_yaml

from .amounts import parse_amount
from .objective import KNOBS, OBJECTIVES, Objective, objective

_KEY = re.compile(rf"^(total|trainable|memory|({'|'.join(ALL_COMPONENTS)})\.(params|trainable))$")
# A staged JUnit file is `.NAME.<random>.tmp` beside NAME; a killed run's leftovers match this.
_STAGING = ".{name}.*.tmp"
# Errors from the shared loaders name command-line options; a budget entry says it with keys.
_OPTION_AS_KEY = (
    ("pass --trust-remote-code", "set trust_remote_code: true on the entry"),
    ("--trust-remote-code", "trust_remote_code: true"),
    ("--freeze", "freeze"),
    ("--preset", "preset"),
    ("--seq-len", "seq_len"),
    ("--batch-size", "batch_size"),
    ("--image-tokens", "image_tokens"),
    ("--objective", "objective"),
    ("--beta", "beta"),
    ("--simpo-gamma", "simpo_gamma"),
    ("--desirable-weight", "desirable_weight"),
    ("--undesirable-weight", "undesirable_weight"),
    ("--num-generations", "num_generations"),
    ("--max-completion-length", "max_completion_length"),
)
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
_OWN_OPTIONS = {"--json", "--junit"}


class ModelBudget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    model: str
    preset: str | None = None
    freeze: str | None = None
    seq_len: int = Field(default=2048, gt=0)
    batch_size: int = Field(default=1, gt=0)
    image_tokens: int = Field(default=256, ge=0)
    gradient_checkpointing: bool = True
    trust_remote_code: bool = False
    # the step the memory limit is checked for: sft, a preference objective or grpo, and its knobs (as finetune's)
    objective: str = "sft"
    beta: float | None = Field(default=None, ge=0)  # > 0 but for grpo (objective.py says which)
    simpo_gamma: float | None = Field(default=None, ge=0)
    desirable_weight: float | None = Field(default=None, gt=0)
    undesirable_weight: float | None = Field(default=None, gt=0)
    num_generations: int | None = None  # grpo's knobs: bounds and words in objective.py RULES
    max_completion_length: int | None = None
    temperature: float | None = None
    epsilon: float | None = None
    loss_type: str | None = None
    importance_sampling: str | None = None
    reward: list[str] | None = None
    completions_every: int | None = None
    limits: dict[str, str | float | int | dict[str, str | float | int]]

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, name: str) -> str:
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective '{name}' (one of {', '.join(OBJECTIVES)})")
        return name

    @model_validator(mode="after")
    def _objective_and_its_knobs(self) -> ModelBudget:
        """An unknown objective, or a knob it does not read, is refused (as finetune refuses it)."""
        try:
            self.planned_objective()
        except BadInput as exc:
            raise ValueError(exc.what + (f" ({exc.hint})" if exc.hint else "")) from None
        return self

    def planned_objective(self) -> Objective:
        return objective(self.objective, {k: getattr(self, k) for k in KNOBS}, options=False)


class BudgetFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelBudget] = Field(min_length=1)


@dataclass(frozen=True)
class Limit:
    key: str
    text: str
    bound: str  # "max" | "min"
    value: float  # absolute (count or bytes), or a fraction when percent
    percent: bool


@dataclass
class LimitResult:
    model: str
    limit: Limit
    figure: int | None  # None when the limit could not be checked
    threshold: float | None
    ok: bool
    entry: int = 0
    error: str | None = None  # why the limit could not be checked
    base: int | None = None  # what a percent limit is a share of

    @property
    def status(self) -> str:
        return "error" if self.error is not None else ("ok" if self.ok else "fail")

    def describe(self) -> str:
        sign = "<=" if self.limit.bound == "max" else ">="
        return f"{self.limit.key} {sign} {self.limit.text}"

    @property
    def edge(self) -> int | None:
        """The threshold as the last whole figure that passes (a percent of a count is fractional)."""
        if self.threshold is None:
            return None
        threshold = round(self.threshold, 6)  # 20% of 100 is 20.000000000000004 in floats
        return math.floor(threshold) if self.limit.bound == "max" else math.ceil(threshold)

    @property
    def margin(self) -> int | None:
        """How far the figure is inside its limit; negative: by how much it violates it."""
        if self.figure is None or self.edge is None:
            return None
        return self.edge - self.figure if self.limit.bound == "max" else self.figure - self.edge

    def amount(self, n: int | None, sep: str = " = ") -> str:
        """A figure in the limit's own units: bytes, a share with its count, or a count."""
        if n is None:
            return "-"
        if self.limit.key == "memory":
            return human(n, "B")
        return f"{percent(n, self.base or 0)}{sep}{n:,}" if self.limit.percent else f"{n:,}"

    def limit_text(self, sep: str = " = ") -> str:
        """`trainable <= 0.05% = 117,835,011`: a percent limit with the count it allows."""
        edge = f"{sep}{self.edge:,}" if self.limit.percent and self.edge is not None else ""
        return self.describe() + edge


@dataclass
class EntryError:
    """Something of one entry (its model, or one of its limits) that could not be checked."""

    entry: int | None  # None: the budget file itself
    model: str
    what: str
    hint: str | None = None
    exit_code: int = 2
    traceback: str | None = None  # printed under VLMSURGEON_DEBUG=1

    @property
    def where(self) -> str:
        return "budget file" if self.entry is None else f"models.{self.entry} '{self.model}'"

    def reason(self) -> str:
        return f"{self.what} (try: {self.hint})" if self.hint else self.what

    def line(self) -> str:
        return f"{self.where}: {self.reason()}"


@dataclass
class BudgetResult:
    results: list[LimitResult] = field(default_factory=list)
    errors: list[EntryError] = field(default_factory=list)

    @property
    def failures(self) -> list[LimitResult]:
        return [r for r in self.results if not r.ok and r.error is None]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.errors

    @property
    def exit_code(self) -> int:
        """2 (3: a runtime failure) when anything went unchecked, else 1 on a violation, else 0."""
        if self.errors:
            return max(2, *(e.exit_code for e in self.errors))
        return 1 if self.failures else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": sum(r.error is None for r in self.results),
            "failed": len(self.failures),
            "errors": [{"model": e.model, "entry": e.entry, "error": e.what, "hint": e.hint} for e in self.errors],
            "results": [
                {
                    "model": r.model,
                    "limit": r.limit.key,
                    "bound": r.limit.bound,
                    "value": r.limit.text,
                    "threshold": r.threshold,
                    "figure": r.figure,
                    "ok": r.ok,
                    "status": r.status,
                    **({"error": r.error} if r.error else {}),
                }
                for r in self.results
            ],
        }


def _parse_limits(limits: dict[Any, Any], where: str, problems: list[str]) -> list[Limit]:
    parsed = []
    for key, spec in limits.items():
        key = str(key)
        loc = f"{where}.limits.{key}"
        if not _KEY.match(key):
            problems.append(
                f"{loc}: unknown limit (use total, trainable, memory, "
                "<component>.params or <component>.trainable; components: "
                f"{', '.join(ALL_COMPONENTS)})"
            )
            continue
        bounds = spec if isinstance(spec, dict) else {"max": spec}
        if not bounds:
            problems.append(f"{loc}: give max and/or min")
        found: dict[str, Limit] = {}
        for bound, text in bounds.items():
            if bound not in ("max", "min"):
                problems.append(f"{loc}.{bound}: use max or min")
                continue
            try:
                value, percent = parse_amount(text, key)
            except ValueError as exc:
                problems.append(f"{loc}: {exc}")
                continue
            found[bound] = Limit(key, str(text), bound, value, percent)
        low, high = found.get("min"), found.get("max")
        if low and high and low.percent == high.percent and low.value > high.value:
            problems.append(f"{loc}: min {low.text} is above max {high.text}; no figure can pass")
        parsed.extend(found.values())
    return parsed


def _check_entry(entry: dict[str, Any], where: str, problems: list[str]) -> None:
    """What can be known wrong in an entry before its model loads: limits against the preset,
    the preset itself, and the names in freeze."""
    keys = [str(k) for k in entry.get("limits") or {}] if isinstance(entry.get("limits"), dict) else []
    preset, freeze = entry.get("preset"), entry.get("freeze")
    if any(k == "memory" or k.endswith("trainable") for k in keys) and not (preset or freeze):
        problems.append(f"{where}: trainable/memory limits need a preset or freeze")
    if preset and freeze:
        problems.append(f"{where}: give preset or freeze, not both")
    if isinstance(freeze, str) and freeze:
        unknown = [n.strip() for n in freeze.split(",") if n.strip() not in ALL_COMPONENTS]
        if unknown:
            problems.append(
                f"{where}.freeze: unknown component(s) {', '.join(map(repr, unknown))} "
                f"(valid: {', '.join(ALL_COMPONENTS)})"
            )
    if isinstance(preset, str) and preset:
        try:
            load_preset(preset)
        except BadInput as exc:
            problems.append(f"{where}.preset: {exc.what}" + (f" ({exc.hint})" if exc.hint else ""))


def load_budget(path: Path) -> tuple[BudgetFile, list[list[Limit]]]:
    """Validate the whole file and report every problem at once, with its field path."""
    if not path.is_file():
        raise BadInput(f"budget file '{path}': no such file", "see examples/budgets.yaml")
    data = read_yaml(path)
    problems: list[str] = []
    budget = None
    try:
        budget = BudgetFile.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            problems.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    limits: list[list[Limit]] = []
    models = data.get("models") if isinstance(data, dict) else None
    for i, entry in enumerate(models if isinstance(models, list) else []):
        raw = entry.get("limits") if isinstance(entry, dict) else None
        limits.append(_parse_limits(raw, f"models.{i}", problems) if isinstance(raw, dict) else [])
        if isinstance(entry, dict):
            _check_entry(entry, f"models.{i}", problems)
    if problems or budget is None:
        raise BadInput(f"{path}: {len(problems)} problem(s): " + "; ".join(problems), "see examples/budgets.yaml")
    return budget, limits


def _for_budget(text: str | None) -> str | None:
    """A loader's message in budget terms: options become entry keys; a hint still naming an
    option `budget check` lacks is dropped rather than sent the user looking for it."""
    if text is None:
        return None
    for option, key in _OPTION_AS_KEY:
        text = text.replace(option, key)
    return " ".join(text.split())


def _entry_error(i: int, name: str, exc: BaseException) -> EntryError:
    """Our errors keep their exit code (2 for bad input); anything else is a runtime failure (3)."""
    if isinstance(exc, VlmSurgeonError):
        hint = _for_budget(exc.hint)
        hint = None if hint and set(_OPTION.findall(hint)) - _OWN_OPTIONS else hint
        return EntryError(i, name, _for_budget(exc.what) or "", hint, exc.exit_code, traceback.format_exc())
    first = str(exc).splitlines()[0] if str(exc) else ""
    return EntryError(
        i,
        name,
        f"{type(exc).__name__}: {first}".rstrip(": "),
        "VLMSURGEON_DEBUG=1 for the traceback",
        3,
        traceback.format_exc(),
    )


def _figure(key: str, plan: Any) -> tuple[int, int]:
    """(figure, base for percentages) for a limit key, from a PlanResult."""
    report = plan.breakdown
    if key == "total":
        return report.total_params, report.total_params
    if key == "trainable":
        return plan.trainable, report.total_params
    if key == "memory":
        m = plan.memory
        return (m.total if plan.settings.gradient_checkpointing else m.total_no_ckpt), 0
    component, what = key.split(".")
    params = report.components[component].params
    if what == "params":
        return params, report.total_params
    state = plan.applied.components.get(component)
    return (state.trainable if state else 0), params


def _plan(entry: ModelBudget) -> Any:
    from .plan import PlanSettings, plan_model

    settings = PlanSettings(
        entry.seq_len,
        entry.batch_size,
        entry.image_tokens,
        entry.gradient_checkpointing,
        objective=entry.planned_objective(),
    )
    # no preset: every component frozen, so that only counts are checked
    freeze = None if entry.preset else (entry.freeze or ",".join(ALL_COMPONENTS))
    return plan_model(
        entry.model, preset=entry.preset, freeze=freeze, settings=settings, trust_remote_code=entry.trust_remote_code
    )


def check_budget(path: Path) -> BudgetResult:
    """Every entry is checked even when one before it fails to load: that entry's limits become
    errors (exit 2), the others keep their verdicts. An invalid file is refused whole (BadInput)."""
    budget, limits = load_budget(path)
    result = BudgetResult()
    for i, (entry, entry_limits) in enumerate(zip(budget.models, limits, strict=True)):
        name = entry.name or entry.model
        try:
            plan = _plan(entry)
        except Exception as exc:  # one entry's failure must not hide the others' verdicts
            error = _entry_error(i, name, exc)
            result.errors.append(error)
            result.results.extend(
                LimitResult(name, limit, None, None, False, i, error.reason()) for limit in entry_limits
            )
            continue
        present = plan.breakdown.components
        for limit in entry_limits:
            component = limit.key.split(".")[0]
            if "." in limit.key and component not in present:
                what = f"limit {limit.key}: the model has no {component} component (it has {', '.join(present)})"
                error = EntryError(i, name, what, "remove the limit, or check `model:`")
                result.errors.append(error)
                result.results.append(LimitResult(name, limit, None, None, False, i, error.reason()))
                continue
            figure, base = _figure(limit.key, plan)
            threshold = limit.value * base if limit.percent else limit.value
            ok = figure <= threshold if limit.bound == "max" else figure >= threshold
            result.results.append(LimitResult(name, limit, figure, threshold, ok, i, base=base))
    return result


def invalid_file_result(path: Path, exc: VlmSurgeonError) -> BudgetResult:
    """The JUnit view of a budget file that could not be read or validated: one error."""
    return BudgetResult(errors=[EntryError(None, str(path), exc.what, exc.hint, exc.exit_code)])


def junit_xml(result: BudgetResult) -> bytes:
    """One <testsuite> per entry and one <testcase> per limit: a <failure> for each violated one,
    an <error> for each that could not be checked (an entry that failed to load, with no limits,
    still gets one test case for its load)."""
    rows_of: dict[int | None, list[LimitResult]] = {}
    for r in result.results:
        rows_of.setdefault(r.entry, []).append(r)
    # an error with no limit rows to carry it (a file error, or an entry without limits)
    bare = [e for e in result.errors if e.entry not in rows_of]
    suites = ET.Element(
        "testsuites",
        name="vlmsurgeon budget",
        tests=str(len(result.results) + len(bare)),
        failures=str(len(result.failures)),
        errors=str(sum(r.status == "error" for r in result.results) + len(bare)),
    )
    order = sorted(set(rows_of) | {e.entry for e in bare}, key=lambda i: -1 if i is None else i)
    for i in order:
        rows = rows_of.get(i, [])
        lone = [e for e in bare if e.entry == i]
        model = rows[0].model if rows else lone[0].model
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=f"budget: {model}",
            tests=str(len(rows) + len(lone)),
            failures=str(sum(r.status == "fail" for r in rows)),
            errors=str(sum(r.status == "error" for r in rows) + len(lone)),
        )
        for r in rows:
            case = ET.SubElement(suite, "testcase", classname=f"budget.{model}", name=r.describe())
            if r.error is not None:
                ET.SubElement(case, "error", type="NotChecked", message=r.error).text = r.error
            elif not r.ok:
                side = "over" if r.limit.bound == "max" else "under"
                message = (
                    f"{r.limit.key} = {r.amount(r.figure)} violates {r.limit_text()} "
                    f"({side} by {r.amount(-(r.margin or 0))})"
                )
                ET.SubElement(case, "failure", type="BudgetExceeded", message=message).text = message
        for e in lone:
            case = ET.SubElement(
                suite, "testcase", classname=f"budget.{model}", name="budget file" if e.entry is None else "load model"
            )
            ET.SubElement(case, "error", type="NotChecked", message=e.reason()).text = e.reason()
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


def write_junit(result: BudgetResult, out: Path) -> None:
    """Written atomically: staged beside `out`, given the umask's modes, renamed. A killed run
    leaves `out` as it was (or absent) and a staged file that the next run removes."""
    _write_atomic(junit_xml(result), out)


def check_junit_target(out: Path) -> None:
    """Before anything is checked: the report can be written at `out` (found at the end, a bad path
    would come after the whole table, as a refusal with a result printed)."""
    folder = next((p for p in (out.parent, *out.parent.parents) if p.exists()), None)
    if out.is_dir():
        raise BadInput(f"--junit {out}: is a folder", "give a file path, e.g. budget.xml")
    if folder is not None and not folder.is_dir():
        raise BadInput(f"--junit {out}: '{folder}' is a file, not a folder", "give a writable file path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise _unwritable(out, exc) from exc


def _unwritable(out: Path, exc: OSError) -> BadInput | RuntimeFailure:
    """BadInput when the path is at fault (exit 2), RuntimeFailure otherwise (a full disk: exit 3)."""
    what = f"--junit {out}: cannot write ({exc.strerror or exc})"
    if exc.errno in fsutil.PATH_ERRNOS:
        return BadInput(what, "give a writable file path")
    return RuntimeFailure(what, "free disk space, or write the report elsewhere")


def _write_atomic(data: bytes, out: Path) -> None:
    """`out` holds all of `data` or what it held before; never a part. OSError becomes BadInput
    when the path is at fault (exit 2), RuntimeFailure otherwise (a full disk: exit 3)."""
    tmp: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fsutil.clean_leftovers(out, (_STAGING,))
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        fsutil.publish(tmp, out)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        raise _unwritable(out, exc) from exc
