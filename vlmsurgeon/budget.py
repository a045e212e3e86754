"""Parameter budgets for CI: a YAML file of models, each with a preset (or freeze) and limits in
human units; every limit is checked against `plan`'s figures, computed without weights."""

from __future__ import annotations

import os
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .components import ALL_COMPONENTS
from .errors import BadInput
from .preset import read_yaml

COUNT_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
BYTE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?\d+)?)\s*([A-Za-z%]*)\s*$")
_KEY = re.compile(rf"^(total|trainable|memory|({'|'.join(ALL_COMPONENTS)})\.(params|trainable))$")


class ModelBudget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Optional[str] = None
    model: str
    preset: Optional[str] = None
    freeze: Optional[str] = None
    seq_len: int = Field(default=2048, gt=0)
    batch_size: int = Field(default=1, gt=0)
    image_tokens: int = Field(default=256, ge=0)
    gradient_checkpointing: bool = True
    trust_remote_code: bool = False
    limits: dict[str, Union[str, float, int, dict[str, Union[str, float, int]]]]


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
    figure: int
    threshold: float
    ok: bool

    def describe(self) -> str:
        sign = "<=" if self.limit.bound == "max" else ">="
        return f"{self.limit.key} {sign} {self.limit.text}"


@dataclass
class BudgetResult:
    results: list[LimitResult] = field(default_factory=list)

    @property
    def failures(self) -> list[LimitResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": len(self.results), "failed": len(self.failures),
                "results": [{"model": r.model, "limit": r.limit.key, "bound": r.limit.bound,
                             "value": r.limit.text, "threshold": r.threshold, "figure": r.figure,
                             "ok": r.ok} for r in self.results]}


def parse_amount(text: Union[str, float, int], key: str) -> tuple[float, bool]:
    """'50M' -> 5e7; '1.5B' -> 1.5e9; '1%' -> 0.01 (percent); '12GiB' (memory) -> bytes."""
    match = _NUMBER.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a number with an optional unit")
    number, unit = float(match.group(1)), match.group(2)
    if unit == "%":
        if key == "memory":
            raise ValueError("memory takes bytes (e.g. 12GiB), not a percent")
        return number / 100, True
    if key == "memory":
        scale = BYTE_UNITS.get(unit.upper()) if unit else 1
        if scale is None:
            raise ValueError(f"unknown byte unit '{unit}' (use B, KB, MB, GB, KiB, MiB, GiB, TiB)")
        return number * scale, False
    if unit not in COUNT_UNITS:
        raise ValueError(f"unknown count unit '{unit}' (use K, M, B, T or %)")
    return number * COUNT_UNITS[unit], False


def _parse_limits(limits: dict[str, Any], where: str, problems: list[str]) -> list[Limit]:
    parsed = []
    for key, spec in limits.items():
        loc = f"{where}.limits.{key}"
        if not _KEY.match(key):
            problems.append(f"{loc}: unknown limit (use total, trainable, memory, "
                            "<component>.params or <component>.trainable)")
            continue
        bounds = spec if isinstance(spec, dict) else {"max": spec}
        for bound, text in bounds.items():
            if bound not in ("max", "min"):
                problems.append(f"{loc}.{bound}: use max or min")
                continue
            try:
                value, percent = parse_amount(text, key)
            except ValueError as exc:
                problems.append(f"{loc}: {exc}")
                continue
            parsed.append(Limit(key, str(text), bound, value, percent))
    return parsed


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
            problems.append(f"{loc}: {err['msg']}")
    limits: list[list[Limit]] = []
    models = data.get("models") if isinstance(data, dict) else None
    for i, entry in enumerate(models if isinstance(models, list) else []):
        raw = entry.get("limits") if isinstance(entry, dict) else None
        parsed = _parse_limits(raw, f"models.{i}", problems) if isinstance(raw, dict) else []
        limits.append(parsed)
        keys = raw.keys() if isinstance(raw, dict) else []
        needs_preset = any(k == "memory" or str(k).endswith("trainable") for k in keys)
        if isinstance(entry, dict) and needs_preset and not (entry.get("preset") or entry.get("freeze")):
            problems.append(f"models.{i}: trainable/memory limits need a preset or freeze")
        if isinstance(entry, dict) and entry.get("preset") and entry.get("freeze"):
            problems.append(f"models.{i}: give preset or freeze, not both")
    if problems or budget is None:
        raise BadInput(f"{path}: {len(problems)} problem(s): " + "; ".join(problems),
                       "see examples/budgets.yaml")
    return budget, limits


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
    fig = report.components.get(component)
    params = fig.params if fig else 0
    if what == "params":
        return params, report.total_params
    state = plan.applied.components.get(component)
    return (state.trainable if state else 0), params


def check_budget(path: Path) -> BudgetResult:
    from .plan import PlanSettings, plan_model

    budget, limits = load_budget(path)
    result = BudgetResult()
    for entry, entry_limits in zip(budget.models, limits):
        name = entry.name or entry.model
        settings = PlanSettings(entry.seq_len, entry.batch_size, entry.image_tokens,
                                entry.gradient_checkpointing)
        if entry.preset or entry.freeze:
            plan = plan_model(entry.model, preset=entry.preset, freeze=entry.freeze,
                              settings=settings, trust_remote_code=entry.trust_remote_code)
        else:
            # no preset: every component frozen, so that only counts are checked
            plan = plan_model(entry.model, freeze=",".join(ALL_COMPONENTS),
                              settings=settings, trust_remote_code=entry.trust_remote_code)
        for limit in entry_limits:
            figure, base = _figure(limit.key, plan)
            threshold = limit.value * base if limit.percent else limit.value
            ok = figure <= threshold if limit.bound == "max" else figure >= threshold
            result.results.append(LimitResult(name, limit, figure, threshold, ok))
    return result


def write_junit(result: BudgetResult, out: Path) -> None:
    """One <testcase> per limit, a <failure> for each violated one; written atomically."""
    suites = ET.Element("testsuites", name="vlmsurgeon budget", tests=str(len(result.results)),
                        failures=str(len(result.failures)))
    by_model: dict[str, list[LimitResult]] = {}
    for r in result.results:
        by_model.setdefault(r.model, []).append(r)
    for model, rows in by_model.items():
        suite = ET.SubElement(suites, "testsuite", name=f"budget: {model}", tests=str(len(rows)),
                              failures=str(sum(not r.ok for r in rows)), errors="0")
        for r in rows:
            case = ET.SubElement(suite, "testcase", classname=f"budget.{model}", name=r.describe())
            if not r.ok:
                failure = ET.SubElement(case, "failure", type="BudgetExceeded",
                                        message=f"{r.limit.key} = {r.figure:,} violates {r.describe()} "
                                                f"(threshold {r.threshold:,.0f})")
                failure.text = failure.get("message")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    with os.fdopen(fd, "wb") as fh:
        ET.ElementTree(suites).write(fh, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, out)
