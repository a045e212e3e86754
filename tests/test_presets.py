"""Every shipped preset applied to real tiny models: the exact set of trainable parameter names,
by component, against a classification written by hand for each family."""

from __future__ import annotations

import json

import pytest
import torch.nn as nn

from vlmsurgeon.recipe.freeze import apply_preset
from vlmsurgeon.recipe.preset import builtin_names, builtin_text, freeze_preset, load_preset

# Hand-written: which parameter-name prefixes make up each component, per tiny family.
PREFIXES = {
    "llava": {
        "vision": ["model.vision_tower."],
        "merger": ["model.multi_modal_projector."],
        "lm": ["model.language_model."],
        "head": ["lm_head."],
    },
    "qwen2_vl": {
        "vision": ["model.visual."],
        "merger": ["model.visual.merger."],
        "lm": ["model.language_model."],
        "head": ["lm_head."],
    },
    "qwen3_vl": {
        "vision": ["model.visual."],
        "merger": ["model.visual.merger.", "model.visual.deepstack_merger_list."],
        "lm": ["model.language_model."],
        "head": ["lm_head."],
    },
    "mllama": {
        "vision": ["model.vision_model."],
        "merger": ["model.multi_modal_projector.", "model.language_model.layers.1."],
        "lm": ["model.language_model."],
        "head": ["lm_head."],
    },
    "paligemma": {
        "vision": ["model.vision_tower."],
        "merger": ["model.multi_modal_projector."],
        "lm": ["model.language_model."],
        "head": [],
    },  # head tied to the embeddings
    "idefics3": {
        "vision": ["model.vision_model."],
        "merger": ["model.connector."],
        "lm": ["model.text_model."],
        "head": ["lm_head."],
    },
    "qwen2_5_vl": {
        "vision": ["model.visual."],
        "merger": ["model.visual.merger."],
        "lm": ["model.language_model."],
        "head": ["lm_head."],
    },
    "llava_next": {
        "vision": ["model.vision_tower."],
        "merger": ["model.multi_modal_projector.", "model.image_newline"],
        "lm": ["model.language_model."],
        "head": ["lm_head."],
    },
    "gemma3": {
        "vision": ["model.vision_tower."],
        "merger": ["model.multi_modal_projector."],
        "lm": ["model.language_model."],
        "head": [],
    },
    "internvl": {
        "vision": ["model.vision_tower."],
        "merger": ["model.multi_modal_projector."],
        "lm": ["model.language_model."],
        "head": [],
    },
}
FAMILIES = sorted(PREFIXES)
PRESETS = builtin_names() + ["--freeze vision", "--freeze vision,merger"]


def component_of(name: str, family: str) -> str:
    best, length = "other", -1
    for comp, prefixes in PREFIXES[family].items():
        for prefix in prefixes:
            if name.startswith(prefix) and len(prefix) > length:
                best, length = comp, len(prefix)
    return best


def normalise(name: str) -> str:
    """peft's parameter names back to base-model names (written out here on purpose)."""
    name = name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
    return name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def expected_trainable(model: nn.Module, preset, family: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {c: set() for c in PREFIXES[family]}
    for name, _ in model.named_parameters():  # tied parameters appear once
        comp = component_of(name, family)
        if preset.spec(comp).mode.value == "full":
            out[comp].add(name)
    head = model.get_output_embeddings()
    for path, module in model.named_modules():
        comp = component_of(path + ".", family)
        if isinstance(module, nn.Linear) and module is not head and preset.spec(comp).mode.value == "lora":
            out[comp] |= {f"{path}.lora_A.weight", f"{path}.lora_B.weight"}
    return out


def _preset(name: str, family: str):
    if name.startswith("--freeze"):
        return freeze_preset(name.split()[1], [c for c, p in PREFIXES[family].items() if p])
    return load_preset(name)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset_name", PRESETS)
def test_exact_trainable_names(tiny_models, family, preset_name):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_models(family))
    preset = _preset(preset_name, family)
    expected = expected_trainable(model, preset, family)
    applied = apply_preset(model, preset, model.config.model_type)
    actual: dict[str, set[str]] = {c: set() for c in PREFIXES[family]}
    for name, param in applied.model.named_parameters():
        if param.requires_grad:
            base = normalise(name)
            actual[component_of(base.split(".lora_")[0] + ".", family)].add(base)
    assert actual == expected
    # frozen components carry no LoRA module; no convolution ever gets one
    for path, module in applied.model.named_modules():
        base = normalise(path)
        if hasattr(module, "lora_A"):
            comp = component_of(base + ".", family)
            assert preset.spec(comp).mode.value == "lora", base
            assert isinstance(module.get_base_layer(), nn.Linear), base
    for comp, state in applied.components.items():
        assert state.trainable == sum(
            p.numel()
            for n, p in applied.model.named_parameters()
            if p.requires_grad and component_of(normalise(n).split(".lora_")[0] + ".", family) == comp
        )


def test_user_preset_file_works_where_a_name_does(tmp_path, cli, tiny_models):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ncomponents:\n  merger: {mode: full}\n  lm: {mode: lora, r: 4, targets: attention}\n")
    code, out, err = cli("plan", tiny_models("llava"), "--preset", path, "--json")
    assert code == 0, err
    import json

    data = json.loads(out)
    assert data["preset"] == "mine"
    assert data["components"]["merger"]["trainable"] == data["components"]["merger"]["params"]
    # attention only: q,k,v,o in 2 layers, r=4, 64 -> 64 (q, o) and 64 -> 32 (k, v)
    assert data["components"]["lm"]["lora_modules"] == 8
    assert data["components"]["lm"]["trainable"] == 2 * (2 * 4 * (64 + 64) + 2 * 4 * (64 + 32))
    code, out, _ = cli("presets", path)
    assert code == 0 and "name: mine" in out


def test_invalid_preset_lists_every_problem(tmp_path, cli, tiny_models):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\ncolour: red\ncomponents:\n  eyes: {mode: full}\n"
        "  lm: {mode: lora, targets: everything, rr: 3}\n  vision: {mode: frozen, r: 4}\n"
    )
    code, _, err = cli("plan", tiny_models("llava"), "--preset", path)
    assert code == 2 and "Traceback" not in err
    for needle in (
        "colour",
        "components.eyes",
        "components.lm.targets",
        "components.lm.rr",
        "components.vision",
        "5 problem(s)",
        "Input should be 'vision'",
    ):
        assert needle in err, needle
    assert len(err.strip().splitlines()) == 1


def test_unknown_freeze_component_names_the_valid_ones(cli, tiny_models):
    code, _, err = cli("plan", tiny_models("llava"), "--freeze", "vision,eyes")
    assert code == 2 and "eyes" in err and "vision, merger, lm, head" in err


def test_every_shipped_preset_is_documented():
    from vlmsurgeon.recipe.preset import builtin_text

    assert {"vision-only", "text-only", "projector-only", "per-modality-lora", "lm-lora", "full"} <= set(
        builtin_names()
    )
    for name in builtin_names():
        text = builtin_text(name)
        assert text.startswith(f"# {name}:"), name
        comment = [line for line in text.splitlines() if line.startswith("#")]
        tries = [line.split("#", 1)[1].strip() for line in comment if line.startswith("#   vlmsurgeon ")]
        assert [t.split()[:2] for t in tries] == [["vlmsurgeon", "plan"], ["vlmsurgeon", "finetune"]], name
        assert all(f"--preset {name}" in t for t in tries), name
        assert load_preset(name).name == name


def test_no_shipped_preset_speaks_of_internal_sources(cli):
    """The comments are for the user (`vlmsurgeon presets NAME` prints them), not notes on where
    a recipe came from: no seed documents, no design file the package does not ship."""
    for name in builtin_names():
        code, out, _ = cli("presets", name)
        assert code == 0 and out.startswith(f"# {name}:")
        for word in ("seed", "DESIGN", "§"):
            assert word.lower() not in out.lower(), (name, word)


def test_absent_component_is_noted_only_where_the_user_named_it(tiny_models, cli, tmp_path):
    """The built-in `full` lists audio for the models that have one: on LLaVA that is no news. The
    same file as the user's own, or a --freeze naming audio, is worth a note."""

    def absent(*args):
        code, out, err = cli("plan", tiny_models("llava"), *args, "--json")
        assert code == 0, err
        return [n for n in json.loads(out)["notes"] if "not in this model" in n]

    assert absent("--preset", "full") == []
    mine = tmp_path / "mine.yaml"
    mine.write_text(builtin_text("full"))
    assert absent("--preset", mine) == ["audio is in the preset but not in this model"]
    assert absent("--freeze", "vision,audio") == ["audio is in --freeze but not in this model"]
    assert absent("--freeze", "vision") == []
