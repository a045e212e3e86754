"""Tiny-model table, continued (see base.py for the shared dims and the Family fields)."""

from __future__ import annotations

from .base import _CLIP_IMAGE, _SQUARE, IMAGE_SIZE, TEXT, VISION, Family, _text

_LLAMA = {"model_type": "llama"}
_CLIP_VISION = {"model_type": "clip_vision_model", "projection_dim": 32, **VISION}
_PINPOINTS = [[32, 32], [32, 64], [64, 32]]
_SIGLIP_VISION = {"model_type": "siglip_vision_model", **VISION}
_PIXTRAL_VISION = {"model_type": "pixtral", **VISION}
_PIXTRAL_SPECIALS = {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"}
# 32 px, patch 8, merged 2x2: a 2x2 grid of [IMG] with an [IMG_BREAK] after each row
_PIXTRAL_IMAGE = {"size": {"longest_edge": IMAGE_SIZE}, "patch_size": {"height": 8, "width": 8}}
_PIXTRAL_PROC = {"patch_size": 8, "spatial_merge_size": 2}
_COHERE2_TEXT = {"model_type": "cohere2", "sliding_window": 64, "layer_types": ["sliding_attention", "full_attention"]}
_AYA_TOKENS = ("<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>", "TILE", "TILE_GLOBAL")
# Ovis2: <image> expands to <IMG_START> <IMG_ATOM>*n <IMG_GRID> [tiles split by <IMG_COL>/<IMG_ROW>]
# <IMG_END>; the five indicators, in this order, get learned embeddings from the visual table.
_OVIS2_INDICATORS = ("<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>")
# Mistral Large 4's YaRN over a 512-token window, scaled to the tiny 1024 positions (factor 2)
_LARGE4_YARN = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 2.0,
    "original_max_position_embeddings": 512,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "attention_factor": 1.0,
}
# LlavaProcessor-style kwargs: 32 px / patch 8 = 16 patches + CLS, CLS dropped ("default")
_LLAVA_PROC = {
    "patch_size": 8,
    "vision_feature_select_strategy": "default",
    "image_token": "<image>",
    "num_additional_image_tokens": 1,
}

FAMILIES: dict[str, Family] = {
    "vipllava": Family(
        "VipLlavaConfig",
        "LlavaProcessor",
        "CLIPImageProcessor",
        "<image>",
        {"image_token": "<image>"},
        lambda tid, v: {
            "text_config": {**_LLAMA, **_text(v)},
            "vision_config": dict(_CLIP_VISION),
            "image_token_index": tid("<image>"),
            "image_seq_length": 16,
            "vision_feature_layer": [-2, -1, 1],
        },
        _CLIP_IMAGE,
        _LLAVA_PROC,
    ),
    "llava_onevision": Family(
        "LlavaOnevisionConfig",
        "LlavaOnevisionProcessor",
        "LlavaOnevisionImageProcessor",
        "<image>",
        {"image_token": "<image>", "video_token": "<video>"},
        lambda tid, v: {
            "text_config": {"model_type": "qwen2", **_text(v)},
            "vision_config": dict(_SIGLIP_VISION),
            "image_token_index": tid("<image>"),
            "video_token_index": tid("<video>"),
            "image_grid_pinpoints": _PINPOINTS,
            "vision_feature_select_strategy": "full",
        },
        {**_SQUARE, "image_grid_pinpoints": _PINPOINTS},
        {"num_image_tokens": 16, "vision_feature_select_strategy": "full"},
        video_processor="LlavaOnevisionVideoProcessor",
        video_processor_kwargs=_SQUARE,
    ),
    "llava_next_video": Family(
        "LlavaNextVideoConfig",
        "LlavaNextVideoProcessor",
        "LlavaNextImageProcessor",
        "<image>",
        {"image_token": "<image>", "video_token": "<video>"},
        lambda tid, v: {
            "text_config": {**_LLAMA, **_text(v)},
            "vision_config": dict(_CLIP_VISION),
            "image_token_index": tid("<image>"),
            "video_token_index": tid("<video>"),
            "image_seq_length": 16,
            "video_seq_length": 4,
            "image_grid_pinpoints": _PINPOINTS,
            "vision_feature_layer": -2,
        },
        {**_CLIP_IMAGE, "image_grid_pinpoints": _PINPOINTS},
        _LLAVA_PROC,
        video_processor="LlavaNextVideoVideoProcessor",
        video_processor_kwargs=_CLIP_IMAGE,
    ),
    "video_llava": Family(
        "VideoLlavaConfig",
        "VideoLlavaProcessor",
        "VideoLlavaImageProcessor",
        "<image>",
        {"image_token": "<image>", "video_token": "<video>"},
        lambda tid, v: {
            "text_config": {**_LLAMA, **_text(v)},
            "vision_config": dict(_CLIP_VISION),
            "image_token_index": tid("<image>"),
            "video_token_index": tid("<video>"),
            # a video frame keeps its CLS: 8 frames x 17 tokens
            "image_seq_length": 16,
            "video_seq_length": 8 * 17,
            "vision_feature_layer": -2,
        },
        _CLIP_IMAGE,
        _LLAVA_PROC,
        video_processor="VideoLlavaVideoProcessor",
        video_processor_kwargs=_CLIP_IMAGE,
    ),
    "mistral3": Family(
        "Mistral3Config",
        "PixtralProcessor",
        "PixtralImageProcessor",
        "[IMG]",
        _PIXTRAL_SPECIALS,
        lambda tid, v: {
            "text_config": {"model_type": "mistral", **_text(v), "sliding_window": None},
            "vision_config": dict(_PIXTRAL_VISION),
            "image_token_index": tid("[IMG]"),
            "spatial_merge_size": 2,
            "vision_feature_layer": -1,
        },
        _PIXTRAL_IMAGE,
        _PIXTRAL_PROC,
        bos="<s>",
    ),
    "aya_vision": Family(
        "AyaVisionConfig",
        "AyaVisionProcessor",
        "GotOcr2ImageProcessor",
        "<image>",
        {"image_token": "<image>"},
        lambda tid, v: {
            "text_config": {**_COHERE2_TEXT, **_text(v)},
            "vision_config": dict(_SIGLIP_VISION),
            "downsample_factor": 2,
            "image_token_index": tid("<|IMG_PATCH|>"),
        },
        {**_SQUARE, "max_patches": 2},  # the processor always tiles (crop_to_patches)
        {"patch_size": 8, "downsample_factor": 2, "img_size": IMAGE_SIZE},
        extra_tokens=_AYA_TOKENS,
    ),
    # GotOcr2Processor always writes 256 <imgpad> per image (a class attribute, not saved), so
    # the SAM-style encoder must end on a 16x16 grid: 128 px / patch 2 = 64, then two stride-2 convs.
    "got_ocr2": Family(
        "GotOcr2Config",
        "GotOcr2Processor",
        "GotOcr2ImageProcessor",
        "<img><imgpad></img>",
        {"image_token": "<imgpad>"},
        lambda tid, v: {
            "text_config": {"model_type": "qwen2", **_text(v)},
            "vision_config": {
                "hidden_size": 32,
                "mlp_dim": 64,
                "output_channels": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": 128,
                "patch_size": 2,
                "window_size": 8,
                "global_attn_indexes": [1],
            },
            "image_token_index": tid("<imgpad>"),
            "image_seq_length": 256,
        },
        {"size": {"height": 128, "width": 128}},
        extra_tokens=("<img>", "</img>"),
    ),
    "lighton_ocr": Family(
        "LightOnOcrConfig",
        "LightOnOcrProcessor",
        "PixtralImageProcessor",
        "[IMG]",
        _PIXTRAL_SPECIALS,
        lambda tid, v: {
            "text_config": {"model_type": "qwen3", **_text(v)},
            "vision_config": dict(_PIXTRAL_VISION),
            "image_token_id": tid("[IMG]"),
            "spatial_merge_size": 2,
        },
        # the image processor resizes to multiples of the merged patch (8 x 2)
        {**_PIXTRAL_IMAGE, "patch_size": {"height": 16, "width": 16}},
        _PIXTRAL_PROC,
    ),
    "cohere2_vision": Family(
        "Cohere2VisionConfig",
        "Cohere2VisionProcessor",
        "Cohere2VisionImageProcessor",
        "<|IMG_PATCH|>",
        {
            "image_token": "<|IMG_PATCH|>",
            "boi_token": "<|START_OF_IMG|>",
            "eoi_token": "<|END_OF_IMG|>",
            "img_line_break_token": "<|IMG_LINE_BREAK|>",
        },
        lambda tid, v: {
            "text_config": {**_COHERE2_TEXT, **_text(v)},
            "vision_config": dict(_SIGLIP_VISION),
            "downsample_factor": 2,
            "alignment_intermediate_size": 128,
            "image_token_id": tid("<|IMG_PATCH|>"),
        },
        # patch_size: tokens a tile side (32 px / patch 8 / downsample 2); tiles of 32 px, at most 2
        {**_SQUARE, "patch_size": 2, "max_patches": 2},
    ),
    # timm's FastViT-MCi3 cut down to one block a stage; it downsamples 64x, so 128 px gives 2x2
    # tokens, and its final conv doubles the last width (32 -> hidden_size 64).
    "fast_vlm": Family(
        "FastVlmConfig",
        "LlavaProcessor",
        "CLIPImageProcessor",
        "<image>",
        {"image_token": "<image>"},
        lambda tid, v: {
            "text_config": {"model_type": "qwen2", **_text(v)},
            "vision_config": {
                "model_type": "timm_wrapper",
                "architecture": "fastvit_mci3",
                "hidden_size": 64,
                "do_pooling": False,
                "model_args": {"inference_mode": True, "layers": [1, 1, 1, 1, 1], "embed_dims": [8, 16, 16, 32, 32]},
            },
            "image_token_index": tid("<image>"),
            "image_seq_length": 4,
        },
        {"size": {"shortest_edge": 128}, "crop_size": {"height": 128, "width": 128}},
        {
            "patch_size": 64,
            "vision_feature_select_strategy": "full",
            "image_token": "<image>",
            "num_additional_image_tokens": 0,
        },
    ),
    "ovis2": Family(
        "Ovis2Config",
        "Ovis2Processor",
        "Ovis2ImageProcessor",
        "<image>",
        {"image_token": "<image>"},
        lambda tid, v: {
            "text_config": {"model_type": "qwen2", **_text(v)},
            "vision_config": {**VISION, "hidden_stride": 2, "vocab_size": 64},
            "image_token_id": tid("<IMG_ATOM>"),
            "visual_indicator_token_ids": [tid(t) for t in _OVIS2_INDICATORS],
            "vocab_size": v,
            "hidden_size": TEXT["hidden_size"],
        },
        {**_SQUARE, "max_patches": 2},
        {"image_seq_length": 4},  # (32 px / patch 8 / hidden_stride 2) ** 2
        extra_tokens=("<IMG_ATOM>", *_OVIS2_INDICATORS),
    ),
    "deepseek_vl": Family(
        "DeepseekVLConfig",
        "DeepseekVLProcessor",
        "DeepseekVLImageProcessor",
        "<image_placeholder>",
        {"image_token": "<image_placeholder>"},
        lambda tid, v: {
            "text_config": {**_LLAMA, **_text(v)},
            "vision_config": dict(_SIGLIP_VISION),
            "image_token_id": tid("<image_placeholder>"),
        },
        {**_SQUARE, "min_size": 8},
        {"num_image_tokens": 16},
        bos="<｜begin▁of▁sentence｜>",
    ),
    # Janus also carries its image-generation half (a VQ-VAE, its embeddings and head): kept tiny;
    # GroupNorm(32) sets the VQ channel floor.
    "janus": Family(
        "JanusConfig",
        "JanusProcessor",
        "JanusImageProcessor",
        "<image_placeholder>",
        {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"},
        lambda tid, v: {
            "text_config": {**_LLAMA, **_text(v)},
            "vision_config": {
                "hidden_size": 32,
                "mlp_ratio": 2,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": IMAGE_SIZE,
                "patch_size": 8,
                "projection_dim": TEXT["hidden_size"],
                "num_image_tokens": 16,
            },
            "vq_config": {
                "embed_dim": 8,
                "num_embeddings": 64,
                "latent_channels": 8,
                "base_channels": 32,
                "channel_multiplier": [1, 1],
                "num_res_blocks": 1,
                "projection_dim": TEXT["hidden_size"],
                "image_token_embed_dim": TEXT["hidden_size"],
            },
            "image_token_id": tid("<image_placeholder>"),
        },
        {**_SQUARE, "min_size": 8},
        {"num_image_tokens": 16},
        bos="<｜begin▁of▁sentence｜>",
    ),
    "qianfan_ocr": Family(
        "QianfanOCRConfig",
        "QianfanOCRProcessor",
        "GotOcr2ImageProcessor",
        "<image>",
        {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"},
        lambda tid, v: {
            "text_config": {"model_type": "qwen3", **_text(v)},
            "vision_config": {**VISION, "image_size": [IMAGE_SIZE, IMAGE_SIZE], "patch_size": [8, 8]},
            "image_token_id": tid("<IMG_CONTEXT>"),
            "image_seq_length": 4,
            "downsample_ratio": 0.5,
        },
        {**_SQUARE, "max_patches": 2},  # the processor always tiles (crop_to_patches)
        {"image_seq_length": 4},
        extra_tokens=("<image>",),
    ),
    # MoE text model with MLA attention and a top-k indexer: 4 routed experts of which 2 are
    # used, layer 0 dense (first_k_dense_replace), latent KV rank 16.
    "mistral_large4": Family(
        "MistralLarge4Config",
        "PixtralProcessor",
        "PixtralImageProcessor",
        "[IMG]",
        _PIXTRAL_SPECIALS,
        lambda tid, v: {
            "text_config": {
                **_text(v),
                "num_key_value_heads": 4,
                "moe_intermediate_size": 32,
                "n_routed_experts": 4,
                "num_experts_per_tok": 2,
                "n_shared_experts": 1,
                "kv_lora_rank": 16,
                "qk_rope_head_dim": 8,
                "qk_nope_head_dim": 8,
                "v_head_dim": 16,
                "index_topk": 64,
                "index_head_dim": 16,
                "index_n_heads": 2,
                "rope_parameters": _LARGE4_YARN,
            },
            "vision_config": {**_PIXTRAL_VISION, "hidden_act": "silu"},
            "image_token_index": tid("[IMG]"),
            "spatial_merge_size": 2,
            "vision_feature_layer": -1,
        },
        _PIXTRAL_IMAGE,
        _PIXTRAL_PROC,
        bos="<s>",
    ),
    # Granite 4 Vision injects image features into several LM layers (deepstack): one vision layer
    # into LM layer 0 and four spatial-offset groups into layers 1-4, so its LM has 5 layers (with 2,
    # the groups would overwrite each other and leave projectors untrained). 5 layers at the shared
    # init range 0.2 amplify a bf16 export's rounding past merge --verify's tolerance, hence 0.05.
    # The window Q-Former takes 2x2 queries per 4x4 window ("2/4": one query per window would get
    # no gradient in its self-attention); its heads are vision hidden // 64, hence hidden 64.
    "granite4_vision": Family(
        "Granite4VisionConfig",
        "Granite4VisionProcessor",
        "LlavaNextImageProcessor",
        "<image>",
        {"image_token": "<image>"},
        lambda tid, v: {
            "text_config": _text(v, num_hidden_layers=5, initializer_range=0.05),
            "vision_config": {**_CLIP_VISION, "hidden_size": 64, "intermediate_size": 128},
            # a dict replaces the class defaults for this sub-config, so restate them
            "qformer_config": {
                "num_hidden_layers": 1,
                "intermediate_size": 128,
                "cross_attention_frequency": 1,
                "use_qformer_text_input": False,
            },
            "image_token_index": tid("<image>"),
            "image_grid_pinpoints": _PINPOINTS,
            "downsample_rate": "2/4",
            "deepstack_layer_map": [[1, 0]],
            "spatial_vision_layer": -1,
            "spatial_target_layers": [1, 2, 3, 4],
        },
        {**_CLIP_IMAGE, "image_grid_pinpoints": _PINPOINTS},
        {**_LLAVA_PROC, "downsample_rate": "2/4"},
    ),
}
