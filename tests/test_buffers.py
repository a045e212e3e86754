"""Totals as published: persistent buffers (stored in the checkpoint beside the parameters) and
layers a config declares that transformers does not build (multi-token prediction).

Fixtures (tests/fixtures/):
- glm-4.5v/config.json: zai-org/GLM-4.5V's config as transformers 5.7 loaded it from the
  released checkpoint (a public model report; the same report lists the checkpoint's 46 shards,
  18,106 tensors and 107,710,933,120 values, `e_score_correction_bias` included).
- qwen3.5-9b/config.json: Qwen3.5-9B's architecture fields as a public loader pins them against the
  released checkpoint (its ModelOpt quantization_config left out).
- qwen3.6-35b-a3b/config.json: a Qwen3.6-35B-A3B release config (model_type qwen3_5_moe) as pinned
  verbatim in a public repository.
Both Qwen configs declare `mtp_num_hidden_layers: 1`; the checkpoints store `mtp.*` tensors."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import ROOT, save_config
from vlmsurgeon.model.inspection import inspect_model, unbuilt_layers

FIXTURES = ROOT / "tests" / "fixtures"
GLM_45V_CHECKPOINT_VALUES = 107_710_933_120  # sum of the released checkpoint's tensor sizes


def linear(i: int, o: int, bias: bool = False) -> int:
    return i * o + (o if bias else 0)


def glm_45v_by_hand() -> dict[str, int]:
    """From the fixture's config: vision 1536 wide, 24 blocks, MLP to 4096; LM 4096 wide, 46 layers
    (the first dense, 45 MoE with 128 routed experts + 1 shared), 96 heads / 8 KV of 128."""
    vh, depth, out, vi, patch, tp, image = 1536, 24, 4096, 10944, 14, 2, 336
    block = 2 * vh + linear(vh, 3 * vh) + linear(vh, vh) + 3 * linear(vh, out)  # norms, qkv, proj, MLP
    vision = (
        linear(3 * tp * patch * patch, vh, bias=True)  # patch_embed Conv3d
        + (image // patch) ** 2 * vh  # position_embedding
        + depth * block
        + vh  # post_conv_layernorm
        + linear(vh * 2 * 2, out, bias=True)  # downsample Conv2d 2x2
        + vh
    )  # post_layernorm
    merger = linear(out, out) + 2 * out + 2 * linear(out, vi) + linear(vi, out)  # proj, LayerNorm, MLP
    h, layers, dense, heads, kv, hd, ti, vocab = 4096, 46, 1, 96, 8, 128, 10944, 151552
    experts, moe_i, shared = 128, 1408, 1
    attn = linear(h, heads * hd, True) + 2 * linear(h, kv * hd, True) + linear(heads * hd, h)
    moe_mlp = experts * 3 * h * moe_i + experts * h + shared * 3 * h * moe_i  # experts, router, shared
    lm = vocab * h + layers * (attn + 2 * h) + dense * 3 * h * ti + (layers - dense) * moe_mlp + h
    return {
        "vision": vision,
        "merger": merger,
        "lm": lm,
        "head": vocab * h,
        "buffers": (layers - dense) * experts,
    }  # e_score_correction_bias: one per routed expert


def test_glm_45v_buffers_and_total_match_the_released_checkpoint():
    by_hand = glm_45v_by_hand()
    assert by_hand["buffers"] == 45 * 128 == 5_760
    r = inspect_model(str(FIXTURES / "glm-4.5v")).to_json()
    for comp in ("vision", "merger", "lm", "head"):
        assert r["components"][comp]["params"] == by_hand[comp], comp
    assert (by_hand["vision"], by_hand["merger"], by_hand["head"]) == (707_416_576, 151_265_280, 620_756_992)
    assert r["total_params"] == 107_710_927_360 == sum(by_hand[c] for c in ("vision", "merger", "lm", "head"))
    assert r["buffers"] == {"total": 5_760, "components": {"lm": 5_760}}
    assert r["total_params"] + r["buffers"]["total"] == GLM_45V_CHECKPOINT_VALUES
    assert r["other"] == 0 and r["notes"] == []


def test_glm_45v_table_says_buffers_and_llava_says_nothing(cli, tmp_path):
    code, out, err = cli("inspect", FIXTURES / "glm-4.5v", "--depth", "1")
    assert code == 0, err
    words = " ".join(out.split())
    assert (
        "persistent buffers: 5,760 (lm 5,760), stored in the checkpoint beside the parameters: "
        "107,710,933,120 values in all"
    ) in words
    code, out, _ = cli("inspect", save_config("llava", tmp_path), "--depth", "1")
    assert code == 0 and "persistent buffers" not in out


def test_saved_checkpoint_holds_params_plus_buffers(tmp_path):
    """The peer: what transformers' own save_pretrained writes, for a small GLM-4.5V."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForImageTextToText

    cfg = json.loads((FIXTURES / "glm-4.5v" / "config.json").read_text())
    cfg["text_config"].update(
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=128,
        n_routed_experts=8,
        num_experts_per_tok=2,
        pad_token_id=0,
    )
    cfg["vision_config"].update(
        hidden_size=32, depth=2, num_heads=2, intermediate_size=96, out_hidden_size=64, image_size=28
    )
    config = AutoConfig.for_model("glm4v_moe", **{k: v for k, v in cfg.items() if k != "model_type"})
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(config).save_pretrained(tmp_path)
    stored = 0
    for shard in tmp_path.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            stored += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    r = inspect_model(str(tmp_path))
    assert r.buffers == 2 * 8  # two MoE layers x 8 experts
    assert r.total_params + r.buffers == stored
    assert r.checkpoint.checked and not r.checkpoint.missing and not r.checkpoint.unexpected


def test_gemma4_layer_scalar_is_a_buffer_per_layer(tmp_path):
    """Gemma 4 stores one `layer_scalar` value per decoder layer (its default config: text only)."""
    from transformers import AutoConfig

    r = inspect_model(str(save_config("gemma4", tmp_path)))
    scalars = [b for n in r.tree.walk() for b in n.buffers if b.name.endswith(".layer_scalar")]
    assert len(scalars) == AutoConfig.for_model("gemma4").text_config.num_hidden_layers
    assert r.buffers == r.buffer_components["lm"] == len(scalars)


def test_only_persistent_buffers_count_and_a_shared_one_once():
    import torch
    from torch import nn

    from vlmsurgeon.model.components import classify
    from vlmsurgeon.model.report import breakdown
    from vlmsurgeon.model.tree import from_module

    class Router(nn.Module):
        def __init__(self, shared: torch.Tensor) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(4, 8))
            self.register_buffer("bias_correction", torch.zeros(4))
            self.register_buffer("inv_freq", torch.zeros(16), persistent=False)
            self.register_buffer("table", shared)

    shared = torch.zeros(10)
    model = nn.Module()
    model.layers = nn.ModuleList([Router(shared), Router(shared)])
    assert sum(t.numel() for k, t in model.state_dict().items() if "weight" not in k) == 2 * 4 + 2 * 10
    tree = classify(from_module(model), None)
    r = breakdown(tree, model="m", model_type="x", source="config")
    assert r.total_params == 2 * 32 and r.buffers == 2 * 4 + 10  # the shared table stored once
    assert r.buffer_components == {"lm": 18}


@pytest.mark.parametrize("fixture", ["qwen3.5-9b", "qwen3.6-35b-a3b"])
def test_qwen35_mtp_layers_are_named(fixture, cli):
    note = (
        "the config declares 1 multi-token-prediction layer (text_config.mtp_num_hidden_layers: 1) that "
        "transformers does not build: the checkpoint's mtp.* tensors are not counted here"
    )
    code, out, err = cli("inspect", FIXTURES / fixture, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["model_type"] in ("qwen3_5", "qwen3_5_moe")
    assert data["notes"] == [note]
    assert data["buffers"] == {"total": 0, "components": {}}
    code, out, _ = cli("inspect", FIXTURES / fixture, "--depth", "1")
    assert code == 0 and f"note: {note}" in " ".join(out.split())


def test_declared_layers_that_are_built_get_no_note():
    mtp = {"text_config": {"num_hidden_layers": 2, "mtp_num_hidden_layers": 1}}
    assert unbuilt_layers(mtp, ["model.language_model.layers.1"])
    assert not unbuilt_layers(mtp, ["model.language_model.layers.1", "mtp", "mtp.layers.0"])
    nextn = {"num_hidden_layers": 2, "num_nextn_predict_layers": 1}
    [note] = unbuilt_layers(nextn, ["model.layers.0", "model.layers.1"])
    assert "(num_nextn_predict_layers: 1)" in note and "layers.2+" in note
    assert not unbuilt_layers(nextn, ["model.layers.0", "model.layers.1", "model.layers.2"])
    assert not unbuilt_layers({"text_config": {"mtp_num_hidden_layers": 0}}, [])


def test_header_mode_cannot_tell_buffers_from_parameters(tmp_path):
    from tests.test_header_mode import make_phi3v

    expected = make_phi3v(tmp_path / "phi3v")
    r = inspect_model(str(tmp_path / "phi3v"))
    assert r.source == "safetensors-headers" and r.total_params == sum(expected.values())
    data = r.to_json()
    assert data["buffers"] is None  # every stored tensor is already in total_params
