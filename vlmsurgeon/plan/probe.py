"""Trainable is not trained: which trainable parameters get no gradient. `plan --probe` runs
one forward + backward pass on a narrow replica (same names, shrunk widths) with the preset
applied exactly as `finetune` applies it; `finetune` checks its own first real backward pass."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlmsurgeon.errors import BadInput

MAX_REPLICA = 300_000_000  # parameters: 1.2 GB in fp32, plus gradients; the 235B MoE needs 255M
_EXPERTS = re.compile(r"(^|\.)experts(\.|$)")
_DISPLAY = [
    (re.compile(r"^(module\.)?(base_model\.model\.)?"), ""),
    (re.compile(r"\.modules_to_save\.[^.]+(?=\.)"), ""),
    (re.compile(r"\.(lora_[AB]|lora_embedding_[AB])\.[^.]+(?=\.)"), r".\1"),
]


def display_name(name: str) -> str:
    """A (peft / DDP wrapped) parameter name as the user's model names it; LoRA matrices keep
    their `lora_A` / `lora_B` segment, the adapter name is dropped."""
    for pattern, repl in _DISPLAY:
        name = pattern.sub(repl, name)
    return name


@dataclass
class GradReport:
    """Per component: trainable tensors with no gradient (dead), and expert weights the batch's
    tokens were not routed to (not reached: a routing fact of this batch, not a wiring fault)."""

    checked: int
    dead: dict[str, list[str]] = field(default_factory=dict)
    not_reached: dict[str, list[str]] = field(default_factory=dict)
    trainable: list[str] = field(default_factory=list)
    per_component: dict[str, int] = field(default_factory=dict)  # trainable tensors checked

    @property
    def dead_count(self) -> int:
        return sum(len(v) for v in self.dead.values())

    def dead_names(self) -> set[str]:
        return {n for names in self.dead.values() for n in names}

    def grouped(self, component: str | None = None) -> list[str]:
        names = self.dead_names() if component is None else set(self.dead.get(component, []))
        return group_names(names, self.trainable)

    def component_json(self, component: str) -> dict[str, Any]:
        dead, idle = self.dead.get(component, []), self.not_reached.get(component, [])
        return {
            "dead_trainable": sorted(dead),
            "dead_trainable_count": len(dead),
            "dead_trainable_groups": self.grouped(component),
            "not_reached": sorted(idle),
            "not_reached_count": len(idle),
        }

    def to_json(self) -> dict[str, Any]:
        comps = sorted(set(self.dead) | set(self.not_reached))
        return {
            "checked": self.checked,
            "dead_trainable_count": self.dead_count,
            "components": {c: self.component_json(c) for c in comps},
        }

    def summary(self, limit: int = 6) -> str:
        groups = self.grouped()
        shown = ", ".join(groups[:limit]) + (f", … ({len(groups) - limit} more)" if len(groups) > limit else "")
        per = ", ".join(f"{c} {len(v)}" for c, v in sorted(self.dead.items()) if v)
        return f"{self.dead_count} trainable tensor(s) got no gradient ({per}): {shown}"


def group_names(dead: set[str], trainable: list[str]) -> list[str]:
    """Collapse names into `prefix.*` wherever every trainable tensor under a module is dead."""
    under: dict[str, int] = {}
    dead_under: dict[str, int] = {}
    for name in trainable:
        parts = name.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            under[prefix] = under.get(prefix, 0) + 1
            dead_under[prefix] = dead_under.get(prefix, 0) + (name in dead)
    result = []
    for name in sorted(dead):
        parts = name.split(".")
        chosen = name
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            if under.get(prefix, 0) > 1 and dead_under.get(prefix) == under.get(prefix):
                chosen = prefix + ".*"
                break
        if chosen not in result:
            result.append(chosen)
    return result


def _nonzero(tensor: Any) -> bool:
    return tensor is not None and bool(tensor.any())


def gradient_report(model: Any, component: Callable[[str], str]) -> GradReport:
    """Read `.grad` after a backward pass. A LoRA A matrix whose B is still all zero (peft's
    initialisation) gets a zero gradient on the first step by construction: it is live when its
    B got a gradient. Fused expert tensors are checked expert by expert."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    report = GradReport(checked=len(params), trainable=sorted(display_name(n) for n in params))
    for name, param in params.items():
        grad = param.grad
        live = _nonzero(grad)
        if not live and ".lora_A." in name:
            sibling = params.get(name.replace(".lora_A.", ".lora_B."))
            live = sibling is not None and not sibling.detach().any() and _nonzero(sibling.grad)
        shown, comp = display_name(name), component(name)
        report.per_component[comp] = report.per_component.get(comp, 0) + 1
        expert = bool(_EXPERTS.search(shown))
        if not live:
            (report.not_reached if expert else report.dead).setdefault(comp, []).append(shown)
        elif expert and param.dim() == 3 and grad is not None:
            idle = (grad.reshape(grad.shape[0], -1) == 0).all(dim=1).nonzero().flatten().tolist()
            report.not_reached.setdefault(comp, []).extend(f"{shown}[{i}]" for i in idle)
    return report


def _image_never_reached(report: GradReport, batch: dict[str, Any]) -> bool:
    """Without an image token the batch is text + pixels; for families that place image
    features at image tokens the image then reaches nothing — not a finding about the model."""
    placed = bool((batch["labels"] == -100).any())
    vision = report.per_component.get("vision", 0)
    return not placed and vision > 0 and len(report.dead.get("vision", [])) == vision


@dataclass
class ProbeResult:
    report: GradReport
    replica_params: int
    full_params: int
    seconds: float
    tokens: int

    def to_json(self) -> dict[str, Any]:
        return {
            "replica_params": self.replica_params,
            "full_params": self.full_params,
            "seconds": round(self.seconds, 2),
            "tokens": self.tokens,
            **self.report.to_json(),
        }


def probe_model(
    source: Any,
    full: Any,
    preset: Any,
    *,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = True,
    seed: int = 0,
) -> ProbeResult:
    """Build the replica of `full` (a model on meta), apply `preset` as finetune does, run one
    synthetic step and read the gradients."""
    import torch

    from vlmsurgeon.model.sources import build_on_meta
    from vlmsurgeon.model.support import upstream_breakage
    from vlmsurgeon.recipe.freeze import apply_preset

    from .replica import check_names, narrow_config, synthetic_batch, unzero

    broken = upstream_breakage(source.model_type)
    if broken is not None:
        raise BadInput(f"probe: cannot probe {source.model_type}: {broken[0]}", broken[1])
    start = time.perf_counter()
    try:
        narrow = narrow_config(full.config)
        shape = build_on_meta(source, narrow, trust_remote_code)
        check_names(full, shape)
        size = sum(p.numel() for p in shape.parameters())
        if size > MAX_REPLICA:
            raise BadInput(
                f"probe: the narrow replica of {source.model_type} would still hold "
                f"{size:,} parameters (limit {MAX_REPLICA:,})",
                "plan without --probe",
            )
        del shape
        torch.manual_seed(seed)
        replica = build_on_meta(source, narrow, trust_remote_code, device="cpu")
        unzero(replica, seed)
        replica_params = sum(p.numel() for p in replica.parameters())
        batch = synthetic_batch(replica, narrow, seed)
        if gradient_checkpointing and getattr(replica, "supports_gradient_checkpointing", False):
            replica.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            replica.enable_input_require_grads()
        applied = apply_preset(replica, preset, source.model_type)
        model = applied.model
        model.train()
        model(**batch).loss.backward()
    except BadInput as exc:
        if exc.what.startswith("probe:"):
            raise
        raise BadInput(f"probe: cannot probe {source.model_type}: {exc.what}", exc.hint) from exc
    except Exception as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise BadInput(
            f"probe: cannot probe {source.model_type}: its narrow replica failed ({type(exc).__name__}: {first})",
            "plan without --probe; the families the probe covers are listed in docs/families.md",
        ) from exc
    report = gradient_report(model, applied.component)
    if _image_never_reached(report, batch):
        raise BadInput(
            f"probe: cannot route the synthetic image into {source.model_type}: its config "
            "names no image token id, and nothing in the vision tower got a gradient",
            "plan without --probe; the families the probe covers are listed in docs/families.md",
        )
    return ProbeResult(
        report,
        replica_params,
        sum(p.numel() for p in full.parameters()),
        time.perf_counter() - start,
        int(batch["input_ids"].numel()),
    )
