"""The tiny-model table: for each family, the config (a few dims, 2 layers), the processor
classes and the special tokens its processor expects. Read by `tiny.py`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# Every family shares these language-model dims: 2 layers, hidden 64, head_dim 16.
TEXT: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024,
    # wide enough initial weights that a frozen head can still express a confident answer
    "initializer_range": 0.2,
}
VISION: dict[str, Any] = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": 32, "patch_size": 8,
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
    return {"image_token_id": tid("<|image_pad|>"), "video_token_id": tid("<|video_pad|>"),
            "vision_start_token_id": tid("<|vision_start|>"),
            "vision_end_token_id": tid("<|vision_end|>")}


_QWEN_MROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1_000_000.0}
_QWEN_SPECIALS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                  "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
_QWEN_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
_QWEN_PATCH = {"patch_size": 4, "merge_size": 2, "temporal_patch_size": 2,
               "size": {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}}
_QWEN_VISION = {"patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
_CLIP_IMAGE = {"size": {"shortest_edge": IMAGE_SIZE},
               "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}}
_SQUARE = {"size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}}


def _text(vocab: int, **extra: Any) -> dict[str, Any]:
    return {**TEXT, "vocab_size": vocab, **extra}


FAMILIES: dict[str, Family] = {
    "qwen2_vl": Family(
        "Qwen2VLConfig", "Qwen2VLProcessor", "Qwen2VLImageProcessor", _QWEN_PLACEHOLDER,
        _QWEN_SPECIALS,
        lambda tid, v: {
            "text_config": _text(v, rope_parameters=_QWEN_MROPE),
            "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 4,
                              "mlp_ratio": 2, **_QWEN_VISION},
            **_qwen_ids(tid)},
        _QWEN_PATCH, video_processor="Qwen2VLVideoProcessor", video_processor_kwargs=_QWEN_PATCH,
        video_placeholder=QWEN_VIDEO,
    ),
    "qwen2_5_vl": Family(
        "Qwen2_5_VLConfig", "Qwen2_5_VLProcessor", "Qwen2VLImageProcessor", _QWEN_PLACEHOLDER,
        _QWEN_SPECIALS,
        lambda tid, v: {
            "text_config": _text(v, rope_parameters=_QWEN_MROPE),
            "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64,
                              "num_heads": 4, "out_hidden_size": 64, "window_size": 16,
                              "fullatt_block_indexes": [1], **_QWEN_VISION},
            **_qwen_ids(tid)},
        _QWEN_PATCH, video_processor="Qwen2VLVideoProcessor", video_processor_kwargs=_QWEN_PATCH,
        video_placeholder=QWEN_VIDEO,
    ),
    "qwen3_vl": Family(
        "Qwen3VLConfig", "Qwen3VLProcessor", "Qwen2VLImageProcessor", _QWEN_PLACEHOLDER,
        _QWEN_SPECIALS,
        lambda tid, v: {
            "text_config": _text(v, rope_parameters={**_QWEN_MROPE, "mrope_interleaved": True}),
            "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64,
                              "num_heads": 4, "out_hidden_size": 64, "num_position_embeddings": 64,
                              "deepstack_visual_indexes": [0], **_QWEN_VISION},
            **_qwen_ids(tid)},
        _QWEN_PATCH, video_processor="Qwen3VLVideoProcessor", video_processor_kwargs=_QWEN_PATCH,
        video_placeholder=QWEN_VIDEO,
    ),
    "llava": Family(
        "LlavaConfig", "LlavaProcessor", "CLIPImageProcessor", "<image>", {"image_token": "<image>"},
        lambda tid, v: {
            "text_config": {"model_type": "llama", **_text(v)},
            "vision_config": {"model_type": "clip_vision_model", "projection_dim": 32, **VISION},
            "image_token_index": tid("<image>"), "image_seq_length": 16,
            "vision_feature_layer": -2},
        _CLIP_IMAGE,
        {"patch_size": 8, "vision_feature_select_strategy": "default", "image_token": "<image>",
         "num_additional_image_tokens": 1},
    ),
    "llava_next": Family(
        "LlavaNextConfig", "LlavaNextProcessor", "LlavaNextImageProcessor", "<image>",
        {"image_token": "<image>"},
        lambda tid, v: {
            "text_config": {"model_type": "llama", **_text(v)},
            "vision_config": {"model_type": "clip_vision_model", "projection_dim": 32, **VISION},
            "image_token_index": tid("<image>"), "image_seq_length": 16,
            "image_grid_pinpoints": [[32, 32], [32, 64], [64, 32]], "vision_feature_layer": -2},
        {**_CLIP_IMAGE, "image_grid_pinpoints": [[32, 32], [32, 64], [64, 32]]},
        {"patch_size": 8, "vision_feature_select_strategy": "default", "image_token": "<image>",
         "num_additional_image_tokens": 1},
    ),
    "idefics3": Family(
        "Idefics3Config", "Idefics3Processor", "Idefics3ImageProcessor", "<image>",
        {"image_token": "<image>"},
        lambda tid, v: {
            "text_config": {"model_type": "llama", **_text(v)},
            "vision_config": dict(VISION), "scale_factor": 2, "image_token_id": tid("<image>")},
        {"size": {"longest_edge": IMAGE_SIZE}, "max_image_size": {"longest_edge": IMAGE_SIZE},
         "do_image_splitting": False},
        {"image_seq_len": 4},
        extra_tokens=("<fake_token_around_image>", "<global-img>", "<end_of_utterance>"),
    ),
    "paligemma": Family(
        "PaliGemmaConfig", "PaliGemmaProcessor", "SiglipImageProcessor", "<image>",
        {"image_token": "<image>"},
        lambda tid, v: {
            "text_config": {"model_type": "gemma", **_text(v), "num_image_tokens": 16},
            "vision_config": {"model_type": "siglip_vision_model", "projection_dim": 64, **VISION},
            "image_token_index": tid("<image>"), "projection_dim": 64, "hidden_size": 64,
            "vocab_size": v, "tie_word_embeddings": True},
        {**_SQUARE, "image_seq_length": 16},
        bos="<bos>", eos="<eos>", pad="<pad>",
    ),
    "gemma3": Family(
        "Gemma3Config", "Gemma3Processor", "Gemma3ImageProcessor", "<start_of_image>",
        {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
         "eoi_token": "<end_of_image>"},
        lambda tid, v: {
            "text_config": {"model_type": "gemma3_text", **_text(v), "sliding_window": 64,
                            "query_pre_attn_scalar": 16},
            "vision_config": {"model_type": "siglip_vision_model", **VISION},
            "mm_tokens_per_image": 4, "boi_token_index": tid("<start_of_image>"),
            "eoi_token_index": tid("<end_of_image>"), "image_token_index": tid("<image_soft_token>"),
            "tie_word_embeddings": True},
        _SQUARE, {"image_seq_length": 4},
        bos="<bos>", eos="<end_of_turn>", pad="<pad>", turn=("<start_of_turn>", "<end_of_turn>"),
    ),
    "mllama": Family(
        "MllamaConfig", "MllamaProcessor", "MllamaImageProcessor", "<|image|>",
        {"image_token": "<|image|>"},
        lambda tid, v: {
            "text_config": {**_text(v), "cross_attention_layers": [1],
                            "pad_token_id": tid("<|pad|>")},
            "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                              "num_global_layers": 1, "attention_heads": 4, "image_size": 32,
                              "patch_size": 8, "max_num_tiles": 2, "vision_output_dim": 64,
                              "intermediate_layers_indices": [0],
                              "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]]},
            "image_token_index": tid("<|image|>")},
        {**_SQUARE, "max_image_tiles": 2},
        bos="<|begin_of_text|>",
    ),
    "internvl": Family(
        "InternVLConfig", "InternVLProcessor", "GotOcr2ImageProcessor", "<IMG_CONTEXT>",
        {"start_image_token": "<img>", "end_image_token": "</img>",
         "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
        lambda tid, v: {
            "text_config": {"model_type": "qwen2", **_text(v)},
            "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "image_size": [32, 32], "patch_size": [8, 8]},
            "image_token_id": tid("<IMG_CONTEXT>"), "image_seq_length": 4, "downsample_ratio": 0.5},
        {**_SQUARE, "crop_to_patches": False},
        {"image_seq_length": 4},
        video_processor="InternVLVideoProcessor", video_processor_kwargs=_SQUARE,
    ),
}

# The rest of the table lives beside this file, one module per kind of family.
from .tiny_llava_like import FAMILIES as _LLAVA_LIKE  # noqa: E402
from .tiny_more import FAMILIES as _MORE  # noqa: E402
from .tiny_qwen_like import FAMILIES as _QWEN_LIKE  # noqa: E402

FAMILIES.update({**_LLAVA_LIKE, **_QWEN_LIKE, **_MORE})
