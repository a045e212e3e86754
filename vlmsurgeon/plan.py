"""`plan`: apply a preset (or --freeze) to the model built on meta and report, per component,
what trains and how, plus an estimate of training memory. No weights are needed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import BadInput
from .freeze import Applied, classified_tree, count_preset, present_components
from .inspection import meta_model
from .memory import ComponentMemory, Estimate, estimate, lm_dims, vision_dims
from .preset import Preset, freeze_preset, load_preset
from .report import Breakdown, breakdown
from .support import training_blocker


@dataclass(frozen=True)
class PlanSettings:
    seq_len: int = 2048
    batch_size: int = 1
    image_tokens: int = 256
    gradient_checkpointing: bool = True
    max_pixels: int | None = None  # when set, image_tokens is derived from it (Qwen-style budgets)


@dataclass
class PlanResult:
    breakdown: Breakdown
    preset: Preset
    applied: Applied
    settings: PlanSettings
    memory: Estimate
    notes: list[str] = field(default_factory=list)
    probe: Any = None  # a probe.ProbeResult with --probe

    @property
    def trainable(self) -> int:
        return self.applied.trainable

    def to_json(self) -> dict[str, Any]:
        data = self.breakdown.to_json()
        for name, entry in data["components"].items():
            state = self.applied.components.get(name)
            entry["trainable"] = state.trainable if state else 0
            entry["mode"] = state.mode if state else self.preset.spec(name).mode.value
            entry["how"] = state.describe if state else self.preset.spec(name).describe()
            entry["lora_modules"] = state.lora_modules if state else 0
            entry["quantized"] = name in self.preset.quantize
        data["preset"] = self.preset.name
        data["trainable_params"] = self.trainable
        data["settings"] = self.settings.__dict__.copy()
        data["memory"] = self.memory.to_json()
        data["notes"] = self.notes
        if self.probe is not None:
            grads = self.probe.report
            for name, entry in data["components"].items():
                entry.update(grads.component_json(name))
            data["probe"] = {k: v for k, v in self.probe.to_json().items() if k != "components"}
            data["probe"]["dead_trainable_groups"] = grads.grouped()
        return data


def resolve_preset(preset: str | None, freeze: str | None, present: list[str]) -> Preset:
    if bool(preset) == bool(freeze):
        raise BadInput("give exactly one of --preset or --freeze",
                       "e.g. --preset lm-lora, or --freeze vision")
    return load_preset(preset) if preset else freeze_preset(freeze or "", present)


def _tokens_from_pixels(config: Any, settings: PlanSettings) -> tuple[PlanSettings, str]:
    """Qwen-style processors give one LM token per (patch × merge)² pixels: --max-pixels is then
    the image-token count per image, the biggest memory lever there is."""
    from dataclasses import replace

    vision = getattr(config, "vision_config", None)
    patch = getattr(vision, "patch_size", None)
    merge = getattr(vision, "spatial_merge_size", None) or 1
    if isinstance(patch, (list, tuple)):
        patch = patch[0]
    if not isinstance(patch, int) or not hasattr(vision, "spatial_merge_size"):
        raise BadInput("--max-pixels: this model's images are not budgeted in pixels (no patch and merge size)",
                       "pass --image-tokens N instead")
    side = patch * merge
    tokens = max(1, settings.max_pixels // (side * side))
    return replace(settings, image_tokens=tokens), (
        f"{tokens} image tokens per sample from --max-pixels {settings.max_pixels:,} "
        f"(one token per {side}×{side} pixels)")


def plan_model(reference: str, *, preset: str | None = None, freeze: str | None = None,
               settings: PlanSettings = PlanSettings(), trust_remote_code: bool = False,
               revision: str | None = None, probe: bool = False) -> PlanResult:
    """Build on meta, select exactly what `finetune` would train, count and estimate."""
    for name in ("seq_len", "batch_size"):
        if getattr(settings, name) <= 0:
            raise BadInput(f"--{name.replace('_', '-')} must be positive", "e.g. 2048 / 1")
    source, model = meta_model(reference, trust_remote_code=trust_remote_code, revision=revision)
    tree = classified_tree(model, source.model_type)
    chosen = resolve_preset(preset, freeze, present_components(tree))
    report = breakdown(tree, model=reference, model_type=source.model_type,
                       source="config" if source.config.get("model_type") else "remote-code")
    config = model.config
    pixel_note = None
    if settings.max_pixels:
        settings, pixel_note = _tokens_from_pixels(config, settings)
    applied = count_preset(model, chosen, source.model_type, tree=tree)
    lm, vocab = lm_dims(config)
    vision, merge = vision_dims(config)
    parts = {}
    for name, fig in report.components.items():
        state = applied.components.get(name)
        lora = state.lora_params if state else 0
        parts[name] = ComponentMemory(
            params=fig.params, linear=fig.linear, quantized=name in chosen.quantize,
            full_trainable=(state.trainable - lora) if state else 0, lora_trainable=lora)
    memory = estimate(parts, lm=lm, vision=vision, vocab=vocab, batch=settings.batch_size,
                      seq_len=settings.seq_len, vision_tokens=settings.image_tokens * merge,
                      checkpointing=settings.gradient_checkpointing)
    result = PlanResult(report, chosen, applied, settings, memory, notes=list(applied.notes))
    if pixel_note:
        result.notes.append(pixel_note)
    blocker = training_blocker(config)
    if blocker:
        result.notes.insert(0, f"finetune cannot train this model: {blocker[0]}")
    if probe:
        from .probe import probe_model

        result.probe = probe_model(source, model, chosen, trust_remote_code=trust_remote_code,
                                   gradient_checkpointing=settings.gradient_checkpointing)
    return result
