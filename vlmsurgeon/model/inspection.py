"""`inspect`: load a model reference without weights and break its parameters down by component."""

from __future__ import annotations

from typing import Any

from vlmsurgeon.errors import BadInput

from .checkpoint import check_source, header_mode_check
from .components import classify, structural_roots
from .report import Breakdown, breakdown
from .sources import (
    ModelSource,
    build_on_meta,
    config_object,
    header_tensors,
    is_native,
    load_source,
    remote_code_hint,
    resolve,
)
from .tree import from_module, from_tensors

# Config keys that declare layers a released checkpoint stores but transformers may not build
# (its loader drops their tensors): key -> (what they are, where the checkpoint keeps them).
DECLARED_LAYERS: dict[str, tuple[str, str]] = {
    "mtp_num_hidden_layers": ("multi-token-prediction", "mtp.*"),  # Qwen3.5, Qwen3-Next
    "num_mtp_layers": ("multi-token-prediction", "mtp.*"),
    # DeepSeek-V3, GLM-4.5: stored as the decoder's next layers (`model.layers.{num_hidden_layers}`)
    "num_nextn_predict_layers": ("multi-token-prediction (next-n)", "layers.{layers}+"),
}


def inspect_model(reference: str, *, trust_remote_code: bool = False, revision: str | None = None) -> Breakdown:
    """Build the model on meta from its config (native or trusted remote code), else read the
    safetensors headers. No tensor data is read and no model-repo code runs untrusted."""
    source = load_source(resolve(reference, revision))
    model_type = source.model_type
    if model_type and (is_native(model_type) or (trust_remote_code and source.config.get("auto_map"))):
        return _from_config(source, trust_remote_code)
    if not source.weight_files and source.ref.kind != "hub":
        if not model_type:
            raise BadInput(
                f"model '{reference}': config has no model_type and there are no weights",
                "point at a model's config.json or a directory with *.safetensors",
            )
        if source.config.get("auto_map"):
            raise BadInput(
                f"model '{reference}': model_type '{model_type}' needs code from the "
                "model repo and there are no *.safetensors to read headers from",
                remote_code_hint("point at the directory with the weights"),
            )
        raise BadInput(
            f"model '{reference}': unknown model_type '{model_type}' and no weights",
            "upgrade transformers, or point at a directory with *.safetensors",
        )
    return from_headers(source)


def meta_model(
    reference: str, *, trust_remote_code: bool = False, revision: str | None = None
) -> tuple[ModelSource, Any]:
    """The model built on meta from its config, for commands that need modules (plan)."""
    source = load_source(resolve(reference, revision))
    model_type = source.model_type
    if not model_type:
        raise BadInput(f"model '{reference}': config has no model_type", "point at a model's config.json")
    if not is_native(model_type) and not (trust_remote_code and source.config.get("auto_map")):
        raise unbuildable(reference, model_type, bool(source.config.get("auto_map")))
    config = config_object(source, trust_remote_code)
    return source, build_on_meta(source, config, trust_remote_code)


def unbuildable(reference: str, model_type: str, auto_map: bool) -> BadInput:
    """Why transformers cannot build a model type it does not know: repo code only helps a
    config.json whose auto_map names it; without one, no setting here can."""
    if auto_map:
        return BadInput(
            f"model '{reference}': model_type '{model_type}' needs code from the model "
            "repo to build its modules (auto_map in its config.json)",
            remote_code_hint(),
        )
    import transformers

    return BadInput(
        f"model '{reference}': model_type '{model_type}' is unknown to transformers "
        f"{transformers.__version__}, and its config.json has no auto_map for repo code",
        "upgrade transformers if the model type is newer, or check model_type in its config.json",
    )


def _from_config(source: ModelSource, trust_remote_code: bool) -> Breakdown:
    config = config_object(source, trust_remote_code)
    model = build_on_meta(source, config, trust_remote_code)
    tree = from_module(model)
    classify(tree, source.model_type, structural_roots(model))
    kind = "config" if is_native(source.model_type) else "remote-code"
    result = breakdown(tree, model=source.ref.text, model_type=source.model_type, source=kind)
    result.notes.extend(unbuilt_layers(source.config, [path for path, _ in model.named_modules()]))
    result.checkpoint = check_source(source, model)
    return result


def _sections(config: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """The config and its sub-configs (`text_config`, …), each with the prefix that names it."""
    found = [(prefix, config)]
    for key, value in config.items():
        if key.endswith("_config") and isinstance(value, dict):
            found += _sections(value, f"{prefix}{key}.")
    return found


def unbuilt_layers(config: dict[str, Any], module_paths: list[str]) -> list[str]:
    """One note per config key declaring layers (DECLARED_LAYERS) that the built model lacks:
    their tensors are in the released checkpoint but in none of these figures."""
    notes = []
    for prefix, section in _sections(config):
        for key, (what, where) in DECLARED_LAYERS.items():
            count = section.get(key)
            if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
                continue
            layers = section.get("num_hidden_layers")
            if _built(module_paths, layers if where.startswith("layers.") else None):
                continue
            stored = where.format(layers=layers if layers is not None else "N")
            layer = "layer" if count == 1 else "layers"
            notes.append(
                f"the config declares {count} {what} {layer} ({prefix}{key}: {count}) that "
                f"transformers does not build: the checkpoint's {stored} tensors are not "
                "counted here"
            )
    return notes


def _built(module_paths: list[str], layers: int | None) -> bool:
    if layers is not None:  # next-n layers sit after the decoder's own: `layers.{num_hidden_layers}`
        return any(p.endswith(f"layers.{layers}") for p in module_paths)
    return any("mtp" in p.split(".") for p in module_paths)


def from_headers(source: ModelSource) -> Breakdown:
    """Tree from tensor names and shapes; the config only says whether the head is tied."""
    bits = int((source.config.get("quantization_config") or {}).get("bits", 4))
    tree, prequantized = from_tensors(header_tensors(source), bits=bits)
    if not tree.children:
        raise BadInput(
            f"model '{source.ref.text}': the safetensors files hold no tensors",
            "point at the directory with the model weights",
        )
    classify(tree, source.model_type)
    notes = (
        ["pre-quantized checkpoint: packed tensors counted as the parameters they represent"] if prequantized else []
    )
    result = breakdown(
        tree,
        model=source.ref.text,
        model_type=source.model_type or "unknown",
        source="safetensors-headers",
        prequantized=prequantized,
        notes=notes,
    )
    result.checkpoint = header_mode_check()
    result.buffers, result.buffer_components = None, {}  # stored tensors are all counted: no telling
    head = result.components["head"]
    if head.params == 0 and _tied(source.config):
        embed = _input_embedding_name(result)
        head.tied_to = embed
        if embed:
            notes.append(f"head tied to {embed} (not stored separately)")
    return result


def _tied(config: dict) -> bool:
    text = config.get("text_config") or {}
    return bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))


def _input_embedding_name(result: Breakdown) -> str | None:
    for node in result.tree.walk():
        if node.component == "lm":
            for param in node.params:
                if param.kind == "embedding":
                    return param.name
    return None
