"""A narrow replica of a model: the same config with only the widths shrunk, so that every
module name, layer count and structural index (feature layers, deepstack indexes, cross-attention
layers, expert counts, tied weights) is the full model's, and one forward + backward pass costs
seconds on a CPU. Also: a synthetic image + text batch built from the config alone."""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Iterator
from typing import Any

from vlmsurgeon.errors import BadInput

HEADS = ("num_attention_heads", "num_heads", "attention_heads", "n_heads", "encoder_attention_heads")
WIDTHS = ("embed_dim", "hidden_size", "d_model", "n_embd")
# widths that nothing else depends on: set to a small constant
FREE = {
    "intermediate_size": 64,
    "ffn_dim": 64,
    "mlp_dim": 64,
    "n_inner": 64,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 16,
    "expert_intermediate_size": 16,
    "hidden_size_per_layer_input": 16,
}
# widths that repeat (or multiply) another config's width: follow it
DERIVED = (
    "hidden_size",
    "word_embed_proj_dim",
    "encoder_hidden_size",
    "out_hidden_size",
    "projection_dim",
    "vision_output_dim",
    "text_hidden_size",
    "mm_hidden_size",
    "output_dim",
    "projector_hidden_size",
    "vision_hidden_size",
    "embed_dim",
)
KEEP_HEADS = 2
VOCAB = 2048
TEXT_TOKENS = 24


def _configs(config: Any) -> Iterator[Any]:
    """The config and every nested sub-config, each once."""
    from transformers import PretrainedConfig

    seen: set[int] = set()
    stack = [config]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(v for v in vars(node).values() if isinstance(v, PretrainedConfig))


def _int(node: Any, key: str) -> int | None:
    value = vars(node).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _set(node: Any, key: str, value: Any) -> None:
    try:
        setattr(node, key, value)
    except (AttributeError, TypeError):
        pass


def narrow_config(config: Any) -> Any:
    """A deep copy with attention widths cut to two heads of the original head size (so rotary
    sections and head-dim-dependent scalars stay valid), MLP / expert widths to a few units,
    and every width that repeats another (a merger's output = the LM's hidden size) following."""
    config = copy.deepcopy(config)
    mapping: dict[int, int] = {}
    width_key: dict[int, str] = {}
    for node in _configs(config):
        heads_key = next((k for k in HEADS if _int(node, k)), None)
        key = next((k for k in WIDTHS if _int(node, k)), None)
        if not heads_key or not key:
            continue
        heads, width = _int(node, heads_key), _int(node, key)
        assert heads and width
        head_dim = _int(node, "head_dim") or (width // heads if width % heads == 0 else None)
        if head_dim is None:
            continue
        new_heads = min(heads, KEEP_HEADS)
        kv = _int(node, "num_key_value_heads")
        if kv:
            _set(node, "num_key_value_heads", new_heads if kv >= heads else max(1, new_heads // 2))
        _set(node, heads_key, new_heads)
        if _int(node, "head_dim"):
            _set(node, "head_dim", head_dim)
        new_width = new_heads * head_dim
        _set(node, key, new_width)
        mapping.setdefault(width, new_width)
        width_key[id(node)] = key
    vision = getattr(config, "vision_config", None)
    text_width = _int(getattr(config, "text_config", None) or config, "hidden_size")
    for node in _configs(config):
        for key, small in FREE.items():
            value = vars(node).get(key)
            if _int(node, key):
                _set(node, key, min(_int(node, key) or small, small))
            elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
                _set(node, key, [min(v, small) for v in value])  # per-modality expert widths
        for key in DERIVED:
            value = _int(node, key)
            if value is None or width_key.get(id(node)) == key:
                continue
            if node is vision and key in ("out_hidden_size", "hidden_size") and text_width:
                # a merger nested in the vision config projects to the LM's width (some default
                # configs disagree with their own text config; real checkpoints never do)
                _set(node, key, text_width)
                continue
            if value in mapping:
                _set(node, key, mapping[value])
                continue
            for old, new in mapping.items():
                if value % old == 0 and value // old <= 16:
                    _set(node, key, new * (value // old))
                    break
    ratio = getattr(vision, "pixel_shuffle_ratio", None)
    dims = ("projector_input_dim", "projector_output_dim", "vision_output_dim")
    if isinstance(ratio, float) and ratio > 0 and all(_int(vision, k) for k in dims):
        # Llama 4: the pixel-shuffle MLP reads hidden / ratio² and hands the projector its output
        # (and the three projector widths are one width in released checkpoints)
        _set(vision, "intermediate_size", int(vision.hidden_size / ratio**2))
        for key in dims:
            _set(vision, key, 64)
    if vision is not None and _int(vision, "max_num_tiles"):  # Mllama: one 1×1 tile per image
        _set(vision, "max_num_tiles", 1)
        _set(vision, "supported_aspect_ratios", [[1, 1]])
    for node in _configs(config):  # linear-attention heads keep their size, fewer of them
        keys, values = _int(node, "linear_num_key_heads"), _int(node, "linear_num_value_heads")
        if keys and values:
            _set(node, "linear_num_key_heads", 1)
            _set(node, "linear_num_value_heads", 2 if values > keys else 1)
    _small_vocab(config)
    return config


def _is_id(key: str) -> bool:
    return key.endswith(("_token_id", "_token_index", "_token_ids"))


def _special_ids(config: Any) -> set[int]:
    found: set[int] = set()
    for node in _configs(config):
        for key, value in vars(node).items():
            values = value if isinstance(value, list) else [value]
            if _is_id(key):
                found.update(v for v in values if isinstance(v, int) and not isinstance(v, bool))
    return found


def _small_vocab(config: Any) -> None:
    """A vocabulary of at most VOCAB tokens: the embedding and head keep their names, not their
    150k-260k rows. Every special token id (image, video, pad, bos …) that falls outside the
    smaller vocabulary is renumbered into free slots at its top, consistently across sub-configs;
    ids past a default config's own vocabulary are fixed the same way."""
    sizes = []
    for node in _configs(config):
        for key, value in list(vars(node).items()):
            if "vocab_size" in key and isinstance(value, int) and not isinstance(value, bool):
                if value > VOCAB:
                    _set(node, key, VOCAB)
                if value >= 256:
                    sizes.append(min(value, VOCAB))
    limit = min(sizes, default=VOCAB)
    ids = _special_ids(config)
    free = (slot for slot in range(limit - 1, -1, -1) if slot not in ids)
    renumber = {old: next(free) for old in sorted(ids) if old >= limit}
    if not renumber:
        return
    for node in _configs(config):
        for key, value in list(vars(node).items()):
            if _is_id(key) and isinstance(value, int) and not isinstance(value, bool):
                _set(node, key, renumber.get(value, value))
            elif _is_id(key) and isinstance(value, list):
                _set(node, key, [renumber.get(v, v) for v in value])


def unzero(model: Any, seed: int = 0) -> int:
    """Give every all-zero parameter small random values. Random initialisation zeroes some
    weights (tanh gates, Gemma 3's projection) that a trained checkpoint never holds at zero, and
    a zero multiplier would block the gradient to everything before it. Returns how many."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for param in model.parameters():
            if param.numel() and param.is_floating_point() and not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
                count += 1
    return count


def check_names(full: Any, replica: Any) -> None:
    """The replica must hold exactly the full model's parameter names."""
    want = {n for n, _ in full.named_parameters(remove_duplicate=False)}
    got = {n for n, _ in replica.named_parameters(remove_duplicate=False)}
    if want != got:
        missing, extra = sorted(want - got), sorted(got - want)
        raise BadInput(
            f"probe: the narrow replica's parameter names differ from the model's "
            f"({len(missing)} missing, e.g. {missing[:1]}; {len(extra)} extra, e.g. {extra[:1]})",
            "this family is not covered by --probe; see docs/plan.md, 'Gradient probe'",
        )


# ---- a synthetic batch from the config alone ------------------------------------------------


def _first_id(config: Any, *keys: str) -> int | None:
    for node in (config, getattr(config, "text_config", None)):
        for key in keys:
            value = getattr(node, key, None) if node is not None else None
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _image_hw(vision: Any) -> tuple[int, int]:
    size = getattr(vision, "image_size", None) or 224
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[-1])
    if isinstance(size, dict):
        return int(size.get("height", 224)), int(size.get("width", 224))
    return int(size), int(size)


def _vision_inputs(model: Any, config: Any, params: dict[str, Any], gen: Any) -> tuple[str, dict[str, Any]]:
    import torch

    vision = getattr(config, "vision_config", None)
    if vision is None:
        raise BadInput(f"probe: {config.model_type} has no vision_config", "the probe needs an image path")
    channels = getattr(vision, "in_channels", None) or getattr(vision, "num_channels", None) or 3
    if "image_grid_thw" in params and getattr(vision, "spatial_merge_size", None):
        patch, merge = vision.patch_size, vision.spatial_merge_size
        temporal = getattr(vision, "temporal_patch_size", 1) or 1
        side = 4 * merge
        pixels = torch.randn(side * side, channels * temporal * patch * patch, generator=gen)
        return "grid", {"pixel_values": pixels, "image_grid_thw": torch.tensor([[1, side, side]])}
    height, width = _image_hw(vision)
    if "aspect_ratio_ids" in params:
        # one image of one tile (max_num_tiles is 1 in the replica): aspect ratio id 1 is 1×1
        return "cross", {
            "pixel_values": torch.randn(1, 1, 1, channels, height, width, generator=gen),
            "aspect_ratio_ids": torch.tensor([[1]]),
            "aspect_ratio_mask": torch.ones(1, 1, 1, dtype=torch.long),
        }
    if "pixel_attention_mask" in params:
        pixels = torch.randn(1, 1, channels, height, width, generator=gen)
        return "tokens", {
            "pixel_values": pixels,
            "pixel_attention_mask": torch.ones(1, 1, height, width, dtype=torch.bool),
        }
    module = sys.modules.get(type(model).__module__)
    pinpoints = getattr(config, "image_grid_pinpoints", None)
    to_patches = getattr(module, "image_size_to_num_patches", None)
    if pinpoints and to_patches:
        count = to_patches((height, width), pinpoints, getattr(vision, "image_size", height))
        pixels = torch.randn(1, count, channels, height, width, generator=gen)
        return "tokens", {"pixel_values": pixels, "image_sizes": torch.tensor([[height, width]])}
    if "pixtral" in str(getattr(vision, "model_type", "")) and isinstance(vision.patch_size, int):
        # towers that take any size (Pixtral's 2-D rotary): a small image, 8 × 8 patches
        height = width = 8 * vision.patch_size * (getattr(config, "spatial_merge_size", 1) or 1)
    return "tokens", {"pixel_values": torch.randn(1, channels, height, width, generator=gen)}


def _image_features(model: Any, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
    """Vision features for `inputs`; some 4-D families (Pixtral towers) also need image_sizes."""
    import torch

    with torch.no_grad():
        try:
            return model.get_image_features(**inputs)
        except Exception:
            if "image_sizes" not in params or "image_sizes" in inputs:
                raise
            pixels = inputs["pixel_values"]
            inputs["image_sizes"] = torch.tensor([list(pixels.shape[-2:])])
            return model.get_image_features(**inputs)


def _feature_count(model: Any, inputs: dict[str, Any], params: dict[str, Any]) -> int:
    import torch

    out = _image_features(model, inputs, params)
    feats = out if isinstance(out, (torch.Tensor, list, tuple)) else getattr(out, "pooler_output", None)
    if feats is None:
        feats = getattr(out, "last_hidden_state", None)
    if isinstance(feats, torch.Tensor):
        feats = [feats]
    return sum(f.reshape(-1, f.shape[-1]).shape[0] for f in feats)


def synthetic_batch(model: Any, config: Any, seed: int = 0) -> dict[str, Any]:
    """One image and a few text tokens, shaped the way the family's processor would shape
    them; labels on the text so that the loss reaches every component that feeds it."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    params = inspect.signature(model.forward).parameters
    kind, vision = _vision_inputs(model, config, params, gen)
    image_id = _first_id(config, "image_token_id", "image_token_index")
    vocab = _first_id(config, "vocab_size") or 1000
    specials = _special_ids(config)
    pool = torch.tensor([i for i in range(min(vocab, 4096)) if i not in specials])
    text = pool[torch.randint(len(pool), (TEXT_TOKENS,), generator=gen)]
    # no image token: the family prefixes or cross-attends to the image, text tokens only
    count = 0 if image_id is None else 1 if kind == "cross" else _feature_count(model, vision, params)
    image = torch.full((count,), image_id if image_id is not None else 0)
    ids = torch.cat([text[:2], image, text[2:]]).unsqueeze(0)
    is_image = ids == image_id if image_id is not None else torch.zeros_like(ids, dtype=torch.bool)
    labels = ids.masked_fill(is_image, -100)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, **vision}
    if "token_type_ids" in params:
        batch["token_type_ids"] = is_image.long()
    if "mm_token_type_ids" in params:
        batch["mm_token_type_ids"] = is_image.int()
    if kind == "cross":
        tiles = vision["pixel_values"].shape[2]
        mask = torch.zeros(1, ids.shape[1], 1, tiles, dtype=torch.long)
        mask[0, 2:, 0, 0] = 1
        batch["cross_attention_mask"] = mask
    return batch
