"""One 4-bit rule (preset.loaded_4bit) for finetune, plan, presets and budget: a preset that trains
no LoRA loads nothing in 4-bit, and every command prices and shows it so; MoE figures by hand."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from vlmsurgeon.model.components import ALL_COMPONENTS
from vlmsurgeon.recipe.preset import load_preset, loaded_4bit, parse_preset

BIG = ROOT / "examples" / "qwen3-vl-235b-a22b"
NF4 = 4 + 8 / 64 + 32 / (64 * 256)
NO_LORA = (
    "trains no LoRA adapter, and a 4-bit model trains only through adapters: loading without "
    "4-bit (--quantize none), lm in 16-bit"
)
PRESENT = ["head", "lm", "merger", "vision"]


def _config() -> dict:
    return json.loads((BIG / "config.json").read_text())["text_config"]


def test_rule_by_preset_and_option():
    assert loaded_4bit(load_preset("lm-lora"), PRESENT).quantized == ("lm",)
    assert loaded_4bit(load_preset("lm-lora"), PRESENT).reason == ""
    assert loaded_4bit(load_preset("per-modality-lora"), PRESENT).quantized == ("lm",)
    for name in ("projector-only", "vision-only"):
        loading = loaded_4bit(load_preset(name), PRESENT)
        assert loading.quantized == () and loading.reason == f"preset '{name}' {NO_LORA}"
    for name in ("text-only", "full"):  # nothing asked, nothing overridden
        assert loaded_4bit(load_preset(name), PRESENT) == loaded_4bit(load_preset(name), PRESENT, "none")
        assert loaded_4bit(load_preset(name), PRESENT).quantized == ()
    # --quantize none is the user's own choice: no reason to report
    none = loaded_4bit(load_preset("lm-lora"), PRESENT, "none")
    assert none.quantized == () and none.reason == ""
    # a LoRA anywhere keeps the frozen LM in 4-bit: the Trainer has an adapter to train
    vision_lora = parse_preset({"name": "v", "components": {"vision": {"mode": "lora"}}}, "t")
    assert loaded_4bit(vision_lora, PRESENT).quantized == ("lm",)
    # ... but not a LoRA on a component the model lacks
    audio_lora = parse_preset({"name": "a", "components": {"audio": {"mode": "lora"}}}, "t")
    assert loaded_4bit(audio_lora, PRESENT).quantized == ()
    assert loaded_4bit(audio_lora, [*PRESENT, "audio"]).quantized == ("lm",)


@pytest.mark.parametrize("preset", ["projector-only", "vision-only"])
def test_plan_235b_without_lora_prices_16bit_weights(cli, preset):
    code, out, err = cli("plan", BIG, "--preset", preset, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert {name: c["quantized"] for name, c in data["components"].items()} == dict.fromkeys(PRESENT[::-1], False)
    params = {name: c["params"] for name, c in data["components"].items()}
    # by hand: every parameter at 2 bytes (figures of the 235B breakdown, DESIGN seed 001)
    assert params == {"vision": 415_891_440, "merger": 160_496_896, "lm": 234_471_304_704, "head": 622_329_856}
    assert data["memory"]["weights"] == 2 * sum(params.values()) == 471_340_045_792
    assert f"preset '{preset}' {NO_LORA}" in data["notes"]
    assert not any("fused MoE expert tensors" in n for n in data["notes"])  # nothing is 4-bit


def test_plan_235b_lm_lora_stays_4bit_and_names_the_fused_experts(cli):
    code, out, err = cli("plan", BIG, "--preset", "lm-lora", "--json")
    assert code == 0, err
    data = json.loads(out)
    text = _config()
    h, layers, heads, kv, hd = text["hidden_size"], text["num_hidden_layers"], 64, 4, 128
    # fused experts: gate_up (E, 2·moe, h) and down (E, h, moe), per layer
    experts = layers * text["num_experts"] * h * text["moe_intermediate_size"] * 3
    assert experts == 227_096_395_776
    linear = layers * 2 * (heads * hd * h + kv * hd * h)  # q, o and k, v: the LM's only nn.Linear
    lm = data["components"]["lm"]["params"]
    assert {name: c["quantized"] for name, c in data["components"].items()} == {
        "vision": False,
        "merger": False,
        "lm": True,
        "head": False,
    }
    others = data["total_params"] - lm
    assert data["memory"]["weights"] == int(linear * NF4 / 8) + 2 * (lm - linear) + 2 * others
    saved = 2 * lm - (int(linear * NF4 / 8) + 2 * (lm - linear))
    assert (
        f"lm: {experts:,} of its {lm:,} parameters ({100 * experts / lm:.1f}%) are fused MoE expert "
        "tensors (3-D, not nn.Linear); bitsandbytes quantizes only nn.Linear, so they stay 16-bit "
        f"({2 * experts / 2**30:.2f} GiB) and 4-bit saves only {saved / 2**30:.2f} GiB on lm"
    ) in data["notes"]
    assert (
        f"lm: LoRA reaches 376 nn.Linear module(s), 376 of them attention projections; the {experts:,} "
        "parameters in fused expert tensors get no LoRA and stay frozen"
    ) in data["notes"]
    assert "96.9%" in data["notes"][0] and "9.26 GiB" in data["notes"][0]


def test_plan_text_freeze_lm_and_quantize_none(cli, tiny_models):
    model = tiny_models("llava")
    code, out, err = cli("plan", model, "--freeze", "lm", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert not any(c["quantized"] for c in data["components"].values())
    assert data["memory"]["weights"] == 2 * data["total_params"]
    assert f"preset 'freeze:lm' {NO_LORA}" in data["notes"]
    code, out, _ = cli("plan", model, "--preset", "lm-lora", "--quantize", "none", "--json")
    data = json.loads(out)
    assert code == 0 and data["memory"]["weights"] == 2 * data["total_params"]
    assert not any(c["quantized"] for c in data["components"].values()) and data["notes"] == []
    code, out, _ = cli("plan", model, "--preset", "projector-only")
    assert code == 0 and _column(out, "4-bit", ALL_COMPONENTS) == dict.fromkeys(PRESENT[::-1], "")
    assert f"note: preset 'projector-only' {NO_LORA}" in " ".join(out.split())
    code, out, _ = cli("plan", model, "--preset", "lm-lora")
    assert _column(out, "4-bit", ALL_COMPONENTS) == {"vision": "", "merger": "", "lm": "yes", "head": ""}


def _column(out: str, header: str, names) -> dict[str, str]:
    """A plain-text table's column (tables print as aligned text when piped), by row name."""
    lines = out.splitlines()
    top = next(line for line in lines if f" {header}" in line)
    start = top.index(header)
    return {
        line.split()[0]: line[start : start + len(header)].strip()
        for line in lines
        if line[:1].strip() and line.split()[0] in names
    }


def test_presets_table_shows_what_loads(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = cli("presets")
    assert code == 0
    names = ("full", "lm-lora", "per-modality-lora", "projector-only", "text-only", "vision-only")
    assert _column(out, "4-bit", names) == {
        "full": "-",
        "lm-lora": "lm",
        "per-modality-lora": "lm",
        "projector-only": "-",
        "text-only": "-",
        "vision-only": "-",
    }
    assert (
        "projector-only, vision-only: quantize lists a component, but nothing trains as LoRA and a 4-bit "
        "model trains only through adapters, so everything loads in 16-bit"
    ) in " ".join(out.split())


def test_budget_memory_follows_the_rule(tmp_path, cli, tiny_models):
    from vlmsurgeon.plan.plan import plan_model

    model = tiny_models("llava")
    budget = tmp_path / "budget.yaml"
    budget.write_text(f"models:\n  - model: {model}\n    preset: projector-only\n    limits:\n      memory: 1GiB\n")
    code, out, err = cli("budget", "check", budget, "--json")
    assert code == 0, err
    figure = json.loads(out)["results"][0]["figure"]
    memory = plan_model(str(model), preset="projector-only").memory
    assert memory.weights == 2 * plan_model(str(model), preset="projector-only").breakdown.total_params
    assert figure == memory.total


def test_finetune_loads_what_the_rule_says(tiny_models, capsys):
    import bitsandbytes as bnb

    from vlmsurgeon.train.loop import _model_plan, load_for_training
    from vlmsurgeon.train.runconfig import RunOptions

    model = str(tiny_models("llava"))
    for preset, four_bit in (("projector-only", set()), ("lm-lora", {"lm"})):
        source, tree, chosen, opts = _model_plan(model, RunOptions(model=model, preset=preset), False)
        err = capsys.readouterr().err
        assert (f"vlmsurgeon: warning: preset '{preset}' {NO_LORA}" in err) == (not four_bit)
        assert opts.quantize == ("4bit" if four_bit else "none")
        loaded = load_for_training(model, opts, chosen, tree, source.model_type)
        quantized = {name for name, m in loaded.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
        assert bool(quantized) == bool(four_bit)
        assert all(".language_model." in name for name in quantized)
