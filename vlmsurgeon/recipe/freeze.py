"""Apply a preset to a loaded model: requires_grad per component, peft LoRA injected only where
the preset asks (one adapter, per-component ranks), full-trained components as peft
`modules_to_save`. Used by `plan` (on meta) and `finetune` (on real weights)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from vlmsurgeon.errors import BadInput
from vlmsurgeon.model.components import classify, param_component, structural_roots
from vlmsurgeon.model.tree import Node, from_module

from .preset import Mode, Preset

ADAPTER = "default"
_ATTENTION = re.compile(r"(^|\.)[\w]*(attn|attention)[\w]*(\.|$)")
_MLP = re.compile(r"(^|\.)[\w]*(mlp|ffn|feed_forward|experts|fc)[\w]*(\.|$)")
# peft cannot wrap these in modules_to_save: their children are saved instead.
_CONTAINERS = ("ModuleList", "ModuleDict", "ParameterList", "ParameterDict")
_PEFT_SEGMENTS = re.compile(r"\.(modules_to_save\.[^.]+|original_module)(?=\.|$)")


@dataclass
class ComponentState:
    """What a component looks like after the preset is applied."""

    mode: str
    describe: str
    total: int = 0
    trainable: int = 0
    lora_modules: int = 0
    lora_params: int = 0
    full_roots: list[str] = field(default_factory=list)


@dataclass
class Applied:
    model: Any
    preset: Preset
    tree: Node
    components: dict[str, ComponentState]
    lora_targets: dict[str, list[str]]
    modules_to_save: list[str]
    loose_trainable: list[str]
    notes: list[str] = field(default_factory=list)
    component_of: dict[str, str] = field(default_factory=dict)

    @property
    def trainable(self) -> int:
        return sum(c.trainable for c in self.components.values())

    def component(self, name: str) -> str:
        """The component of a (possibly peft-prefixed) parameter name."""
        return _owner(base_name(name), self.component_of)


def classified_tree(model: Any, model_type: str | None) -> Node:
    tree = from_module(model)
    return classify(tree, model_type, structural_roots(model))


def _subtree_components(tree: Node) -> dict[str, set[str]]:
    """For every module path, the components of all counted parameters beneath it."""
    result: dict[str, set[str]] = {}
    for node in reversed(list(tree.walk())):
        comps = {param_component(node, p.name) for p in node.params if not p.tied_to}
        for child in node.children:
            comps |= result[child.path]
        result[node.path] = comps
    return result


def _matches(path: str, targets: str | list[str]) -> bool:
    if targets == "all-linear":
        return True
    if targets == "attention":
        return bool(_ATTENTION.search(path))
    if targets == "mlp":
        return bool(_MLP.search(path)) and not _ATTENTION.search(path)
    return path.rsplit(".", 1)[-1] in targets


def lora_targets(model: Any, tree: Node, preset: Preset) -> dict[str, list[str]]:
    """Linear layers (never convolutions, never the output layer) of each LoRA component."""
    import torch.nn as nn

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    modules = dict(model.named_modules())
    found: dict[str, list[str]] = {c: [] for c, s in preset.components.items() if s.mode == Mode.lora}
    for node in tree.walk():
        comp = node.component
        if comp not in found or not node.path:
            continue
        module = modules.get(node.path)
        if isinstance(module, nn.Linear) and module is not head and _matches(node.path, preset.spec(comp).targets):
            found[comp].append(node.path)
    return found


def _full_roots(tree: Node, below: dict[str, set[str]], component: str) -> tuple[list[str], list[str]]:
    """Largest modules that hold only `component`'s parameters, plus loose parameters that sit
    on mixed modules (peft can only save whole modules)."""
    roots, loose = [], []
    stack = [tree]
    while stack:
        node = stack.pop()
        if component not in below[node.path]:
            continue
        if node.path and below[node.path] == {component} and node.cls not in _CONTAINERS:
            roots.append(node.path)
            continue
        loose.extend(p.name for p in node.params if not p.tied_to and param_component(node, p.name) == component)
        stack.extend(node.children)
    return sorted(roots), loose


def unquantized_roots(tree: Node, quantize: list[str]) -> list[str]:
    """Largest modules holding no parameter of a quantized component: what bitsandbytes must
    skip so that only the preset's 4-bit components are converted."""
    below = _subtree_components(tree)
    roots = {r for comp in below.get("", set()) if comp not in quantize for r in _full_roots(tree, below, comp)[0]}
    # A module whose weight is shared with another (a head tied to the input embeddings) keeps
    # that tensor's layout: bitsandbytes would pack the shared weight and break the embedding.
    roots |= {n.path for n in tree.walk() if n.path and any(p.tied_to for p in n.params)}
    return sorted(roots)


def present_components(tree: Node) -> list[str]:
    below = _subtree_components(tree)
    return sorted(below.get("", set()) - {"other"})


@dataclass
class Selection:
    """What a preset selects in one model, before anything is changed."""

    tree: Node
    targets: dict[str, list[str]]
    full_roots: dict[str, list[str]]
    loose: list[str]
    notes: list[str]

    @property
    def modules_to_save(self) -> list[str]:
        return sorted(p for roots in self.full_roots.values() for p in roots)


def select(model: Any, preset: Preset, model_type: str | None, tree: Node | None = None) -> Selection:
    """LoRA targets and full-trained modules per component (shared by apply and count)."""
    tree = tree or classified_tree(model, model_type)
    below = _subtree_components(tree)
    present = below.get("", set())
    targets = lora_targets(model, tree, preset)
    for comp, paths in targets.items():
        if comp in present and not paths:
            raise BadInput(
                f"preset '{preset.name}': LoRA targets {preset.spec(comp).targets!r} match no Linear layer in {comp}",
                "use targets: all-linear, or list module names",
            )
    full_roots: dict[str, list[str]] = {}
    loose: list[str] = []
    for comp, spec in preset.components.items():
        if spec.mode == Mode.full and comp in present:
            full_roots[comp], comp_loose = _full_roots(tree, below, comp)
            loose.extend(comp_loose)
    notes = [f"{c} is in the preset but not in this model" for c in preset.trained() if c not in present]
    return Selection(tree, targets, full_roots, loose, notes)


def apply_preset(model: Any, preset: Preset, model_type: str | None, tree: Node | None = None) -> Applied:
    """Freeze, inject LoRA and mark full components; returns the (peft-wrapped) model.
    `tree` may be passed when the caller already classified this model."""
    sel = select(model, preset, model_type, tree)
    for param in model.parameters():
        param.requires_grad_(False)
    if any(sel.targets.values()):
        model = _inject_lora(model, preset, sel.targets, sel.modules_to_save)
    else:
        for path in sel.modules_to_save:
            model.get_submodule(path).requires_grad_(True)
    params = dict(model.named_parameters())
    for name in sel.loose:
        params[_peft_name(model, name)].requires_grad_(True)
    applied = Applied(
        model, preset, sel.tree, {}, sel.targets, sel.modules_to_save, sel.loose, sel.notes, _component_map(sel.tree)
    )
    applied.components = _count(model, sel.tree, applied.component_of, preset, sel.targets, sel.full_roots)
    return applied


def count_preset(model: Any, preset: Preset, model_type: str | None, tree: Node | None = None) -> Applied:
    """The same figures as `apply_preset`, computed without changing the model or importing
    peft: a LoRA pair on a Linear(in, out) adds r·(in + out); full components train whole."""
    sel = select(model, preset, model_type, tree)
    states = _totals(sel.tree, preset)
    modules = dict(model.named_modules())
    for comp, paths in sel.targets.items():
        rank = preset.spec(comp).rank
        lora = sum(rank * (modules[p].in_features + modules[p].out_features) for p in paths)
        if comp in states:
            states[comp].lora_modules, states[comp].lora_params = len(paths), lora
            states[comp].trainable += lora
    for comp, roots in sel.full_roots.items():
        states[comp].full_roots = roots
        states[comp].trainable += states[comp].total
    return Applied(model, preset, sel.tree, states, sel.targets, sel.modules_to_save, sel.loose, sel.notes)


def _inject_lora(model: Any, preset: Preset, targets: dict[str, list[str]], modules_to_save: list[str]) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = [c for c in targets if targets[c]]
    main = max(lora, key=lambda c: len(targets[c]))
    spec = preset.spec(main)
    rank_pattern, alpha_pattern = {}, {}
    for comp in lora:
        other = preset.spec(comp)
        if (other.rank, other.lora_alpha) != (spec.rank, spec.lora_alpha):
            rank_pattern[_alternation(targets[comp])] = other.rank
            alpha_pattern[_alternation(targets[comp])] = other.lora_alpha
    # One regex instead of a list: peft matches a list by suffix against every module
    # (modules × targets string tests); a fullmatch of one alternation is far cheaper.
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.dropout,
        bias="none",
        target_modules=_alternation([p for c in lora for p in targets[c]]),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        modules_to_save=modules_to_save or None,
    )
    on_meta = next(model.parameters()).device.type == "meta"
    # low_cpu_mem_usage creates the adapters on meta: a plan never allocates or initialises them
    with exact_targets():
        return get_peft_model(model, config, adapter_name=ADAPTER, low_cpu_mem_usage=on_meta)


@contextmanager
def exact_targets() -> Iterator[None]:
    """Keep peft from rewriting our targets. For MoE families in transformers' v4→v5 weight
    conversion table (glm4v_moe, qwen3_omni_moe, …) peft remaps adapters made on v4 layouts: a
    regex becomes bare leaf names, and every `gate_proj`/`up_proj`/`down_proj` (dense MLPs and
    shared experts included) becomes LoRA on the fused expert tensors. Our targets are exact
    module paths of this v5 model, so the remap is off while an adapter is injected or loaded."""
    try:
        from peft.utils import transformers_weight_conversion as conversion
    except ImportError:  # a peft without the remap
        yield
        return
    original = conversion.convert_peft_config_for_transformers
    conversion.convert_peft_config_for_transformers = lambda *args, **kwargs: None
    try:
        yield
    finally:
        conversion.convert_peft_config_for_transformers = original


def _alternation(paths: list[str]) -> str:
    return "(?:" + "|".join(re.escape(p) for p in sorted(paths)) + ")"


def base_name(name: str) -> str:
    """A peft parameter name mapped back to the base model's module/parameter name."""
    name = name.removeprefix("base_model.model.")
    name = _PEFT_SEGMENTS.sub("", name)
    return re.sub(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\.[^.]+", "", name)


def _peft_name(model: Any, name: str) -> str:
    return f"base_model.model.{name}" if hasattr(model, "peft_config") else name


def _owner(name: str, component_of: dict[str, str]) -> str:
    path = name
    while path:
        if path in component_of:
            return component_of[path]
        path = path.rsplit(".", 1)[0] if "." in path else ""
    return component_of.get("", "other")


def _totals(tree: Node, preset: Preset) -> dict[str, ComponentState]:
    states: dict[str, ComponentState] = {}
    for node in tree.walk():
        for p in node.params:
            comp = param_component(node, p.name)
            if comp not in states:
                spec = preset.spec(comp)
                states[comp] = ComponentState(spec.mode.value, spec.describe())
            states[comp].total += p.counted
    return states


def _component_map(tree: Node) -> dict[str, str]:
    component_of: dict[str, str] = {}
    for node in tree.walk():
        for p in node.params:
            component_of[p.name] = param_component(node, p.name)
        if node.component:
            component_of[node.path] = node.component
    return component_of


def _count(
    model: Any,
    tree: Node,
    component_of: dict[str, str],
    preset: Preset,
    targets: dict[str, list[str]],
    full_roots: dict[str, list[str]],
) -> dict[str, ComponentState]:
    states = _totals(tree, preset)
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen or not param.requires_grad:
            continue
        seen.add(id(param))
        comp = _owner(base_name(name), component_of)
        numel = param.numel()
        states[comp].trainable += numel
        if ".lora_" in name:
            states[comp].lora_params += numel
    for comp, paths in targets.items():
        if comp in states:
            states[comp].lora_modules = len(paths)
    for comp, roots in full_roots.items():
        states[comp].full_roots = roots
    return states


# --- 4-bit layers as training holds them: which ones, with which config, computing how -----------


def training_numerics(model: Any) -> Any:
    """Turn off bitsandbytes' CPU inference repacking. In eval mode without gradients a Linear4bit
    repacks its weight in place for a bf16 kernel (AVX512-BF16 CPUs): other numbers than training,
    a crash for widths not divisible by 32, and, once repacked, the next training step fails ("a
    view of a leaf Variable ... in-place") because the repacked layout is kept."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def as_trained_quantization(trained: Any, dtype: Any = None, meta: Any = None) -> Any:
    """The 4-bit NF4 config a QLoRA run's base trained under (its preset's quantized components,
    the rest skipped), or None for a run that was not quantized."""
    if not trained.quantized_components:
        return None
    import re

    import torch
    from transformers import BitsAndBytesConfig

    from vlmsurgeon.model.inspection import meta_model

    if meta is None:
        _, meta = meta_model(str(trained.base))
    keep = unquantized_roots(classified_tree(meta, meta.config.model_type), trained.quantized_components)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype or torch.float32,
        llm_int8_skip_modules=[re.escape(k) for k in keep] or None,
    )


def four_bit_modules(trained: Any, meta: Any) -> set[str]:
    """The modules a QLoRA run held in 4-bit, decided by transformers' own rule (its quantizer's
    modules not to convert: our skips, the model's fp32 modules, and, without skips, the output
    embeddings) over the meta model: nn.Linear layers only."""
    config = as_trained_quantization(trained, meta=meta)
    if config is None:
        return set()
    import torch
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = HfQuantizer.get_modules_to_not_convert(
        meta, config.llm_int8_skip_modules, getattr(meta, "_keep_in_fp32_modules", None)
    )
    return {
        name
        for name, module in meta.named_modules()
        if type(module) is torch.nn.Linear and should_convert_module(name, skip)
    }
