"""Tiny-model table, continued (see base.py for the shared dims and the Family fields)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import (
    _QWEN_MROPE,
    _QWEN_PATCH,
    _QWEN_PLACEHOLDER,
    _QWEN_SPECIALS,
    _QWEN_VISION,
    _SQUARE,
    IMAGE_SIZE,
    VISION,
    Family,
    _qwen_ids,
    _text,
)

# A few small experts, two picked per token: enough to exercise the router and fused experts.
_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
# Qwen3-VL's vision tower (deepstack from layer 0), shared by the Qwen3-VL-derived families.
_QWEN3_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 4,
    "out_hidden_size": 64,
    "num_position_embeddings": 64,
    **_QWEN_VISION,
}
_QWEN3_ROPE = {**_QWEN_MROPE, "mrope_interleaved": True}
# Qwen-style patches for towers that take single frames (a 2D patch embedding).
_ONE_FRAME = {**_QWEN_PATCH, "temporal_patch_size": 1}
# Qwen3.5: one Gated-DeltaNet (linear attention) layer and one full-attention layer; rotary on
# half of each head (the real models use a quarter of 256). At random init the DeltaNet's
# per-head outputs are often near zero and its gated RMSNorm blows them up: with eps 1e-6 a bf16
# rounding of the weights moves the logits by 5-15 %, past `merge --verify`'s bf16 tolerance.
# An eps of 1e-2 damps that (about 2 %, as for qwen3_vl); the architecture is unchanged.
_QWEN3_5_TEXT = {
    "rms_norm_eps": 1e-2,
    "layer_types": ["linear_attention", "full_attention"],
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "rope_parameters": {**_QWEN3_ROPE, "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1]},
}

# GLM-4.xV: Qwen-style patches and 3D rope, its own tokens; rotary on half of each head.
_GLM_SPECIALS = {"image_token": "<|image|>", "video_token": "<|video|>"}
_GLM_PLACEHOLDER = "<|begin_of_image|><|image|><|end_of_image|>"
_GLM_EXTRA = ("<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>")
_GLM_ROPE = {"rope_type": "default", "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1], "rope_theta": 10_000.0}
_GLM_VISION = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 4,
    "out_hidden_size": 64,
    "image_size": 32,
    **_QWEN_VISION,
}
# Qwen2.5-VL's windowed vision tower, as a sub-model of other families.
_QWEN2_5_VISION = {
    "model_type": "qwen2_5_vl_vision",
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 4,
    "out_hidden_size": 64,
    "window_size": 16,
    "fullatt_block_indexes": [1],
    **_QWEN_VISION,
}

_ERNIE_ROPE = {"rope_type": "default", "mrope_section": [3, 3, 2], "rope_theta": 500_000.0}
_ERNIE_SPECIALS = {
    "image_token": "<|IMAGE_PLACEHOLDER|>",
    "image_start_token": "<|IMAGE_START|>",
    "image_end_token": "<|IMAGE_END|>",
    "video_token": "<|VIDEO_PLACEHOLDER|>",
    "video_start_token": "<|VIDEO_START|>",
    "video_end_token": "<|VIDEO_END|>",
}


def _ids(tid: Callable[[str], int]) -> dict[str, Any]:
    """pad / eos / bos for text configs whose defaults are ids of the real (large) vocabulary:
    set up front, so the config never holds an id outside the tiny one."""
    return {"pad_token_id": tid("<|pad|>"), "eos_token_id": tid("<|im_end|>"), "bos_token_id": None}


def _glm_ids(tid: Callable[[str], int]) -> dict[str, int]:
    return {
        "image_token_id": tid("<|image|>"),
        "video_token_id": tid("<|video|>"),
        "image_start_token_id": tid("<|begin_of_image|>"),
        "image_end_token_id": tid("<|end_of_image|>"),
        "video_start_token_id": tid("<|begin_of_video|>"),
        "video_end_token_id": tid("<|end_of_video|>"),
    }


def _glm(config_class: str, text: dict[str, Any], *, prefix: str = "Glm4v") -> Family:
    return Family(
        config_class,
        f"{prefix}Processor",
        f"{prefix}ImageProcessor",
        _GLM_PLACEHOLDER,
        _GLM_SPECIALS,
        lambda tid, v: {
            "text_config": _text(v, rope_parameters=_GLM_ROPE, **text),
            "vision_config": dict(_GLM_VISION),
            **_glm_ids(tid),
        },
        _QWEN_PATCH,
        video_processor=f"{prefix}VideoProcessor",
        video_processor_kwargs=_QWEN_PATCH,
        extra_tokens=_GLM_EXTRA,
        video_placeholder="<|begin_of_video|><|video|><|end_of_video|>",
    )


def _qwen(config_class: str, text: dict[str, Any], vision: dict[str, Any]) -> Family:
    """A Qwen3-VL-derived family: Qwen3-VL's processor, tokens and image/video processors."""
    return Family(
        config_class,
        "Qwen3VLProcessor",
        "Qwen2VLImageProcessor",
        _QWEN_PLACEHOLDER,
        _QWEN_SPECIALS,
        lambda tid, v: {"text_config": _text(v, **text), "vision_config": dict(vision), **_qwen_ids(tid)},
        _QWEN_PATCH,
        video_processor="Qwen3VLVideoProcessor",
        video_processor_kwargs=_QWEN_PATCH,
    )


FAMILIES: dict[str, Family] = {
    "qwen3_vl_moe": _qwen(
        "Qwen3VLMoeConfig", {"rope_parameters": _QWEN3_ROPE, **_MOE}, {**_QWEN3_VISION, "deepstack_visual_indexes": [0]}
    ),
    "qwen3_5": _qwen("Qwen3_5Config", _QWEN3_5_TEXT, _QWEN3_VISION),
    "qwen3_5_moe": _qwen(
        "Qwen3_5MoeConfig", {**_QWEN3_5_TEXT, **_MOE, "shared_expert_intermediate_size": 32}, _QWEN3_VISION
    ),
    "glm4v": _glm("Glm4vConfig", {}),
    # layer 0 dense, layer 1 MoE (4 routed experts + 1 shared)
    "glm4v_moe": _glm(
        "Glm4vMoeConfig",
        {
            "n_routed_experts": 4,
            "n_shared_experts": 1,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "first_k_dense_replace": 1,
        },
    ),
    "glm46v": _glm("Glm46VConfig", {"model_type": "glm4v_text"}, prefix="Glm46V"),
    # EXAONE 4 LM (1 sliding + 1 global layer, 1D rope) on a Qwen2.5-VL-style windowed vision tower
    # with grouped-query attention.
    "exaone4_5": Family(
        "Exaone4_5_Config",
        "Exaone4_5_Processor",
        "Qwen2VLImageProcessor",
        _QWEN_PLACEHOLDER,
        _QWEN_SPECIALS,
        lambda tid, v: {
            "text_config": _text(
                v, model_type="exaone4", sliding_window=64, layer_types=["sliding_attention", "full_attention"]
            ),
            "vision_config": {
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 4,
                "num_key_value_heads": 2,
                "out_hidden_size": 64,
                "window_size": 16,
                "fullatt_block_indexes": [1],
                **_QWEN_VISION,
            },
            "image_token_id": tid("<|image_pad|>"),
            "video_token_id": tid("<|video_pad|>"),
        },
        _QWEN_PATCH,
        video_processor="Qwen2VLVideoProcessor",
        video_processor_kwargs=_QWEN_PATCH,
    ),
    # a Qwen2.5-VL vision tower, a Linear projector and a HyperCLOVA X LM; head tied by default
    "hyperclovax_vision_v2": Family(
        "HyperCLOVAXVisionV2Config",
        "HyperCLOVAXVisionV2Processor",
        "Qwen2VLImageProcessor",
        _QWEN_PLACEHOLDER,
        _QWEN_SPECIALS,
        lambda tid, v: {
            "text_config": _text(v, model_type="hyperclovax"),
            "vision_config": dict(_QWEN2_5_VISION),
            "image_token_id": tid("<|image_pad|>"),
            "video_token_id": tid("<|video_pad|>"),
        },
        _QWEN_PATCH,
        video_processor="Qwen2VLVideoProcessor",
        video_processor_kwargs=_QWEN_PATCH,
    ),
    # LFM3: short-conv + attention hybrid LM and vision tower, Qwen-style patches and tokens
    "lfm3_vl": Family(
        "Lfm3VlConfig",
        "Lfm3VlProcessor",
        "Qwen2VLImageProcessor",
        _QWEN_PLACEHOLDER,
        _QWEN_SPECIALS,
        lambda tid, v: {
            "text_config": _text(
                v, model_type="lfm3", layer_types=["conv", "full_attention"], sliding_window=64, **_ids(tid)
            ),
            "vision_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "layer_types": ["conv", "full_attention"],
                **_QWEN_VISION,
            },
            "projector_hidden_size": 64,
            **_qwen_ids(tid),
        },
        _QWEN_PATCH,
        video_processor="Qwen3VLVideoProcessor",
        video_processor_kwargs=_QWEN_PATCH,
    ),
    # SigLIP-style tower on Qwen-style patches (one frame, no merge for images), Qwen2 LM
    "video_llama_3": Family(
        "VideoLlama3Config",
        "VideoLlama3Processor",
        "VideoLlama3ImageProcessor",
        _QWEN_PLACEHOLDER,
        _QWEN_SPECIALS,
        lambda tid, v: {
            "text_config": _text(v, model_type="qwen2"),
            "vision_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "patch_size": 4,
            },
            "image_token_id": tid("<|image_pad|>"),
            "video_token_id": tid("<|video_pad|>"),
        },
        {
            "patch_size": 4,
            "merge_size": 1,
            "temporal_patch_size": 1,
            "size": {"shortest_edge": 16 * 16, "longest_edge": 32 * 32},
        },
        video_processor="VideoLlama3VideoProcessor",
        video_processor_kwargs={
            "patch_size": 4,
            "merge_size": 2,
            "temporal_patch_size": 1,
            "size": {"shortest_edge": 16 * 16, "longest_edge": 32 * 32},
        },
    ),
    # SigLIP-style NaViT tower (interpolated positions), ERNIE-4.5 LM with 3D rope; head tied
    "paddleocr_vl": Family(
        "PaddleOCRVLConfig",
        "PaddleOCRVLProcessor",
        "PaddleOCRVLImageProcessor",
        "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>",
        {"image_token": "<|IMAGE_PLACEHOLDER|>"},
        lambda tid, v: {
            "text_config": _text(v, rope_parameters=_QWEN_MROPE, **_ids(tid)),
            "vision_config": {**VISION, "patch_size": 4, "spatial_merge_size": 2},
            "image_token_id": tid("<|IMAGE_PLACEHOLDER|>"),
            "video_token_id": tid("<|video_pad|>"),
            "vision_start_token_id": tid("<|IMAGE_START|>"),
            "vision_end_token_id": tid("<|IMAGE_END|>"),
        },
        _ONE_FRAME,
        extra_tokens=("<|IMAGE_START|>", "<|IMAGE_END|>", "<|video_pad|>"),
    ),
    # HunyuanOCR: NaViT tower whose conv merger adds a newline column and begin/end embeddings;
    # 4-axis rope (sequence, width, height, image index); head tied
    "hunyuan_vl": Family(
        "HunYuanVLConfig",
        "HunYuanVLProcessor",
        "HunYuanVLImageProcessor",
        "<|hy_image_start|><|hy_image|><|hy_image_end|>",
        {
            "image_token": "<|hy_image|>",
            "image_start_token": "<|hy_image_start|>",
            "image_end_token": "<|hy_image_end|>",
        },
        lambda tid, v: {
            "text_config": _text(
                v,
                rope_parameters={"rope_type": "default", "rope_theta": 10_000.0, "mrope_section": [2, 2, 2, 2]},
                **_ids(tid),
            ),
            "vision_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "patch_size": 4,
                "spatial_merge_size": 2,
                "max_image_size": 64,
                "min_image_size": 16,
                "text_hidden_size": 64,
                "out_hidden_size": 64,
            },
            "image_token_id": tid("<|hy_image|>"),
            "im_start_id": tid("<|hy_image_start|>"),
            "im_end_id": tid("<|hy_image_end|>"),
            "im_newline_id": tid("<|hy_image_newline|>"),
        },
        _ONE_FRAME,
        extra_tokens=("<|hy_image_newline|>",),
    ),
    # SigLIP2 NaFlex tower (no pooling head), pixel-unshuffle projector, LFM2 conv/attention LM
    "lfm2_vl": Family(
        "Lfm2VlConfig",
        "Lfm2VlProcessor",
        "Lfm2VlImageProcessor",
        "<image>",
        {
            "image_token": "<image>",
            "image_start_token": "<|image_start|>",
            "image_end_token": "<|image_end|>",
            "image_thumbnail_token": "<|img_thumbnail|>",
        },
        lambda tid, v: {
            "text_config": _text(
                v,
                model_type="lfm2",
                layer_types=["conv", "full_attention"],
                block_auto_adjust_ff_dim=False,
                **_ids(tid),
            ),
            "vision_config": {
                "model_type": "siglip2_vision_model",
                **VISION,
                "num_patches": 16,
                "vision_use_head": False,
            },
            "image_token_id": tid("<image>"),
            "projector_hidden_size": 64,
            "downsample_factor": 2,
        },
        {
            "encoder_patch_size": 8,
            "downsample_factor": 2,
            "min_image_tokens": 4,
            "max_image_tokens": 16,
            "do_image_splitting": False,
            "use_thumbnail": False,
            "tile_size": IMAGE_SIZE,
            **_SQUARE,
        },
    ),
    # ERNIE-4.5-VL: layer 0 dense, layer 1 MoE with separate text and vision experts (+1 shared);
    # 3D rope pre-rotated on height/width. Frames get no drawn timestamps (that needs the font file
    # shipped with the real checkpoint).
    "ernie4_5_vl_moe": Family(
        "Ernie4_5_VLMoeConfig",
        "Ernie4_5_VLMoeProcessor",
        "Ernie4_5_VLMoeImageProcessor",
        "<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>",
        _ERNIE_SPECIALS,
        lambda tid, v: {
            "text_config": _text(
                v,
                rope_parameters=_ERNIE_ROPE,
                mlp_layer_types=["dense", "sparse"],
                moe_num_experts=4,
                moe_k=2,
                moe_intermediate_size=[32, 32],
                moe_num_shared_experts=1,
                **_ids(tid),
            ),
            "vision_config": {
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 4,
                "patch_size": 4,
                "spatial_merge_size": 2,
                "temporal_merge_size": 2,
            },
            **{f"{key}_id": tid(token) for key, token in _ERNIE_SPECIALS.items()},
        },
        _ONE_FRAME,
        video_processor="Ernie4_5_VLMoeVideoProcessor",
        video_processor_kwargs={
            "patch_size": 4,
            "merge_size": 2,
            "temporal_patch_size": 2,
            "size": {"shortest_edge": 16 * 16, "longest_edge": 64 * 64},
            "draw_on_frames": False,
        },
    ),
    # MoonViT tower + DeepSeek-V3 LM (MLA attention; layer 0 dense, layer 1 MoE + a shared
    # expert). DeepSeek's head_dim is its rotary part (qk_rope_head_dim), not TEXT's 16.
    "kimi_k25": Family(
        "Kimi_K25Config",
        "Kimi_K25Processor",
        "Kimi_K25ImageProcessor",
        "<|media_begin|>image<|media_content|><|media_pad|><|media_end|>",
        {"image_token": "<|media_pad|>", "video_token": "<|kimi_k25_video_placeholder|>"},
        lambda tid, v: {
            "text_config": _text(
                v,
                model_type="deepseek_v3",
                num_key_value_heads=4,
                q_lora_rank=32,
                kv_lora_rank=16,
                head_dim=8,
                qk_rope_head_dim=8,
                qk_nope_head_dim=8,
                v_head_dim=16,
                n_routed_experts=4,
                n_shared_experts=1,
                num_experts_per_tok=2,
                moe_intermediate_size=32,
                n_group=1,
                topk_group=1,
                first_k_dense_replace=1,
                **_ids(tid),
            ),
            "vision_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "patch_size": 4,
                "pos_emb_height": 8,
                "pos_emb_width": 8,
                "merge_kernel_size": [2, 2],
            },
            "projection_hidden_size": 32,
            "image_token_id": tid("<|media_pad|>"),
            "video_token_id": tid("<|kimi_k25_video_placeholder|>"),
            "vision_start_token_id": tid("<|media_begin|>"),
            "vision_end_token_id": tid("<|media_end|>"),
        },
        {"patch_size": 4, "merge_size": 2, "max_patches": 64, "size": {"max_height": 8, "max_width": 8}},
        video_processor="Kimi_K25VideoProcessor",
        video_processor_kwargs={
            "patch_size": 4,
            "merge_size": 2,
            "max_patches": 64,
            "size": {"max_height": 8, "max_width": 8},
        },
        # video rows crash Kimi's forward on this tiny build (split sizes of the vision features
        # disagree with its grid): the tiny family offers no video
        video_placeholder="",
        extra_tokens=("<|media_begin|>", "<|media_content|>", "<|media_end|>"),
    ),
}
