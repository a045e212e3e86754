"""Which families `finetune --packing` packs, and why the others cannot: known from the model type
before any weight loads (finetune refuses, plan notes, `tiny --list` shows it)."""

from __future__ import annotations

# Families whose packed rows give each row's logits as when it runs alone, checked on tiny models
# (tests/test_packing.py; `make sweep` runs every family here) with transformers 5.24. How each
# keeps rows apart: positions restarting at every row, from which transformers builds a mask that
# keeps rows apart (masking_utils.find_packed_sequence_indices, only when no attention mask is
# passed). "positions": one position per token; "rope": M-RoPE, the family's get_rope_index run
# per row, and the text positions the mask reads prepended (position_ids of shape (4, batch, seq)).
PACKS: dict[str, str] = {
    **dict.fromkeys(
        (
            "qwen2_vl",
            "qwen2_5_vl",
            "qwen3_vl",
            "qwen3_vl_moe",
            "glm4v",
            "glm4v_moe",
            "glm46v",
            "paddleocr_vl",
            "ernie4_5_vl_moe",
            "qwen2_5_omni_thinker",
            "qwen3_omni_moe_thinker",
        ),
        "rope",
    ),
    **dict.fromkeys(
        (
            "llava",
            "llava_next",
            "llava_onevision",
            "llava_next_video",
            "video_llava",
            "vipllava",
            "fast_vlm",
            "idefics2",
            "idefics3",
            "smolvlm",
            "paligemma",
            "internvl",
            "mistral3",
            "aya_vision",
            "got_ocr2",
            "lighton_ocr",
            "cohere2_vision",
            "ovis2",
            "deepseek_vl",
            "deepseek_vl_hybrid",
            "janus",
            "qianfan_ocr",
            "granite4_vision",
            "exaone4_5",
            "hyperclovax_vision_v2",
            "video_llama_3",
            "kimi_k25",
            "dots3_note",
            "aria",
            "chameleon",
            "emu3",
            "perception_lm",
        ),
        "positions",
    ),
}
_CROSS = "its text attends to the images through cross-attention layers, which take no per-row mask"
_STATE = "its {} layers carry state from one row into the next"
# Why a family cannot keep packed rows apart (found on tiny models); any other family is refused as
# unchecked.
CANNOT: dict[str, str] = {
    "mllama": _CROSS,
    "idefics": _CROSS,
    "gemma3": (
        "transformers' packed mask looks up its bidirectional image blocks by position within a row, "
        "so one row's image tokens attend to another row's"
    ),
    "qwen3_5": _STATE.format("linear-attention (Gated DeltaNet)"),
    "qwen3_5_moe": _STATE.format("linear-attention (Gated DeltaNet)"),
    "lfm2_vl": _STATE.format("short-convolution"),
    "lfm3_vl": _STATE.format("short-convolution"),
    "mistral_large4": "its sparse attention picks the top-k keys over the whole sequence, across rows",
    "hunyuan_vl": "its rope takes position ids of its own shape (XD-RoPE), which packing does not build",
    "blip-2": "its forward takes no position ids, from which transformers tells packed rows apart",
    "instructblip": "its Q-Former reads one instruction per sequence, not one per packed row",
    "kosmos-2": "its text model builds its own mask over the whole sequence, without packed-row detection",
    "minicpmv4_6": "a packed row's logits differ from the row run alone (checked on a tiny model)",
}


def packing_kind(model_type: str) -> str | None:
    """How this family's packed rows are positioned ("positions" or "rope"); None if it cannot pack."""
    return PACKS.get(model_type)


def packing_blocker(model_type: str) -> str | None:
    """Why this family's rows cannot be packed (None: they can)."""
    if model_type in PACKS:
        return None
    if model_type in CANNOT:
        return CANNOT[model_type]
    return f"packing is not checked for {model_type} (`vlmsurgeon tiny --list` shows the families that pack)"
