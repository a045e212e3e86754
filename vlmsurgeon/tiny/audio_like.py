"""Tiny-model table, continued: the families with an audio tower beside the vision tower (Qwen-Omni
thinkers, dots3 note). Shared dims are in base.py, the Qwen3-VL pieces they reuse in qwen_like.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import _QWEN_MROPE, _QWEN_PATCH, Family, _text
from .qwen_like import _MOE, _ONE_FRAME, _QWEN2_5_VISION, _QWEN3_VISION, _ids

# Qwen-Omni thinkers (the text-out half; AutoModelForImageTextToText loads them): a Whisper-style
# audio tower beside the vision tower, the processor's own tokens, and a Whisper feature extractor.
_OMNI_SPECIALS = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}
_OMNI_AUDIO = {
    "num_mel_bins": 128,
    "encoder_layers": 2,
    "encoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "d_model": 32,
    "output_dim": 64,
}


def _whisper(_tokenizer: Any) -> Any:
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16_000)


def _omni(
    config_class: str,
    processor: str,
    text: dict[str, Any],
    vision: dict[str, Any],
    audio: dict[str, Any],
    ids: Callable[[Callable[[str], int]], dict[str, int]],
) -> Family:
    return Family(
        config_class,
        processor,
        "Qwen2VLImageProcessor",
        "<|vision_bos|><|IMAGE|><|vision_eos|>",
        _OMNI_SPECIALS,
        lambda tid, v: {
            "text_config": _text(v, rope_parameters=_QWEN_MROPE, **text, **_ids(tid)),
            "vision_config": dict(vision),
            "audio_config": {**_OMNI_AUDIO, **audio},
            "audio_start_token_id": tid("<|audio_bos|>"),
            "user_token_id": tid("<|im_start|>"),
            **ids(tid),
        },
        _QWEN_PATCH,
        {"feature_extractor": _whisper},
        video_processor="Qwen2VLVideoProcessor",
        video_processor_kwargs=_QWEN_PATCH,
    )


def _dots3_audio(_tokenizer: Any) -> Any:
    from transformers import Dots3NoteFeatureExtractor

    return Dots3NoteFeatureExtractor()


FAMILIES: dict[str, Family] = {
    "qwen2_5_omni_thinker": _omni(
        "Qwen2_5OmniThinkerConfig",
        "Qwen2_5OmniProcessor",
        {},
        {k: v for k, v in _QWEN2_5_VISION.items() if k != "model_type"},
        {},
        lambda tid: {
            "image_token_index": tid("<|IMAGE|>"),
            "video_token_index": tid("<|VIDEO|>"),
            "audio_token_index": tid("<|AUDIO|>"),
            "audio_end_token_id": tid("<|audio_eos|>"),
            "vision_start_token_id": tid("<|vision_bos|>"),
        },
    ),
    "qwen3_omni_moe_thinker": _omni(
        "Qwen3OmniMoeThinkerConfig",
        "Qwen3OmniMoeProcessor",
        _MOE,
        {**_QWEN3_VISION, "deepstack_visual_indexes": [0]},
        {"downsample_hidden_size": 8},
        lambda tid: {
            "image_token_id": tid("<|IMAGE|>"),
            "video_token_id": tid("<|VIDEO|>"),
            "audio_token_id": tid("<|AUDIO|>"),
            "vision_start_token_id": tid("<|vision_bos|>"),
        },
    ),
    # dots3 note: DeepSeek-style MLA LM with a sparse-attention indexer (layer 0 dense, layer 1 MoE
    # + shared expert), a vision tower whose layer 1 is MoE, and an audio tower; the processor's
    # tokens are fixed (<|imgpad|>, <|video_pad|>, <|audio_comp_pad|>). Every token goes to all 4
    # text experts: with top-2 the random router flips choices under a bf16 export's rounding and
    # the logits jump past `merge --verify`'s tolerance (the routing path is exercised either way).
    "dots3_note": Family(
        "Dots3NoteConfig",
        "Dots3NoteProcessor",
        "Qwen2VLImageProcessor",
        "<|img|><|imgpad|><|endofimg|>",
        {},
        lambda tid, v: {
            "text_config": _text(
                v,
                num_key_value_heads=4,
                q_lora_rank=32,
                kv_lora_rank=16,
                qk_rope_head_dim=8,
                qk_nope_head_dim=8,
                v_head_dim=16,
                index_head_dim=16,
                index_n_heads=4,
                n_routed_experts=4,
                n_shared_experts=1,
                num_experts_per_tok=4,
                moe_intermediate_size=32,
                shared_experts_intermediate_size=32,
                first_k_dense_replace=1,
                **_ids(tid),
            ),
            "vision_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "patch_size": 4,
                "spatial_merge_size": 2,
                "pyramid_num_routed": [-1, 4],
                "moe_intermediate_size": 32,
                "adapter_in_dim": 32,
                "adapter_out_dim": 64,
            },
            "audio_config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "downsample_hidden_size": 8,
                "adapter_input_size": 32,
                "adapter_out_dim": 64,
            },
            "image_token_id": tid("<|imgpad|>"),
            "video_token_id": tid("<|video_pad|>"),
            "audio_token_id": tid("<|audio_comp_pad|>"),
        },
        _ONE_FRAME,
        {"feature_extractor": _dots3_audio},
        video_processor="Qwen3VLVideoProcessor",
        video_processor_kwargs=_ONE_FRAME,
        video_placeholder="<|img|><|video_pad|><|endofimg|>",
        extra_tokens=("<|img|>", "<|imgpad|>", "<|endofimg|>", "<|video_pad|>", "<|audio_comp_pad|>"),
    ),
}
