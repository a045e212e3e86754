"""The gradient-flow probe: a narrow replica keeps every parameter name, the probe names exactly
the trainable parameters that get no gradient, and `finetune` sees the same on its first step."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, save_config
from vlmsurgeon.model.inspection import meta_model
from vlmsurgeon.plan.plan import resolve_preset
from vlmsurgeon.plan.probe import display_name, group_names, probe_model
from vlmsurgeon.plan.replica import narrow_config
from vlmsurgeon.recipe.freeze import classified_tree, present_components

MOE_235B = ROOT / "examples" / "qwen3-vl-235b-a22b"


def _probe(reference, preset=None, freeze=None):
    source, full = meta_model(str(reference))
    chosen = resolve_preset(preset, freeze, present_components(classified_tree(full, source.model_type)))
    return full, probe_model(source, full, chosen)


def _last_layer_and_post_norm(full, tower: str) -> set[str]:
    """By hand: every parameter of the vision encoder's last layer, and the post-layernorm."""
    layers = full.config.vision_config.num_hidden_layers
    last = f"{tower}.encoder.layers.{layers - 1}."
    return {n for n, _ in full.named_parameters() if n.startswith(last)} | {
        f"{tower}.post_layernorm.weight",
        f"{tower}.post_layernorm.bias",
    }


def test_llava_tiny_probe_names_the_last_vision_layer_and_post_layernorm(tiny_models, cli):
    code, out, err = cli("plan", tiny_models("llava"), "--freeze", "lm", "--probe", "--json")
    assert code == 0, err
    data = json.loads(out)
    source, full = meta_model(str(tiny_models("llava")))
    expected = _last_layer_and_post_norm(full, "model.vision_tower")
    assert len(expected) == 18
    assert set(data["components"]["vision"]["dead_trainable"]) == expected
    assert data["components"]["vision"]["dead_trainable_count"] == 18
    for comp in ("merger", "lm", "head"):
        assert data["components"][comp]["dead_trainable"] == [], comp
    assert data["probe"]["dead_trainable_count"] == 18
    assert data["probe"]["dead_trainable_groups"] == [
        "model.vision_tower.encoder.layers.1.*",
        "model.vision_tower.post_layernorm.*",
    ]
    code, out, _ = cli("plan", tiny_models("llava"), "--freeze", "lm", "--probe")
    assert "dead vision: 18 trainable tensor(s)" in " ".join(out.split())


def test_plan_strict_exits_1_on_dead_parameters_and_0_when_none(tiny_models, cli):
    """With --strict the plan is still printed in full; the exit code carries the verdict."""
    code, out, err = cli("plan", tiny_models("llava"), "--freeze", "lm", "--probe", "--strict", "--json")
    assert code == 1, err
    assert json.loads(out)["probe"]["dead_trainable_count"] == 18  # the JSON is out before the verdict
    assert err.strip().splitlines() == [
        "vlmsurgeon: error: plan --strict: 18 trainable tensor(s) got no gradient (vision 18): "
        "model.vision_tower.encoder.layers.1.*, model.vision_tower.post_layernorm.* "
        "(try: freeze those parameters (a preset / --freeze), or drop --strict)"
    ]
    # lm-lora trains only the LM: every trainable tensor gets a gradient, so --strict passes
    code, out, err = cli("plan", tiny_models("llava"), "--preset", "lm-lora", "--probe", "--strict")
    assert code == 0, err
    assert "dead" not in out and err == ""


def test_plan_strict_without_probe_is_a_usage_error(tiny_models, cli, tmp_path):
    code, out, err = cli("plan", tiny_models("llava"), "--preset", "full", "--strict")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "vlmsurgeon: error: plan --strict judges the gradient probe, and no probe was asked for "
        "(try: add --probe (or probe: true in the config), or drop --strict)"
    ]
    config = tmp_path / "run.yaml"  # a probe asked for in the config counts
    config.write_text(f"model: {tiny_models('llava')}\nfreeze: lm\nprobe: true\n")
    code, _, err = cli("plan", "--config", config, "--strict")
    assert code == 1 and "plan --strict: 18 trainable tensor(s)" in err


def test_llava_1_5_default_config_layer_23_is_dead(tmp_path):
    """The real LLaVA-1.5 shape (24 CLIP layers, feature layer -2), from transformers' default."""
    full, result = _probe(save_config("llava", tmp_path), preset="full")
    expected = _last_layer_and_post_norm(full, "model.vision_tower")
    assert any(".layers.23." in n for n in expected)
    assert set(result.report.dead) == {"vision"}
    assert set(result.report.dead["vision"]) == expected


def test_lora_on_the_dead_layer_is_dead_and_other_lora_pairs_live(tiny_models):
    """per-modality-lora: LoRA B starts at zero, so A gets no gradient on step one anywhere;
    a pair is judged by B. Only the last layer's LoRA pairs are dead (post-layernorm is frozen)."""
    full, result = _probe(tiny_models("llava"), preset="per-modality-lora")
    modules = {
        n
        for n, m in full.named_modules()
        if n.startswith("model.vision_tower.encoder.layers.1.") and type(m).__name__ == "Linear"
    }
    expected = {f"{m}.lora_{x}.weight" for m in modules for x in "AB"}
    assert len(expected) == 12
    assert set(result.report.dead) == {"vision"}
    assert set(result.report.dead["vision"]) == expected


@pytest.mark.parametrize("preset", ["per-modality-lora", "full", "lm-lora"])
def test_qwen2_vl_has_nothing_dead(tiny_models, preset):
    _, result = _probe(tiny_models("qwen2_vl"), preset=preset)
    assert result.report.checked > 0
    assert result.report.dead == {}
    assert result.report.not_reached == {}


def test_qwen2_5_vl_default_config_per_modality_lora_nothing_dead(tmp_path):
    _, result = _probe(save_config("qwen2_5_vl", tmp_path), preset="per-modality-lora")
    assert result.report.dead == {} and result.report.checked > 100


def test_235b_moe_replica_keeps_every_name_and_probes(tmp_path):
    """Qwen3-VL-235B-A22B: 94 layers × 128 experts, widths shrunk, names one to one."""
    from vlmsurgeon.model.sources import build_on_meta

    source, full = meta_model(str(MOE_235B))
    narrow = narrow_config(full.config)
    assert narrow.text_config.num_hidden_layers == 94 and narrow.text_config.num_experts == 128
    assert narrow.vision_config.deepstack_visual_indexes == [8, 16, 24]
    assert narrow.vision_config.out_hidden_size == narrow.text_config.hidden_size
    replica = build_on_meta(source, narrow)
    names = {n for n, _ in full.named_parameters()}
    assert {n for n, _ in replica.named_parameters()} == names
    # by hand: 94 text layers × 11 tensors (q k v o, q/k norms, 2 layernorms, router, 2 fused
    # expert tensors) + embeddings, final norm, head; 27 vision blocks × 12 + patch embedding (2)
    # + position embedding + merger (6) + 3 deepstack mergers (6 each)
    assert len(names) == 94 * 11 + 3 + 27 * 12 + 3 + 6 + 3 * 6 == 1388
    small = sum(p.numel() for p in replica.parameters())
    assert small < sum(p.numel() for p in full.parameters()) / 500
    chosen = resolve_preset("per-modality-lora", None, ["vision", "merger", "lm", "head"])
    result = probe_model(source, full, chosen)
    assert result.report.dead == {}
    # LoRA A and B on q/k/v/o of 94 layers and qkv/proj/fc1/fc2 of 27 vision blocks; mergers full
    assert result.report.checked == 2 * (94 * 4 + 27 * 4) + 6 + 3 * 6


def test_display_names_and_groups():
    assert display_name("base_model.model.model.a.q_proj.lora_A.default.weight") == "model.a.q_proj.lora_A.weight"
    assert display_name("module.base_model.model.x.modules_to_save.default.w") == "x.w"
    trainable = ["a.l.0.w", "a.l.0.b", "a.l.1.w", "a.l.1.b", "a.n.w"]
    assert group_names({"a.l.1.w", "a.l.1.b", "a.n.w"}, trainable) == ["a.l.1.*", "a.n.w"]
    assert group_names({"a.l.1.w"}, trainable) == ["a.l.1.w"]


def test_finetune_warns_with_the_same_names_and_records_them(tiny_models, shapes, tmp_path, cli):
    model = tiny_models("llava")
    _, probe = _probe(model, freeze="lm")
    run = tmp_path / "run"
    code, _, err = cli(
        "finetune",
        model,
        "--data",
        shapes,
        "-o",
        run,
        "--freeze",
        "lm",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "512",
    )
    assert code == 0, err
    line = " ".join(err.split())
    assert (
        "vlmsurgeon: warning: first backward step: 18 trainable tensor(s) got no gradient (vision 18): "
        "model.vision_tower.encoder.layers.1.*, model.vision_tower.post_layernorm.*"
    ) in line
    # LLaVA stage 1 shape (LM frozen, nothing in LoRA): Trainer trains 4-bit only through adapters
    assert "trains no LoRA adapter, and a 4-bit model trains only through adapters" in line
    saved = json.loads((run / "vlmsurgeon.json").read_text())
    assert saved["quantize"] == "none"
    record = saved["gradients_first_step"]
    assert record["dead_trainable_count"] == 18
    assert set(record["components"]["vision"]["dead_trainable"]) == set(probe.report.dead["vision"])


def test_strict_grads_stops_before_the_first_optimizer_step(tiny_models, shapes, tmp_path, cli):
    run = tmp_path / "run"
    code, out, err = cli(
        "finetune",
        tiny_models("llava"),
        "--data",
        shapes,
        "-o",
        run,
        "--freeze",
        "lm",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "512",
        "--strict-grads",
    )
    assert code == 1, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("vlmsurgeon: error: first backward step: 18 trainable tensor(s)")
    assert "stopped before the first optimizer step" in lines[-1]
    assert not run.exists()  # nothing trained, nothing left behind: a rerun may use the same -o
    code, _, err = cli(
        "finetune",
        tiny_models("llava"),
        "--data",
        shapes,
        "-o",
        run,
        "--freeze",
        "vision",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--seq-len",
        "512",
        "--strict-grads",
    )
    assert code == 0, err  # --freeze vision: nothing dead, strict passes
    record = json.loads((run / "vlmsurgeon.json").read_text())["gradients_first_step"]
    assert record["dead_trainable_count"] == 0 and record["checked"] > 0
