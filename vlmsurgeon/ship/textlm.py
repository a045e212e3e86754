"""A VLM's language model as a plain text model: the transformers causal-LM architecture that holds
it, its config, and every LM and head tensor's name on both sides, in memory and on disk. `extract`
writes through this map; `graft` reads through it inverted. The families whose text path is not that
plain LM are listed here, each as measured on its tiny model (tests/test_extract.py checks the lists)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmsurgeon.errors import BadInput
from vlmsurgeon.model.sources import read_header

# Text config model_type -> (causal-LM model_type, config changes), for text types that have no
# AutoModelForCausalLM entry of their own. Each gives the VLM's text-only logits exactly (tiny: Δ 0).
TEXT_ARCH: dict[str, tuple[str, dict[str, Any]]] = {
    # M-RoPE: a text-only prompt has equal positions on every axis, which is 1-D RoPE
    "qwen2_vl_text": ("qwen2", {}),
    "qwen2_5_vl_text": ("qwen2", {}),
    "qwen2_5_omni_text": ("qwen2", {}),
    "qwen3_vl_text": ("qwen3", {}),
    "qwen3_vl_moe_text": ("qwen3_moe", {"norm_topk_prob": True}),  # Qwen3-VL-MoE always renormalises top-k
    "qwen3_omni_moe_text": ("qwen3_moe", {}),
    "glm4v_text": ("glm4", {}),
    "glm4v_moe_text": ("glm4_moe", {}),
    "hunyuan_vl_text": ("hunyuan_v1_dense", {}),
    "granite4_vision_text": ("granite", {}),
    "emu3_text_model": ("llama", {}),
    "paddleocr_vl_text": ("ernie4_5", {}),  # written only with --force: see DIFFERS
}
# VLM model_type -> config changes its text model needs to compute what the VLM computes
FAMILY_CONFIG: dict[str, dict[str, Any]] = {
    # Cohere2ForCausalLM multiplies its logits by logit_scale; these VLMs' heads do not
    "aya_vision": {"logit_scale": 1.0},
    "cohere2_vision": {"logit_scale": 1.0},
}
# Families whose LM no plain text architecture holds: refused, --force or not.
NO_TEXT_MODEL: dict[str, str] = {
    "chameleon": "an early-fusion model: its LM is the whole model, with no text config of its own",
    "idefics": "gated cross-attention layers to the image sit between its LM's decoder layers",
    "kosmos-2": "transformers has no causal-LM class for its text model (kosmos_2_text_model)",
    "mllama": "cross-attention layers to the image sit between its LM's decoder layers",
    "mistral_large4": "its LM (DSA indexer, Mistral-4 experts) matches no causal-LM class of transformers",
    "ernie4_5_vl_moe": "its MoE layers hold text and vision experts side by side, which Ernie-4.5-MoE does not",
}
# Families whose text path is not the plain LM: refused unless --force (measured on the tiny model).
DIFFERS: dict[str, str] = {
    "paligemma": "its prompt is a bidirectional prefix (token type 0), which a causal LM reads causally",
    "paddleocr_vl": "its text rotary embedding is not laid out as ERNIE-4.5's",
}
# Extra inputs the VLM takes with a text-only prompt, as its processor marks one
PROBE_INPUTS: dict[str, dict[str, int]] = {"paligemma": {"token_type_ids": 0}}
_MROPE_KEYS = ("mrope_section", "mrope_interleaved")


@dataclass
class TextLM:
    """The plain text model a VLM's LM becomes; `names`: VLM parameter -> text-model parameter."""

    family: str
    text_type: str
    target: str  # the causal-LM model_type
    architecture: str  # its class name
    config: Any
    tied: bool
    names: dict[str, str]
    causal: Any  # the text model, built on meta
    differs: str | None = None
    root: str = "model"  # the text model's decoder, where converted keys are re-rooted
    embeddings: dict[str, str] = field(default_factory=dict)  # VLM names of the vocabulary-sized tensors
    left_out: list[str] = field(default_factory=list)  # LM tensors outside the decoder and head


def text_lm(model: Any) -> TextLM:
    """The text model for a VLM built on meta; BadInput where none holds its LM."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    family = model.config.model_type
    if family in NO_TEXT_MODEL:
        raise BadInput(f"{family}: its language model cannot be extracted: {NO_TEXT_MODEL[family]}")
    text = model.config.get_text_config()
    if text is model.config:
        raise BadInput(f"{family}: its config has no text_config, so it has no separate language model")
    target, changes = TEXT_ARCH.get(text.model_type, (text.model_type, {}))
    architecture = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(target)
    if not isinstance(architecture, str):
        raise BadInput(f"{family}: transformers has no causal-LM class for its text model ({text.model_type})")
    inputs, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is inputs.weight
    values = {k: v for k, v in text.to_dict().items() if k not in ("model_type", "architectures", "auto_map")}
    rope = values.get("rope_parameters")
    if isinstance(rope, dict):
        values["rope_parameters"] = {k: v for k, v in rope.items() if k not in _MROPE_KEYS}
    values.update({**changes, **FAMILY_CONFIG.get(family, {}), "tie_word_embeddings": tied})
    config = AutoConfig.for_model(target, **values)
    config.architectures = [architecture]
    with torch.device("meta"):
        causal = AutoModelForCausalLM.from_config(config)
    names, embeddings, left = _names(model, causal, tied)
    root = _path(causal, innermost_decoder(causal))
    return TextLM(
        family,
        text.model_type,
        target,
        architecture,
        config,
        tied,
        names,
        causal,
        DIFFERS.get(family),
        root,
        embeddings,
        left,
    )


def _path(model: Any, module: Any) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def innermost_decoder(model: Any) -> Any:
    """The innermost decoder: a VLM's may be a whole causal LM (BLIP-2's OPTForCausalLM)."""
    module = model.get_decoder()
    for _ in range(4):
        inner = module.get_decoder() if hasattr(module, "get_decoder") else module
        if inner is module:
            break
        module = inner
    return module


def _names(model: Any, causal: Any, tied: bool) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """VLM parameter -> text-model parameter for the decoder and (untied) head, checked both ways:
    every text-model tensor comes from the VLM with its shape, and every mapped VLM tensor is LM or
    head. LM tensors outside the decoder and head (Janus' image-generation head) are left out, named."""
    from vlmsurgeon.recipe.freeze import _component_map, _owner, classified_tree

    decoder, head = innermost_decoder(model), model.get_output_embeddings()
    a, b = _path(model, decoder), _path(causal, innermost_decoder(causal))
    names = {f"{a}.{k}": f"{b}.{k}" for k in decoder.state_dict()}
    head_a, head_b = _path(model, head), _path(causal, causal.get_output_embeddings())
    if not tied:
        names.update({f"{head_a}.{k}": f"{head_b}.{k}" for k in head.state_dict()})
    family = model.config.model_type
    wanted = dict(causal.state_dict())
    if tied:
        wanted = {k: v for k, v in wanted.items() if not k.startswith(f"{head_b}.")}
    have = dict(model.state_dict())
    for source, target in names.items():
        if target not in wanted or tuple(wanted[target].shape) != tuple(have[source].shape):
            raise BadInput(f"{family}: {source} has no place in {type(causal).__name__} ({target})")
    missing = sorted(set(wanted) - set(names.values()))
    if missing:
        raise BadInput(f"{family}: {type(causal).__name__} needs {missing[0]}, which the VLM's LM does not have")
    component_of = _component_map(classified_tree(model, family))
    outside = [n for n in names if _owner(n, component_of) not in ("lm", "head")]
    if outside:
        raise BadInput(f"{family}: its LM holds {outside[0]}, a {_owner(outside[0], component_of)} tensor")
    left = sorted(n for n, _ in model.named_parameters() if _owner(n, component_of) in ("lm", "head"))
    left = [n for n in left if n not in names and not (tied and n.startswith(f"{head_a}."))]
    embeddings = {f"{_path(model, model.get_input_embeddings())}.weight": "embeddings"}
    if not tied:
        embeddings[f"{head_a}.weight"] = "head"
    return names, embeddings, left


@dataclass(frozen=True)
class Renamed:
    memory: str  # the in-memory parameter name
    renamed: str  # the key after renamings only (before a converter)
    converter: Any  # the WeightConverter that reads it, or None for a plain rename


def renamer(model: Any) -> Callable[[str], Renamed]:
    """On-disk key -> how `from_pretrained` of `model`'s class reads it (keys go through in file order)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, apply_renamings, rename_source_key

    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    meta = dict(model.state_dict())

    def read(key: str) -> Renamed:
        memory, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
        converter = next((c for c in converters if pattern in c.source_patterns), None) if pattern else None
        return Renamed(memory, apply_renamings(key, renamings), converter)

    return read


def _transposes(converter: Any, shape: tuple[int, ...], wanted: tuple[int, ...]) -> tuple[tuple[int, int], ...] | None:
    """A one-tensor converter that only transposes (Qwen3-VL-MoE's stored experts): the swaps that
    give the in-memory layout; None for any other converter."""
    ops = list(getattr(converter, "operations", []))
    sources, targets = converter.source_patterns, converter.target_patterns
    if len(sources) != 1 or len(targets) != 1 or "*" in sources[0]:
        return None
    if not ops or any(type(op).__name__ != "Transpose" for op in ops):
        return None
    swaps = []
    for op in ops:
        if getattr(op, "check_dims", False) and shape == wanted:
            continue
        dims = list(shape)
        dims[op.dim0], dims[op.dim1] = dims[op.dim1], dims[op.dim0]
        shape = tuple(dims)
        swaps.append((op.dim0, op.dim1))
    return tuple(swaps)


@dataclass(frozen=True)
class Pair:
    """One LM tensor: where the VLM checkpoint stores it, and its name in the text checkpoint."""

    file: Path
    key: str  # on-disk key in the VLM checkpoint
    name: str  # on-disk key in the text checkpoint
    memory: str  # VLM parameter name
    text: str  # text-model parameter name
    shape: tuple[int, ...]  # as stored in the VLM checkpoint
    dtype: str
    converted: bool  # stored in a layout `from_pretrained` converts (per-expert, fused at load)
    swaps: tuple[tuple[int, int], ...] = ()  # transposes into the in-memory layout, applied on the way
    rerooted: bool = False  # written in the VLM's converted layout, which the text model converts too

    @property
    def out_shape(self) -> tuple[int, ...]:
        shape = list(self.shape)
        for a, b in self.swaps:
            shape[a], shape[b] = shape[b], shape[a]
        return tuple(shape)


def located(files: list[Path]) -> list[tuple[Path, str, tuple[int, ...], str]]:
    out = []
    for path in files:
        for key, entry in read_header(path).items():
            if key != "__metadata__":
                out.append((path, key, tuple(entry["shape"]), entry["dtype"]))
    return out


def disk_pairs(files: list[Path], model: Any, lm: TextLM) -> list[Pair]:
    """Every LM tensor on disk with its text-checkpoint key: the text model's parameter name for a
    plain rename (or a transpose, applied on the way); for another converted layout, the renamed key
    re-rooted so that the text model's own converter reads it. Each key is checked to load, in the
    text model, as the tensor it is."""
    vlm, text = renamer(model), renamer(lm.causal)
    wanted = {k: tuple(v.shape) for k, v in lm.causal.state_dict().items()}
    pairs, produced = [], set()
    for path, key, shape, dtype in located(files):
        read = vlm(key)
        target = lm.names.get(read.memory)
        if target is None:
            continue
        swaps = _transposes(read.converter, shape, wanted[target]) if read.converter is not None else ()
        if swaps is not None:
            pair = Pair(path, key, target, read.memory, target, shape, dtype, read.converter is not None, swaps)
            loaded = text(target)
            if (loaded.memory, loaded.converter) != (target, None) or pair.out_shape != wanted[target]:
                raise BadInput(f"{lm.family}: {key} {shape} does not load as {target} in {lm.architecture}")
        else:
            name = _rerooted(read.renamed, target, lm.root, text)
            pair = Pair(path, key, name, read.memory, target, shape, dtype, True, rerooted=True)
        pairs.append(pair)
        produced.add(target)
    missing = sorted(set(lm.names.values()) - produced)
    if missing:
        source = next(k for k, v in lm.names.items() if v == missing[0])
        raise BadInput(f"{lm.family}: the checkpoint does not store {source}", "re-save it with save_pretrained")
    return pairs


def _rerooted(key: str, target: str, root: str, text: Callable[[str], Renamed]) -> str:
    """The text-checkpoint key for a converted VLM key: the longest tail of `key` (renamed) that,
    under the text model's decoder `root`, the text model's converter turns into `target`."""
    parts = key.split(".")
    for i in range(len(parts)):
        name = f"{root}.{'.'.join(parts[i:])}"
        read = text(name)
        if read.memory == target and read.converter is not None:
            return name
    raise BadInput(f"{key} is stored in a layout the text model does not read as {target}")
