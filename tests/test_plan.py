"""`plan` (meta, no weights) agrees with the real model after the preset is applied, and with
peft's own count; its LoRA figures match hand arithmetic on a 235B config."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, unknown_model
from vlmsurgeon.plan.plan import plan_model
from vlmsurgeon.recipe.freeze import apply_preset
from vlmsurgeon.recipe.preset import load_preset

CASES = [
    (f, p)
    for f in ("qwen2_vl", "llava", "mllama", "paligemma", "qwen3_vl", "internvl")
    for p in ("lm-lora", "per-modality-lora", "vision-only")
]


@pytest.mark.parametrize("family,preset", CASES)
def test_plan_counts_equal_real_model_and_peft(tiny_models, family, preset):
    from transformers import AutoModelForImageTextToText

    planned = plan_model(str(tiny_models(family)), preset=preset)
    model = AutoModelForImageTextToText.from_pretrained(tiny_models(family))
    applied = apply_preset(model, load_preset(preset), model.config.model_type)
    real = {c: s.trainable for c, s in applied.components.items()}
    assert {c: s.trainable for c, s in planned.applied.components.items()} == real
    on_model = sum(p.numel() for p in applied.model.parameters() if p.requires_grad)
    assert planned.trainable == on_model == sum(real.values())
    if hasattr(applied.model, "get_nb_trainable_parameters"):
        peft_trainable, _ = applied.model.get_nb_trainable_parameters()
        assert planned.trainable == peft_trainable


def test_lm_lora_on_qwen3_vl_235b_by_hand(cli):
    code, out, err = cli("plan", ROOT / "examples" / "qwen3-vl-235b-a22b", "--preset", "lm-lora", "--json")
    assert code == 0, err
    data = json.loads(out)
    r, h, heads, kv, hd, layers = 16, 4096, 64, 4, 128, 94
    q = r * (h + heads * hd)
    k = v = r * (h + kv * hd)
    o = r * (heads * hd + h)
    assert data["components"]["lm"]["trainable"] == layers * (q + k + v + o) == 50_823_168
    assert data["components"]["lm"]["lora_modules"] == layers * 4  # MoE experts are fused tensors
    assert data["trainable_params"] == 50_823_168
    for frozen in ("vision", "merger", "head"):
        assert data["components"][frozen]["trainable"] == 0
    assert data["components"]["lm"]["quantized"] is True
    assert data["memory"]["total"] < data["memory"]["total_no_ckpt"]


def test_freeze_vision_trains_merger_full_and_lm_lora(cli):
    code, out, err = cli("plan", ROOT / "examples" / "qwen3-vl-235b-a22b", "--freeze", "vision", "--json")
    assert code == 0, err
    c = json.loads(out)["components"]
    assert c["vision"]["trainable"] == 0 and c["head"]["trainable"] == 0
    assert c["merger"]["trainable"] == c["merger"]["params"] == 160_496_896
    assert c["lm"]["mode"] == "lora" and c["lm"]["trainable"] == 50_823_168


def test_plan_needs_exactly_one_of_preset_or_freeze(cli, tiny_models):
    code, _, err = cli("plan", tiny_models("llava"))
    assert code == 2 and "exactly one of --preset or --freeze" in err
    code, _, err = cli("plan", tiny_models("llava"), "--preset", "lm-lora", "--freeze", "vision")
    assert code == 2


def test_config_file_supplies_options_and_flags_override(tmp_path, cli, tiny_models, monkeypatch):
    run = tmp_path / "run.yaml"
    run.write_text(f"model: {tiny_models('llava')}\nfreeze: vision\nseq_len: 128\n")
    code, out, err = cli("plan", "--config", run, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["preset"] == "freeze:vision" and data["settings"]["seq_len"] == 128
    code, out, _ = cli("plan", "--config", run, "--seq-len", "64", "--json")
    assert json.loads(out)["settings"]["seq_len"] == 64
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vlmsurgeon.yaml").write_text("freeze: vision\n")
    code, _, err = cli("plan")
    assert code == 2 and "no model given" in err and "vlmsurgeon.yaml" in err


@pytest.mark.parametrize("auto_map", [True, False])
def test_an_unknown_model_type_offers_remote_code_only_when_the_config_has_auto_map(tmp_path, cli, auto_map):
    """Repo code can build a model only through the auto_map of its config.json: without one the
    hint is to upgrade transformers or check model_type, in plan and in budget check alike."""
    model = unknown_model(tmp_path / "model", "not_a_model", auto_map)
    budget = tmp_path / "budget.yaml"
    budget.write_text(f"models:\n  - name: x\n    model: {model}\n    freeze: vision\n    limits:\n      total: 1B\n")
    for args, setting in (
        (("plan", model, "--freeze", "vision"), "pass --trust-remote-code"),
        (("budget", "check", budget), "set trust_remote_code: true on the entry"),
    ):
        code, _, err = cli(*args)
        lines = [line for line in err.splitlines() if line.startswith("vlmsurgeon: error:")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        line = lines[0]
        assert f"model '{model}': model_type 'not_a_model'" in line, line
        if auto_map:
            assert "needs code from the model repo" in line and f"(try: {setting} if you trust the repo's code)" in line
        else:
            assert "is unknown to transformers" in line and "has no auto_map" in line, line
            assert line.endswith(
                "(try: upgrade transformers if the model type is newer, or check model_type in its config.json)"
            ), line
            assert "remote" not in line.split("(try: ")[1] and "trust" not in line, line
