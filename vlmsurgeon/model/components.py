"""Which component each module belongs to: vision, merger, lm, head (or audio, generator, …).

Knowledge lives in the tables below. A module takes the component of the first rule that
claims it, else its parent's. Structural roots from transformers' own accessors
(`get_encoder(modality="image")`, `get_decoder()`, `get_output_embeddings()`) are found by
`structural_roots` and passed in; header-mode trees rely on the name tables alone."""

from __future__ import annotations

import re
from typing import Any

from .tree import Node

COMPONENTS = ("vision", "merger", "lm", "head")
EXTRA_COMPONENTS = ("audio", "protein", "action", "generator")
ALL_COMPONENTS = COMPONENTS + EXTRA_COMPONENTS

# Attribute names, matched exactly against a module's own name.
# "merger" names apply anywhere (a merger can sit inside the vision module, e.g. Qwen's
# `visual.merger`); encoder, generator and head names apply outside other encoders; lm names
# apply only to modules nothing above has claimed (a vision tower also has `layers` and `norm`).
# A merger is whatever maps an encoder's features into the LM width, audio included
# (`embed_audio` like `embed_vision`). `generator` is what produces non-text output from the
# LM's states (speech talkers, codec-to-waveform decoders): neither the LM nor an encoder.
NAME_RULES: dict[str, tuple[str, ...]] = {
    "vision": (
        "vision_tower",
        "visual",
        "vision_model",
        "vision_encoder",
        "image_tower",
        "video_tower",
        "image_encoder",
        "img_processor",
        "vision_embed_tokens",
        "high_res_vision_model",
        "vqmodel",
        "vpm",
        "vit",
        "vision_backbone",
    ),
    "merger": (
        "multi_modal_projector",
        "multimodal_projector",
        "mm_projector",
        "projector",
        "merger",
        "deepstack_merger_list",
        "deepstack_mergers",
        "qformer",
        "language_projection",
        "connector",
        "aligner",
        "img_projection",
        "vision_projection",
        "vision_adapter",
        "vision_resampler",
        "resampler_model",
        "image_to_text_projection",
        "visual_projection",
        "high_res_vision_neck",
        "high_res_vision_proj",
        "gated_cross_attn_layers",
        "generation_aligner",
        "generation_embeddings",
        "perception_emb_norm",
        "visual_embeddings_table",
        "mlp1",
        "resampler",
        "vision_proj",
        "embed_vision",
        "merger_list",  # Qwen3-Omni's DeepStack mergers (Qwen3-VL's `deepstack_merger_list`)
        "patch_merger",  # HunYuan-VL: inside the vision tower, projects into the LM width
        "embed_audio",
        "audio_projector",
        "layerwise_projectors",
        "spatial_projectors",  # Granite 4 Vision's window Q-Formers
    ),
    "audio": ("audio_tower", "audio_model", "audio_encoder"),
    "generator": ("talker", "token2wav", "code2wav"),
    "protein": ("protein_encoder",),
    "head": ("lm_head", "generation_head"),
    "lm": (
        "language_model",
        "text_model",
        "text_decoder",
        "llm",
        "embed_tokens",
        "layers",
        "norm",
        "final_layernorm",
        "rotary_emb",
        "wte",
        "ln_f",
        "h",
        "embeddings",
        "norm_f",
        "shared",
    ),
}

# Generic names that mean "projection into the LM width" only as a direct child of a known
# encoder, matched against the last two path segments: an audio tower's output head (its
# `proj`, or the `proj1`-act-`proj2` MLP, the `adapter`, the norm after the projection) emits
# LM-width features, so it is the audio merger; `proj` deeper inside (attention) is not.
CHILD_RULES: dict[str, str] = {
    "audio_tower.proj": "merger",  # Qwen2.5-Omni, Muse Spark
    "audio_tower.proj1": "merger",  # Qwen3-Omni: d_model -> d_model, then proj2 -> LM width
    "audio_tower.proj2": "merger",
    "audio_tower.post_proj_norm": "merger",  # Muse Spark: RMSNorm in the LM width after `proj`
    "audio_tower.adapter": "merger",  # dots3_note: fc1/fc2 into the LM width
}

# Class-name patterns, for modules whose attribute name is generic (`encoder`, `cls`, `layers.3`).
CLASS_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("merger", re.compile(r"CrossAttentionDecoderLayer$")),  # Mllama's fusion layers
    ("head", re.compile(r"(OnlyMLMHead|LMHead|LMPredictionHead)$")),
    (
        "vision",
        re.compile(
            r"(Vision|ViT|Vit|Swin|DeiT|Deit|Beit|BEiT|ConvNext|Siglip|CLIPVision)\w*"
            r"(Model|Transformer|Encoder|Tower)$"
        ),
    ),
)

# Parameters that sit directly on an unclaimed container (the top-level model).
PARAM_RULES: dict[str, str] = {
    "query_tokens": "merger",  # BLIP-2 / InstructBLIP Q-Former queries
    "image_newline": "merger",  # LLaVA-NeXT / OneVision row separator in LM space
    "high_res_vision_alpha": "merger",
    "view_seperator": "merger",
    "view_separator": "merger",
}

# Per-family exceptions, by exact module path, for models whose names say nothing.
FAMILY_RULES: dict[str, dict[str, str]] = {
    "udop": {
        "shared": "lm",
        "encoder": "lm",
        "decoder": "lm",
        "patch_embed": "vision",
        "encoder.embed_patches": "vision",
        "decoder.embed_patches": "vision",
    },
    "pi0": {"model.dit": "action", "embed_action_time": "action", "action_out_proj": "action"},
}

_VISIONISH = re.compile(r"vision|visual|image|vit|siglip|clip|vqmodel|radio", re.I)
_ENCODERS = ("vision", "audio", "protein")
_OUTSIDE_ENCODERS = ("vision", "audio", "protein", "generator", "head")


def _module_path(model: Any, module: Any) -> str | None:
    if module is None or module is model:
        return None
    for path, candidate in model.named_modules():
        if candidate is module:
            return path
    return None


def structural_roots(model: Any) -> dict[str, str]:
    """Roots found through transformers' own accessors: {path: component}."""
    roots: dict[str, str] = {}
    probes = (
        ("vision", lambda: model.get_encoder(modality="image")),
        ("lm", model.get_decoder),
        ("head", model.get_output_embeddings),
    )
    for component, probe in probes:
        try:
            module = probe()
        except Exception:  # accessors differ across families; the name tables cover the rest
            continue
        path = _module_path(model, module)
        if path is None:
            continue
        if component == "vision" and not _VISIONISH.search(f"{path} {type(module).__name__}"):
            continue  # e.g. T5Gemma2's encoder holds the text model too
        roots.setdefault(path, component)
    return roots


_CONTAINER_CHILDREN = frozenset(NAME_RULES["vision"] + ("language_model", "text_model", "llm"))


def _is_container(node: Node, roots: dict[str, str]) -> bool:
    """A module holding whole components (e.g. `Cohere2VisionModel`, the VLM's inner model) is
    not itself a vision tower, whatever its class name says."""
    prefix = node.path + "."
    return any(c.name in _CONTAINER_CHILDREN for c in node.children) or any(r.startswith(prefix) for r in roots)


def _rule_for(node: Node, parent: str | None, family: dict[str, str], roots: dict[str, str]) -> str | None:
    if node.path in family:
        return family[node.path]
    structural = roots.get(node.path)
    if (
        structural == "head"
        or (structural == "vision" and parent in (None, "lm"))
        or (structural == "lm" and parent is None)
    ):
        return structural
    name = node.name
    if name in NAME_RULES["merger"]:
        return "merger"
    child = CHILD_RULES.get(".".join(node.path.split(".")[-2:]))
    if child:
        return child
    if parent in (None, "lm"):
        for component in _OUTSIDE_ENCODERS:
            if name in NAME_RULES[component]:
                return component
        if not _is_container(node, roots):
            for component, pattern in CLASS_RULES:
                if pattern.search(node.cls) and (component != "merger" or parent == "lm"):
                    return component
    elif parent in _ENCODERS and CLASS_RULES[0][1].search(node.cls):
        return "merger"
    if parent is None and name in NAME_RULES["lm"]:
        return "lm"
    return None


def classify(root: Node, model_type: str | None, roots: dict[str, str] | None = None) -> Node:
    """Set `component` on every node, top-down."""
    family = FAMILY_RULES.get(model_type or "", {})
    roots = roots or {}
    stack: list[tuple[Node, str | None]] = [(c, None) for c in root.children]
    root.component = None
    while stack:
        node, parent = stack.pop()
        node.component = _rule_for(node, parent, family, roots) or parent
        stack.extend((c, node.component) for c in node.children)
    return root


def param_component(node: Node, param_name: str) -> str:
    """The component a parameter is counted in; `other` when nothing claimed it."""
    if node.component is None:
        return PARAM_RULES.get(param_name.rsplit(".", 1)[-1], "other")
    return node.component
