"""Tiny-model table, continued (see base.py for the shared dims and the Family fields)."""

from __future__ import annotations

from .base import _CLIP_IMAGE, _SQUARE, IMAGE_SIZE, TEXT, VISION, Family, _text

_LONGEST = {"size": {"longest_edge": IMAGE_SIZE}, "max_image_size": {"longest_edge": IMAGE_SIZE}}

# Chameleon's VQ codes enter the text as BPE tokens named IMGIMG<code, digits as A-J>Z.
_CHAMELEON_CODES = tuple("IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(i)) + "Z" for i in range(16))

_EMU3_CODES = tuple(f"<|visual token {i:06d}|>" for i in range(16))

# MiniCPM-V 4.6: Qwen3.5's text model (one Gated-DeltaNet layer, one full-attention layer; the
# larger norm eps keeps a bf16 export within `merge --verify`'s tolerance, as in tiny_qwen_like).
_MINICPM_SPECIALS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "image_start_token": "<image>",
    "image_end_token": "</image>",
    "slice_start_token": "<slice>",
    "slice_end_token": "</slice>",
    "image_id_start_token": "<image_id>",
    "image_id_end_token": "</image_id>",
}
# 64 pixels a side: 8x8 patches, merged 16x (in the vision tower, then the merger) to 4 tokens.
_MINICPM_IMAGE = {"scale_resolution": 64, "patch_size": 8, "max_slice_nums": 1, "slice_mode": False}


FAMILIES: dict[str, Family] = {
    "smolvlm": Family(
        "SmolVLMConfig",
        "SmolVLMProcessor",
        "SmolVLMImageProcessor",
        "<image>",
        {
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
        lambda tid, v: {
            "text_config": {"model_type": "llama", **_text(v)},
            "vision_config": dict(VISION),
            "scale_factor": 2,
            "image_token_id": tid("<image>"),
        },
        {**_LONGEST, "do_image_splitting": False},
        {"image_seq_len": 4},
        video_processor="SmolVLMVideoProcessor",
        video_processor_kwargs=_LONGEST,
    ),
    "idefics2": Family(
        "Idefics2Config",
        "Idefics2Processor",
        "Idefics2ImageProcessor",
        "<image>",
        {"image_token": "<image>", "image_boundary_token": "<fake_token_around_image>"},
        lambda tid, v: {
            "text_config": {"model_type": "mistral", **_text(v)},
            "vision_config": dict(VISION),
            "perceiver_config": {
                "hidden_size": 64,
                "resampler_n_latents": 4,
                "resampler_depth": 1,
                "resampler_n_heads": 4,
                "resampler_head_dim": 16,
                "num_key_value_heads": 2,
            },
            "image_token_id": tid("<image>"),
        },
        {"size": {"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE}, "do_image_splitting": False},
        {"image_seq_len": 4},
        extra_tokens=("<end_of_utterance>",),
    ),
    # Aria's processor pins images to 490 or 980 pixels a side: a 70-pixel patch keeps it tiny.
    "aria": Family(
        "AriaConfig",
        "AriaProcessor",
        "AriaImageProcessor",
        "<|img|>",
        {"image_token": "<|img|>"},
        lambda tid, v: {
            "text_config": {**_text(v), "moe_num_experts": 2, "moe_topk": 1, "moe_num_shared_experts": 1},
            "vision_config": {**VISION, "image_size": 980, "patch_size": 70},
            "projector_patch_to_query_dict": {196: 4},
            "image_token_index": tid("<|img|>"),
        },
        {"max_image_size": 980, "min_image_size": 336},
        {"size_conversion": {490: 4, 980: 4}},
    ),
    # BLIP-2 and InstructBLIP prepend the query tokens themselves: the template writes nothing.
    "blip-2": Family(
        "Blip2Config",
        "Blip2Processor",
        "BlipImageProcessor",
        "",
        {},
        lambda tid, v: {
            "text_config": {
                "model_type": "opt",
                "vocab_size": v,
                "hidden_size": 64,
                "ffn_dim": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "word_embed_proj_dim": 64,
                "max_position_embeddings": 1024,
                "init_std": 0.2,
            },
            "vision_config": dict(VISION),
            "qformer_config": {
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 64,
                "encoder_hidden_size": 32,
            },
            "num_query_tokens": 4,
            "image_text_hidden_size": 32,
            "image_token_index": tid("<image>"),
        },
        _SQUARE,
        {"num_query_tokens": 4},
    ),
    # InstructBLIP's Q-Former reads the instruction through a tokenizer of its own: here the same.
    "instructblip": Family(
        "InstructBlipConfig",
        "InstructBlipProcessor",
        "BlipImageProcessor",
        "",
        {},
        lambda tid, v: {
            "text_config": {"model_type": "llama", **_text(v)},
            "vision_config": dict(VISION),
            "qformer_config": {
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 64,
                "encoder_hidden_size": 32,
                "vocab_size": v,
                "max_position_embeddings": 1024,
            },
            "num_query_tokens": 4,
            "image_token_index": tid("<image>"),
        },
        _SQUARE,
        {"num_query_tokens": 4, "qformer_tokenizer": lambda tokenizer: tokenizer},
    ),
    "chameleon": Family(
        "ChameleonConfig",
        "ChameleonProcessor",
        "ChameleonImageProcessor",
        "<image>",
        {"image_token": "<image>", "boi_token": "<racm3:break>", "eoi_token": "<eoss>", "sep_token": "<reserved08706>"},
        lambda tid, v: {
            **_text(v),
            "vq_config": {
                "embed_dim": 8,
                "num_embeddings": 16,
                "latent_channels": 8,
                "resolution": IMAGE_SIZE,
                "base_channels": 32,
                "channel_multiplier": [1, 1, 1, 1],
                "num_res_blocks": 1,
            },
            "vocabulary_map": {t: tid(t) for t in ("<image>", *_CHAMELEON_CODES)},
        },
        _CLIP_IMAGE,
        {"image_seq_length": 16},
        extra_tokens=_CHAMELEON_CODES,
    ),
    # Emu3's processor writes the BOS itself: the tokenizer has one, the template does not.
    "emu3": Family(
        "Emu3Config",
        "Emu3Processor",
        "Emu3ImageProcessor",
        "<image>",
        {
            "image_token": "<image>",
            "boi_token": "<|image start|>",
            "eoi_token": "<|image end|>",
            "image_wrapper_token": "<|image token|>",
            "eof_token": "<|extra_201|>",
            "bos_token": "<|extra_203|>",
        },
        lambda tid, v: {
            "text_config": _text(v),
            "vq_config": {
                "codebook_size": 16,
                "embed_dim": 8,
                "latent_channels": 8,
                "base_channels": 32,
                "channel_multiplier": [1, 1, 1, 1],
                "num_res_blocks": 1,
                "attn_resolutions": [],
                "hidden_size": 32,
                "temporal_downsample_factor": 4,
            },
            "vocabulary_map": {t: tid(t) for t in ("<image>", "<|extra_200|>", *_EMU3_CODES)},
        },
        {"min_pixels": IMAGE_SIZE * IMAGE_SIZE, "max_pixels": IMAGE_SIZE * IMAGE_SIZE},
        extra_tokens=("<|extra_200|>", *_EMU3_CODES),
    ),
    # Kosmos-2's processor puts the image first and writes the BOS; its 64 image positions take
    # the ids after <unk>.
    "kosmos-2": Family(
        "Kosmos2Config",
        "Kosmos2Processor",
        "CLIPImageProcessor",
        "",
        {"unk_token": "<unk>", "bos_token": "<s>"},
        lambda tid, v: {
            "text_config": {
                "vocab_size": v,
                "embed_dim": 64,
                "layers": 2,
                "attention_heads": 4,
                "ffn_dim": 128,
                "max_position_embeddings": 1024,
                "init_std": 0.2,
            },
            "vision_config": dict(VISION),
            "latent_query_num": 64,
        },
        _CLIP_IMAGE,
    ),
    # IDEFICS puts the image first and writes the BOS itself; cross-attention every layer. Its
    # EOS ends the document: text after it no longer sees the image, so turns end otherwise.
    "idefics": Family(
        "IdeficsConfig",
        "IdeficsProcessor",
        "IdeficsImageProcessor",
        "",
        {"bos_token": "<s>"},
        lambda tid, v: {
            **{
                k: TEXT[k]
                for k in (
                    "hidden_size",
                    "intermediate_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "max_position_embeddings",
                    "initializer_range",
                )
            },
            "vocab_size": v,
            "cross_layer_interval": 1,
            # open gates, as in a trained checkpoint (zero gates stop the cross-attention's
            # gradient); per-channel, as "normal" with the scalar ("float") gate fails to build
            "alpha_initializer": "normal",
            "alpha_type": "vector",
            "alphas_initializer_range": 0.5,
            "vision_config": {
                "embed_dim": 32,
                "image_size": IMAGE_SIZE,
                "patch_size": 8,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
            },
        },
        {**_SQUARE, "image_size": IMAGE_SIZE},
        extra_tokens=("<fake_token_around_image>", "<image>"),
        eos="</s>",
        turn=("<|im_start|>", "<end_of_utterance>"),
    ),
    # Perception LM's vision tower is timm's PE ViT, shrunk through model_args.
    "perception_lm": Family(
        "PerceptionLMConfig",
        "PerceptionLMProcessor",
        "PerceptionLMImageProcessor",
        "<|image|>",
        {"image_token": "<|image|>", "video_token": "<|video|>"},
        lambda tid, v: {
            "text_config": {"model_type": "llama", **_text(v)},
            "vision_config": {
                "model_type": "timm_wrapper",
                "architecture": "vit_pe_core_large_patch14_336",
                "do_pooling": False,
                "model_args": {
                    "embed_dim": 32,
                    "depth": 2,
                    "num_heads": 4,
                    "img_size": [32, 32],
                    "patch_size": 8,
                    "global_pool": "",
                    "use_post_transformer_norm": False,
                    "init_values": 0.1,
                    "ref_feat_shape": [4, 4],
                },
            },
            "projector_pooling_ratio": 2,
            "image_token_id": tid("<|image|>"),
            "video_token_id": tid("<|video|>"),
        },
        {"tile_size": IMAGE_SIZE, "max_num_tiles": 1, "vision_input_type": "vanilla", **_SQUARE},
        {"patch_size": 8, "pooling_ratio": 2},
        video_processor="PerceptionLMVideoProcessor",
        video_processor_kwargs=_SQUARE,
    ),
    "minicpmv4_6": Family(
        "MiniCPMV4_6Config",
        "MiniCPMV4_6Processor",
        "MiniCPMV4_6ImageProcessor",
        "<|image_pad|>",
        _MINICPM_SPECIALS,
        lambda tid, v: {
            "text_config": {
                "model_type": "qwen3_5_text",
                **_text(v),
                "rms_norm_eps": 1e-2,
                "layer_types": ["linear_attention", "full_attention"],
                "linear_conv_kernel_dim": 4,
                "linear_key_head_dim": 16,
                "linear_value_head_dim": 16,
                "linear_num_key_heads": 2,
                "linear_num_value_heads": 4,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 1_000_000.0,
                    "partial_rotary_factor": 0.5,
                    "mrope_section": [2, 1, 1],
                },
            },
            "vision_config": {**VISION, "image_size": 64, "insert_layer_id": 0},
            "insert_layer_id": 0,
            "image_size": 64,
            "image_token_id": tid("<|image_pad|>"),
            "video_token_id": tid("<|video_pad|>"),
        },
        _MINICPM_IMAGE,
        video_processor="MiniCPMV4_6VideoProcessor",
        video_processor_kwargs=_MINICPM_IMAGE,
    ),
    # DeepSeek-VL hybrid: SigLIP at 32 pixels plus a SAM tower at 64, aligned to 4x4 = 16 tokens.
    "deepseek_vl_hybrid": Family(
        "DeepseekVLHybridConfig",
        "DeepseekVLHybridProcessor",
        "DeepseekVLHybridImageProcessor",
        "<image_placeholder>",
        {"image_token": "<image_placeholder>"},
        lambda tid, v: {
            "text_config": {"model_type": "llama", **_text(v)},
            "vision_config": {"model_type": "siglip_vision_model", **VISION},
            "high_res_vision_config": {
                "model_type": "sam_vision_model",
                "hidden_size": 32,
                "output_channels": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": 64,
                "patch_size": 8,
                "window_size": 4,
                "global_attn_indexes": [1],
                "mlp_dim": 64,
            },
            "image_token_id": tid("<image_placeholder>"),
        },
        {**_SQUARE, "high_res_size": {"height": 64, "width": 64}},
        {"num_image_tokens": 16},
    ),
}
