"""What every tiny family shares: the language-model and vision dims, the `Family` record and the
processor settings several kinds reuse. The table itself is `families.py`, one module per kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Every family shares these language-model dims: 2 layers, hidden 64, head_dim 16.
TEXT: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
    # wide enough initial weights that a frozen head can still express a confident answer
    "initializer_range": 0.2,
}
VISION: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}
IMAGE_SIZE = 32  # tiny processors resize every image to (about) this many pixels a side
CHATML = ("<|im_start|>", "<|im_end|>")


@dataclass(frozen=True)
class Family:
    """How to build one tiny family. `config` gets the token-id lookup and the vocab size."""

    config_class: str
    processor: str
    image_processor: str
    placeholder: str  # what the chat template writes for an image
    specials: dict[str, str]  # tokenizer attribute -> token (image_token, boi_token, …)
    config: Callable[[Callable[[str], int], int], dict[str, Any]]
    image_processor_kwargs: dict[str, Any] = field(default_factory=dict)
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    video_processor: str | None = None
    video_processor_kwargs: dict[str, Any] = field(default_factory=dict)
    video_placeholder: str | None = None  # what the chat template writes for a video
    extra_tokens: tuple[str, ...] = ()
    bos: str | None = None
    eos: str = "<|im_end|>"
    pad: str = "<|pad|>"
    turn: tuple[str, str] = CHATML


def _qwen_ids(tid: Callable[[str], int]) -> dict[str, int]:
    return {
        "image_token_id": tid("<|image_pad|>"),
        "video_token_id": tid("<|video_pad|>"),
        "vision_start_token_id": tid("<|vision_start|>"),
        "vision_end_token_id": tid("<|vision_end|>"),
    }


_QWEN_MROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1_000_000.0}
_QWEN_SPECIALS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
_QWEN_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
_QWEN_PATCH = {
    "patch_size": 4,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "size": {"shortest_edge": 16 * 16, "longest_edge": 64 * 64},
}
_QWEN_VISION = {"patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
_CLIP_IMAGE = {"size": {"shortest_edge": IMAGE_SIZE}, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}}
_SQUARE = {"size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}}


def _text(vocab: int, **extra: Any) -> dict[str, Any]:
    return {**TEXT, "vocab_size": vocab, **extra}
