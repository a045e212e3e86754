"""Freeze presets: for each component `frozen`, `full` or `lora`, and which components load in
4-bit. Validated with pydantic; built-ins live in the package's `presets/` folder."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlmsurgeon.errors import BadInput
from vlmsurgeon.model.components import ALL_COMPONENTS

TARGET_KEYWORDS = ("all-linear", "attention", "mlp")
ComponentName = Literal["vision", "merger", "lm", "head", "audio", "protein", "action", "generator"]
assert set(ComponentName.__args__) == set(ALL_COMPONENTS)  # type: ignore[attr-defined]


class Mode(str, Enum):
    frozen = "frozen"
    full = "full"
    lora = "lora"


class ComponentSpec(BaseModel):
    """How one component trains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Mode.frozen
    r: int | None = Field(default=None, gt=0, description="LoRA rank")
    alpha: float | None = Field(default=None, gt=0, description="LoRA alpha (default 2r)")
    dropout: float = Field(default=0.05, ge=0, lt=1)
    targets: str | list[str] = "all-linear"
    lr: float | None = Field(default=None, gt=0, description="learning rate for this component")

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str) and value not in TARGET_KEYWORDS:
            raise ValueError(f"must be one of {', '.join(TARGET_KEYWORDS)} or a list of module names")
        if isinstance(value, list) and not value:
            raise ValueError("an empty list targets nothing")
        return value

    @model_validator(mode="after")
    def _lora_only_fields(self) -> ComponentSpec:
        if self.mode != Mode.lora and (self.r is not None or self.alpha is not None):
            raise ValueError(f"r/alpha only apply to mode 'lora' (mode is '{self.mode.value}')")
        return self

    @property
    def rank(self) -> int:
        return self.r or 16

    @property
    def lora_alpha(self) -> float:
        return self.alpha or 2.0 * self.rank

    def describe(self) -> str:
        if self.mode == Mode.lora:
            targets = self.targets if isinstance(self.targets, str) else ",".join(self.targets)
            return f"LoRA r={self.rank} α={self.lora_alpha:g} ({targets})"
        return self.mode.value


class Preset(BaseModel):
    """A whole freeze plan. Components not named are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    components: dict[ComponentName, ComponentSpec] = Field(default_factory=dict)
    quantize: list[ComponentName] = Field(default_factory=lambda: ["lm"])

    @model_validator(mode="after")
    def _consistent(self) -> Preset:
        full_4bit = [c for c in self.quantize if self.spec(c).mode == Mode.full]
        if full_4bit:
            raise ValueError(
                f"{', '.join(full_4bit)}: a 4-bit component cannot train in full; "
                "use mode lora or remove it from quantize"
            )
        dropouts = {s.dropout for s in self.components.values() if s.mode == Mode.lora}
        if len(dropouts) > 1:
            raise ValueError("LoRA components must share one dropout (peft applies one per adapter)")
        return self

    def spec(self, component: str) -> ComponentSpec:
        return self.components.get(component, ComponentSpec())

    def trained(self) -> list[str]:
        return [c for c, s in self.components.items() if s.mode != Mode.frozen]


def _format_errors(origin: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return f"{origin}: {len(problems)} problem(s): " + "; ".join(problems)


def parse_preset(data: Any, origin: str) -> Preset:
    if not isinstance(data, dict):
        raise BadInput(f"{origin}: a preset is a YAML mapping", "see `vlmsurgeon presets lm-lora`")
    try:
        return Preset.model_validate(data)
    except ValidationError as exc:
        raise BadInput(_format_errors(origin, exc), "see `vlmsurgeon presets lm-lora` for the format") from exc


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping names the same key twice (PyYAML would silently keep the last)."""

    def __init__(self, key: Any, first: Any, again: Any) -> None:
        super().__init__(None, None, f"duplicate key '{key}' (first at line {first.line + 1})", again)
        self.key, self.first_line, self.line = key, first.line + 1, again.line + 1


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if first is not key_node.start_mark:
                raise DuplicateKey(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path) -> Any:
    """A YAML file (UTF-8, no key given twice), or BadInput naming the file and line."""
    try:
        return load_yaml_text(path.read_text(encoding="utf-8"))
    except DuplicateKey as exc:
        raise BadInput(
            f"{path}: line {exc.line}: duplicate key '{exc.key}' (first at line {exc.first_line}; "
            "YAML would keep only the last)",
            "keep one of them",
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        raise BadInput(
            f"{path}: invalid YAML{where}" + (f" ({problem})" if problem else ""), "fix the file's syntax"
        ) from exc
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"{path}: not a UTF-8 text file (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
            "save it as UTF-8 YAML",
        ) from exc
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})", "check the path") from exc


def builtin_names() -> list[str]:
    folder = resources.files("vlmsurgeon.presets")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def builtin_text(name: str) -> str:
    return resources.files("vlmsurgeon.presets").joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def load_preset(name_or_path: str) -> Preset:
    """A built-in name (`lm-lora`) or a path to the user's own YAML file."""
    path = Path(name_or_path)
    if name_or_path in builtin_names():
        return parse_preset(load_yaml_text(builtin_text(name_or_path)), f"preset '{name_or_path}'")
    if path.is_file():
        return parse_preset(read_yaml(path), str(path))
    raise BadInput(
        f"preset '{name_or_path}': neither a built-in nor a file",
        "one of " + ", ".join(builtin_names()) + ", or a path to a YAML file",
    )


# A text loss gives a speech generator (Qwen-Omni's talker) no gradient: `--freeze X` leaves it
# frozen; a preset that names it trains it.
FROZEN_UNLESS_NAMED = ("generator",)


@dataclass(frozen=True)
class Loading:
    """Which components load in 4-bit, and, when that overrides what the preset and --quantize
    ask for, why."""

    quantized: tuple[str, ...]
    reason: str = ""


def loaded_4bit(preset: Preset, present: Iterable[str], quantize: str = "4bit") -> Loading:
    """The one 4-bit rule for finetune, plan, presets and budget: the preset's `quantize`
    components that the model has, unless --quantize none, or unless nothing trains as LoRA
    (transformers' Trainer refuses a 4-bit model with no adapter attached)."""
    present = list(present)
    asked = tuple(c for c in preset.quantize if c in present)
    if quantize == "none" or not asked:
        return Loading(())
    if not any(preset.spec(c).mode == Mode.lora for c in present):
        return Loading(
            (),
            f"preset '{preset.name}' trains no LoRA adapter, and a 4-bit model trains only "
            f"through adapters: loading without 4-bit (--quantize none), {'/'.join(asked)} in 16-bit",
        )
    return Loading(asked)


def freeze_preset(freeze: str, present: list[str], quantize: tuple[str, ...] = ("lm",)) -> Preset:
    """`--freeze vision,merger`: those frozen, the rest trained the default way: LoRA where
    4-bit (the LM by default), full otherwise (a speech generator stays frozen). The head follows
    the LM: frozen when the LM trains with LoRA (peft's all-linear leaves the output layer out), full
    when it trains full."""
    names = [n.strip() for n in freeze.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_COMPONENTS]
    if unknown or not names:
        raise BadInput(
            f"--freeze: unknown component(s) {', '.join(unknown) or '(none given)'}",
            "valid: " + ", ".join(ALL_COMPONENTS),
        )
    components: dict[str, dict[str, Any]] = {}
    for component in present:
        if component in names or component == "head" or component in FROZEN_UNLESS_NAMED:
            continue
        components[component] = {"mode": "lora" if component in quantize else "full"}
    if "head" not in names and "head" in present:
        lm_mode = components.get("lm", {}).get("mode", "frozen")
        components["head"] = {"mode": "full" if lm_mode == "full" else "frozen"}
    return parse_preset(
        {"name": f"freeze:{','.join(names)}", "components": components, "quantize": list(quantize)}, "--freeze"
    )
