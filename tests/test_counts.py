"""Exact counts: each component checked against arithmetic done by hand from the config."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ROOT, save_config
from vlmsurgeon.model.inspection import inspect_model


def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def layernorm(h: int) -> int:
    return 2 * h


def test_llava_1_5_7b_default_config(tmp_path: Path):
    """transformers' default LlavaConfig is LLaVA-1.5-7B: CLIP ViT-L/14-336 + Llama-2-7B."""
    h, i, layers, patch, image = 1024, 4096, 24, 14, 336
    positions = (image // patch) ** 2 + 1  # 576 patches + CLS
    clip_layer = 4 * linear(h, h) + 2 * layernorm(h) + linear(h, i) + linear(i, h)
    vision = (
        h  # class_embedding
        + 3 * patch * patch * h  # patch_embedding, no bias
        + positions * h  # position_embedding
        + layernorm(h)  # pre_layrnorm
        + layers * clip_layer
        + layernorm(h)
    )  # post_layernorm
    th, ti, tl, vocab = 4096, 11008, 32, 32000
    merger = linear(h, th) + linear(th, th)
    llama_layer = 4 * th * th + 3 * th * ti + 2 * th
    embeddings = vocab * th
    lm = embeddings + tl * llama_layer + th
    head = vocab * th

    r = inspect_model(str(save_config("llava", tmp_path))).to_json()
    c = r["components"]
    assert (vision, merger, lm, head) == (303_507_456, 20_979_712, 6_607_343_616, 131_072_000)
    assert c["vision"]["params"] == vision
    assert c["merger"]["params"] == merger
    assert c["lm"]["params"] == lm and c["lm"]["embeddings"] == embeddings
    assert c["head"]["params"] == head and c["head"]["tied_to"] is None
    assert r["total_params"] == vision + merger + lm + head == 7_062_902_784
    assert c["vision"]["roots"] == ["model.vision_tower"]
    assert c["merger"]["roots"] == ["model.multi_modal_projector"]


def test_qwen3_vl_235b_a22b_matches_seed_table():
    """Seed 001's table for Qwen3-VL-235B-A22B-Instruct: ViT (with mergers) 576.39M,
    mergers 160.50M, LM without head (and without embeddings) 233.85B, lm_head 622.33M."""
    vh, vi, depth, patch, tpatch, npos, out, merge = 1152, 4304, 27, 16, 2, 2304, 4096, 2
    block = 2 * layernorm(vh) + linear(vh, 3 * vh) + linear(vh, vh) + linear(vh, vi) + linear(vi, vh)
    vision = (3 * tpatch * patch * patch * vh + vh) + npos * vh + depth * block
    merged = vh * merge * merge
    merger = (
        layernorm(vh)
        + linear(merged, merged)
        + linear(merged, out)  # main merger
        + 3 * (layernorm(merged) + linear(merged, merged) + linear(merged, out))
    )  # deepstack
    h, layers, heads, kv, hd, experts, moe_i, vocab = 4096, 94, 64, 4, 128, 128, 1536, 151936
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 2 * hd  # q,k,v,o + q/k norms
    moe = h * experts + experts * h * 2 * moe_i + experts * moe_i * h  # router + gate_up + down
    decoder = layers * (attn + moe + 2 * h) + h
    embeddings = vocab * h
    head = vocab * h

    r = inspect_model(str(ROOT / "examples" / "qwen3-vl-235b-a22b")).to_json()
    c = r["components"]
    assert c["vision"]["params"] == vision == 415_891_440
    assert c["merger"]["params"] == merger == 160_496_896
    assert c["lm"]["params"] == embeddings + decoder and c["lm"]["embeddings"] == embeddings
    assert c["head"]["params"] == head == 622_329_856
    assert round((vision + merger) / 1e6, 2) == 576.39
    assert round(merger / 1e6, 2) == 160.50
    assert round(decoder / 1e9, 2) == 233.85
    assert round(head / 1e6, 2) == 622.33
    assert r["other"] == 0 and r["total_params"] > 100e9
    assert sorted(c["merger"]["roots"]) == ["model.visual.deepstack_merger_list", "model.visual.merger"]


def test_paligemma_default_config_tied_head(tmp_path: Path):
    """PaliGemma-3B: SigLIP-So400m/14 at 224 (no pooling head) + Gemma-2B, head tied."""
    h, i, layers, patch, image = 1152, 4096, 27, 14, 224
    siglip_layer = 4 * linear(h, h) + 2 * layernorm(h) + linear(h, i) + linear(i, h)
    vision = (3 * patch * patch * h + h) + (image // patch) ** 2 * h + layers * siglip_layer + layernorm(h)
    th, ti, tl, heads, kv, hd, vocab = 2048, 16384, 18, 8, 1, 256, 257152
    merger = linear(h, th)
    gemma_layer = th * heads * hd + 2 * th * kv * hd + heads * hd * th + 3 * th * ti + 2 * th
    embeddings = vocab * th
    lm = embeddings + tl * gemma_layer + th

    r = inspect_model(str(save_config("paligemma", tmp_path))).to_json()
    c = r["components"]
    assert c["vision"]["params"] == vision
    assert c["merger"]["params"] == merger
    assert c["lm"]["params"] == lm and c["lm"]["embeddings"] == embeddings
    assert c["head"]["params"] == 0
    assert c["head"]["tied_to"] == "model.language_model.embed_tokens.weight"
    assert r["total_params"] == vision + merger + lm
