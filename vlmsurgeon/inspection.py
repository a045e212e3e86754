"""`inspect`: load a model reference without weights and break its parameters down by component."""

from __future__ import annotations

from typing import Any

from .checkpoint import check_source, header_mode_check
from .components import classify, structural_roots
from .errors import BadInput
from .report import Breakdown, breakdown
from .sources import (
    ModelSource, build_on_meta, config_object, header_tensors, is_native, load_source, remote_code_hint,
    resolve,
)
from .tree import from_module, from_tensors


def inspect_model(reference: str, *, trust_remote_code: bool = False,
                  revision: str | None = None) -> Breakdown:
    """Build the model on meta from its config (native or trusted remote code), else read the
    safetensors headers. No tensor data is read and no model-repo code runs untrusted."""
    source = load_source(resolve(reference, revision))
    model_type = source.model_type
    if model_type and (is_native(model_type) or (trust_remote_code and source.config.get("auto_map"))):
        return _from_config(source, trust_remote_code)
    if not source.weight_files and source.ref.kind != "hub":
        if not model_type:
            raise BadInput(f"model '{reference}': config has no model_type and there are no weights",
                           "point at a model's config.json or a directory with *.safetensors")
        if source.config.get("auto_map"):
            raise BadInput(f"model '{reference}': model_type '{model_type}' needs code from the "
                           "model repo and there are no *.safetensors to read headers from",
                           remote_code_hint("point at the directory with the weights"))
        raise BadInput(f"model '{reference}': unknown model_type '{model_type}' and no weights",
                       "upgrade transformers, or point at a directory with *.safetensors")
    return from_headers(source)


def meta_model(reference: str, *, trust_remote_code: bool = False,
               revision: str | None = None) -> tuple[ModelSource, Any]:
    """The model built on meta from its config, for commands that need modules (plan)."""
    source = load_source(resolve(reference, revision))
    model_type = source.model_type
    if not model_type:
        raise BadInput(f"model '{reference}': config has no model_type",
                       "point at a model's config.json")
    if not is_native(model_type) and not (trust_remote_code and source.config.get("auto_map")):
        raise BadInput(f"model '{reference}': model_type '{model_type}' needs code from the model "
                       "repo to build its modules", remote_code_hint())
    config = config_object(source, trust_remote_code)
    return source, build_on_meta(source, config, trust_remote_code)


def _from_config(source: ModelSource, trust_remote_code: bool) -> Breakdown:
    config = config_object(source, trust_remote_code)
    model = build_on_meta(source, config, trust_remote_code)
    tree = from_module(model)
    classify(tree, source.model_type, structural_roots(model))
    kind = "config" if is_native(source.model_type) else "remote-code"
    result = breakdown(tree, model=source.ref.text, model_type=source.model_type, source=kind)
    result.checkpoint = check_source(source, model)
    return result


def from_headers(source: ModelSource) -> Breakdown:
    """Tree from tensor names and shapes; the config only says whether the head is tied."""
    bits = int((source.config.get("quantization_config") or {}).get("bits", 4))
    tree, prequantized = from_tensors(header_tensors(source), bits=bits)
    if not tree.children:
        raise BadInput(f"model '{source.ref.text}': the safetensors files hold no tensors",
                       "point at the directory with the model weights")
    classify(tree, source.model_type)
    notes = ["pre-quantized checkpoint: packed tensors counted as the parameters they represent"
             ] if prequantized else []
    result = breakdown(tree, model=source.ref.text, model_type=source.model_type or "unknown",
                       source="safetensors-headers", prequantized=prequantized, notes=notes)
    result.checkpoint = header_mode_check()
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
