"""`plan`: apply a preset (or --freeze) to the model built on meta and report, per component,
what trains and how, plus an estimate of training memory. No weights are needed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from vlmsurgeon.errors import BadInput
from vlmsurgeon.model.components import param_component
from vlmsurgeon.model.inspection import meta_model
from vlmsurgeon.model.packing import packing_blocker
from vlmsurgeon.model.report import NF4_BITS, Breakdown, breakdown
from vlmsurgeon.model.support import training_blocker
from vlmsurgeon.model.tree import Node
from vlmsurgeon.recipe.freeze import Applied, classified_tree, count_preset, present_components
from vlmsurgeon.recipe.preset import Loading, Preset, freeze_preset, load_preset, loaded_4bit

from .generation import generation_bytes, kv_dims
from .memory import (
    HALF,
    ComponentMemory,
    Estimate,
    ScaleOut,
    ScaleRequest,
    estimate,
    gib,
    lm_dims,
    scale_out,
    vision_dims,
)
from .objective import Objective, objective

_EXPERTS = re.compile(r"(^|\.)experts(\.|$)")
_ATTENTION = re.compile(r"(^|\.)[\w]*(attn|attention)[\w]*(\.|$)")
# Module classes whose children FSDP wraps one by one (transformer blocks)
_BLOCK_LISTS = ("ModuleList",)


@dataclass(frozen=True)
class PlanSettings:
    seq_len: int = 2048
    batch_size: int = 1
    image_tokens: int = 256
    gradient_checkpointing: bool = True
    max_pixels: int | None = None  # when set, image_tokens is derived from it (Qwen-style budgets)
    chunked_loss: bool = True  # finetune's default; --no-chunked-loss holds the full logits
    # sft; a preference objective prices its pairs and its reference, grpo its groups and their generation
    objective: Objective = Objective()
    packing: bool = False  # finetune --packing: every sequence full, --seq-len real tokens, images of several rows


@dataclass
class PlanResult:
    breakdown: Breakdown
    preset: Preset
    applied: Applied
    settings: PlanSettings
    memory: Estimate
    notes: list[str] = field(default_factory=list)
    probe: Any = None  # a probe.ProbeResult with --probe
    quantized: tuple[str, ...] = ()  # what loads in 4-bit (preset.loaded_4bit), not the preset's list
    scale_out: ScaleOut | None = None

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
            entry["quantized"] = name in self.quantized
        data["preset"] = self.preset.name
        data["trainable_params"] = self.trainable
        data["settings"] = {k: v for k, v in self.settings.__dict__.items() if k != "objective"}
        data["objective"] = self.settings.objective.to_json(self.settings.batch_size)
        if self.settings.objective.generates:
            data["objective"]["phases"] = phases_json(self.memory)
        data["memory"] = self.memory.to_json()
        if self.scale_out is not None:
            data["scale_out"] = self.scale_out.to_json()
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
        raise BadInput("give exactly one of --preset or --freeze", "e.g. --preset lm-lora, or --freeze vision")
    return load_preset(preset) if preset else freeze_preset(freeze or "", present)


def _absent_notes(notes: list[str], preset: str | None, freeze: str | None, present: list[str]) -> list[str]:
    """A trained component the model lacks is news when the user named it (their own preset file,
    --freeze); a built-in names every component a model may have (`full` lists audio)."""
    from vlmsurgeon.model.components import ALL_COMPONENTS
    from vlmsurgeon.recipe.preset import builtin_names

    if preset in builtin_names():
        said = {f"{c} is in the preset but not in this model" for c in ALL_COMPONENTS}
        notes = [n for n in notes if n not in said]
    named = [n.strip() for n in (freeze or "").split(",") if n.strip()]
    return [*notes, *(f"{n} is in --freeze but not in this model" for n in named if n not in present)]


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
        raise BadInput(
            "--max-pixels: this model's images are not budgeted in pixels (no patch and merge size)",
            "pass --image-tokens N instead",
        )
    side = patch * merge
    tokens = max(1, settings.max_pixels // (side * side))
    return replace(settings, image_tokens=tokens), (
        f"{tokens} image tokens per sample from --max-pixels {settings.max_pixels:,} "
        f"(one token per {side}×{side} pixels)"
    )


def plan_model(
    reference: str,
    *,
    preset: str | None = None,
    freeze: str | None = None,
    settings: PlanSettings = PlanSettings(),
    trust_remote_code: bool = False,
    revision: str | None = None,
    probe: bool = False,
    quantize: str = "4bit",
    scale: ScaleRequest | None = None,
) -> PlanResult:
    """Build on meta, select exactly what `finetune` would train, count and estimate."""
    for name in ("seq_len", "batch_size"):
        if getattr(settings, name) <= 0:
            raise BadInput(f"--{name.replace('_', '-')} must be positive", "e.g. 2048 / 1")
    if quantize not in ("4bit", "none"):
        raise BadInput(f"--quantize '{quantize}': unknown", "4bit or none")
    objective(settings.objective.name, settings.objective.knobs)  # an unknown one, or a knob it does not read
    completion = settings.objective.completion
    if completion is not None and completion >= settings.seq_len:
        raise BadInput(
            f"--max-completion-length {completion} leaves no room for a prompt in --seq-len {settings.seq_len} "
            "(a sequence is prompt + completion)",
            f"a --seq-len above {completion}, or a shorter --max-completion-length",
        )
    source, model = meta_model(reference, trust_remote_code=trust_remote_code, revision=revision)
    tree = classified_tree(model, source.model_type)
    present = present_components(tree)
    chosen = resolve_preset(preset, freeze, present)
    loading = loaded_4bit(chosen, present, quantize)
    report = breakdown(
        tree,
        model=reference,
        model_type=source.model_type,
        source="config" if source.config.get("model_type") else "remote-code",
    )
    pixel_note = None
    if settings.max_pixels:
        settings, pixel_note = _tokens_from_pixels(model.config, settings)
    applied = count_preset(model, chosen, source.model_type, tree=tree)
    memory = _estimate(report, applied, loading, model.config, settings, largest_linear(tree, loading.quantized))
    result = PlanResult(
        report,
        chosen,
        applied,
        settings,
        memory,
        notes=_absent_notes(applied.notes, preset, freeze, present),
        quantized=loading.quantized,
    )
    if scale is not None:
        result.scale_out = scale_out(
            memory, scale, largest_unit(tree, loading.quantized), settings.gradient_checkpointing
        )
    result.notes.extend(n for n in (loading.reason, pixel_note, _objective_note(settings)) if n)
    if settings.packing:
        result.notes.append(_packing_note(source.model_type, settings))
    result.notes.extend(moe_notes(tree, report, applied, loading))
    blocker = training_blocker(model.config)
    if blocker:
        result.notes.insert(0, f"finetune cannot train this model: {blocker[0]}")
    if probe:
        from .probe import probe_model

        result.probe = probe_model(
            source,
            model,
            chosen,
            trust_remote_code=trust_remote_code,
            gradient_checkpointing=settings.gradient_checkpointing,
        )
    return result


def _objective_note(settings: PlanSettings) -> str | None:
    if settings.objective.name == "kto" and settings.batch_size < 2:
        return (
            "finetune refuses --objective kto with --batch-size 1: its KL baseline pairs each prompt "
            "with another row's completion (priced here as asked)"
        )
    return None


def packed_images(settings: PlanSettings) -> int:
    """Images priced per sequence: one sample's, or with packing as many whole images as fill
    --seq-len (a packed sequence holds several rows, every token real)."""
    if settings.packing and settings.image_tokens:
        return max(1, settings.seq_len // settings.image_tokens)
    return 1


def _packing_note(model_type: str, settings: PlanSettings) -> str:
    blocker = packing_blocker(model_type)
    if blocker is not None:
        return f"finetune --packing refuses this model: {blocker}"
    images = packed_images(settings)
    return (
        f"packed: each sequence priced full, {settings.seq_len:,} real tokens, its vision encoder on up to "
        f"{images} image(s) of {settings.image_tokens:,} tokens"
    )


def _estimate(
    report: Breakdown, applied: Applied, loading: Loading, config: Any, settings: PlanSettings, dequantized: int = 0
) -> Estimate:
    lm, vocab = lm_dims(config)
    vision, merge = vision_dims(config)
    parts = {}
    for name, fig in report.components.items():
        state = applied.components.get(name)
        lora = state.lora_params if state else 0
        parts[name] = ComponentMemory(
            params=fig.params,
            linear=fig.linear,
            quantized=name in loading.quantized,
            full_trainable=(state.trainable - lora) if state else 0,
            lora_trainable=lora,
        )
    memory = estimate(
        parts,
        lm=lm,
        vision=vision,
        vocab=vocab,
        batch=settings.batch_size,
        seq_len=settings.seq_len,
        vision_tokens=settings.image_tokens * merge * packed_images(settings),
        chunked=settings.chunked_loss,
        dequantized=dequantized,
        objective=settings.objective,
    )
    objective = settings.objective
    if not objective.generates or not applied.trainable:  # nothing trains: weights only
        return memory
    memory.kv_cache, memory.generation = generation_bytes(
        kv_dims(config),
        lm,
        vision,
        sequences=objective.sequences(settings.batch_size),
        seq_len=settings.seq_len,
        completion=objective.completion or 0,
        vision_tokens=settings.image_tokens * merge,
        vocab=vocab,
        dequantized=dequantized,
    )
    return memory


def phases_json(memory: Estimate) -> dict[str, Any]:
    """grpo's two phases, each as the step's figure were it the peak (state included)."""
    return {
        "generation": {"kv_cache": memory.kv_cache, "bytes": memory.state + memory.generation},
        "training": {
            "bytes": memory.state + memory.training(True),
            "bytes_no_ckpt": memory.state + memory.training(False),
        },
        "peak": memory.peak_phase(True),
        "peak_no_ckpt": memory.peak_phase(False),
    }


def largest_linear(tree: Node, quantized: tuple[str, ...]) -> int:
    """Elements of the largest Linear weight loaded in 4-bit (0 when none is): bitsandbytes
    dequantizes it whole for a matmul over many tokens."""
    return max(
        (
            p.numel
            for node in tree.walk()
            for p in node.params
            if p.kind == "linear" and not p.tied_to and param_component(node, p.name) in quantized
        ),
        default=0,
    )


def _param_bytes(tree: Node, quantized: tuple[str, ...]) -> tuple[int, int]:
    """(4-bit Linear weights, 16-bit parameters) under a module, counted once."""
    four = half = 0
    for node in tree.walk():
        for p in node.params:
            if p.tied_to:
                continue
            if p.kind == "linear" and param_component(node, p.name) in quantized:
                four += p.numel
            else:
                half += p.numel
    return four, half


def largest_unit(tree: Node, quantized: tuple[str, ...]) -> tuple[str, int]:
    """(name, bytes) of the largest piece FSDP/ZeRO-3 gathers whole: one block of a ModuleList
    (a transformer layer, a vision block), or everything outside the blocks (embeddings, head,
    norms), as loaded (4-bit where quantized)."""

    def size(counts: tuple[int, int]) -> int:
        return int(counts[0] * NF4_BITS / 8) + HALF * counts[1]

    blocks: list[tuple[int, str]] = []
    in_blocks = [0, 0]
    stack = [tree]
    while stack:
        node = stack.pop()
        if node.cls in _BLOCK_LISTS:
            for child in node.children:
                counts = _param_bytes(child, quantized)
                in_blocks = [in_blocks[0] + counts[0], in_blocks[1] + counts[1]]
                blocks.append((size(counts), child.path))
            continue
        stack.extend(node.children)
    everything = _param_bytes(tree, quantized)
    rest = size((everything[0] - in_blocks[0], everything[1] - in_blocks[1]))
    blocks.append((rest, "everything outside the blocks"))
    best = max(blocks, key=lambda b: b[0])  # the first of equals: layer 0, not layer 93
    return best[1], best[0]


def fused_experts(tree: Node) -> dict[str, int]:
    """Per component, parameters in fused MoE expert tensors (3-D `experts` parameters, not
    nn.Linear): bitsandbytes does not quantize them and LoRA's all-linear does not reach them."""
    found: dict[str, int] = {}
    for node in tree.walk():
        for p in node.params:
            if not p.tied_to and p.kind != "linear" and len(p.shape) >= 3 and _EXPERTS.search(p.name):
                comp = param_component(node, p.name)
                found[comp] = found.get(comp, 0) + p.numel
    return found


def moe_notes(tree: Node, report: Breakdown, applied: Applied, loading: Loading) -> list[str]:
    notes = []
    for comp, experts in fused_experts(tree).items():
        fig = report.components[comp]
        share = f"{experts:,} of its {fig.params:,} parameters ({100 * experts / fig.params:.1f}%)"
        if comp in loading.quantized:
            saved = fig.bytes_bf16() - fig.bytes_4bit()
            notes.append(
                f"{comp}: {share} are fused MoE expert tensors (3-D, not nn.Linear); bitsandbytes "
                f"quantizes only nn.Linear, so they stay 16-bit ({gib(HALF * experts)}) and 4-bit "
                f"saves only {gib(saved)} on {comp}"
            )
        state = applied.components.get(comp)
        targets = applied.lora_targets.get(comp, [])
        if state is not None and state.mode == "lora":
            attention = sum(1 for t in targets if _ATTENTION.search(t))
            notes.append(
                f"{comp}: LoRA reaches {len(targets):,} nn.Linear module(s), {attention:,} of them "
                f"attention projections; the {experts:,} parameters in fused expert tensors get no "
                "LoRA and stay frozen"
            )
    return notes
