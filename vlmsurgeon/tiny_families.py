"""The tiny-model table: for each family, the config (a few dims, 2 layers), the processor
classes and the special tokens its processor expects. Read by `build.py`; the shared dims are in
`base.py`, the rest of the table one module per kind of family."""

from __future__ import annotations

from typing import Any

from .tiny_base import (
    Family, IMAGE_SIZE, QWEN_VIDEO, VISION, _CLIP_IMAGE, _QWEN_MROPE, _QWEN_PATCH, _QWEN_PLACEHOLDER, _QWEN_SPECIALS, _QWEN_VISION, _SQUARE, _qwen_ids, _text,
)
from .tiny_llava_like import FAMILIES as _LLAVA_LIKE
from .tiny_more import FAMILIES as _MORE
from .tiny_qwen_like import FAMILIES as _QWEN_LIKE

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

FAMILIES.update({**_LLAVA_LIKE, **_QWEN_LIKE, **_MORE})
