"""Classification fixes (issue 11), each on a model built on meta from its config through
`inspect`: the exact roots per component, the moved modules' parameter counts worked out by hand
from the config and checked against the module transformers builds, `other == 0`, and the
components adding up to the total."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import save_config
from vlmsurgeon.model.inspection import inspect_model

QWEN25_OMNI = "Qwen2_5OmniForConditionalGeneration"
QWEN3_OMNI = "Qwen3OmniMoeForConditionalGeneration"
# Qwen3-Omni-30B-A3B ships its vision and audio output widths equal to the LM width (2048);
# transformers' defaults leave them at 3584, a config no checkpoint has.
QWEN3_OMNI_WIDTHS = {"vision_config": {"out_hidden_size": 2048}, "audio_config": {"output_dim": 2048}}


def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def conv(i: int, o: int, k: int) -> int:
    return i * o * k * k + o


def layernorm(h: int) -> int:
    return 2 * h


def numel(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def output_width(module: Any) -> int:
    """The width a module emits: its last Linear's output, else (a norm) its weight's size."""
    import torch.nn as nn

    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else module.weight.shape[-1]


def transformers_model(directory: Path, class_name: str) -> Any:
    """The same model built by transformers alone, for counts independent of vlmsurgeon's tree."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(directory)
    with torch.device("meta"):
        return getattr(transformers, class_name)._from_config(config)


def inspected(directory: Path) -> dict[str, Any]:
    result = inspect_model(str(directory)).to_json()
    comps = result["components"]
    assert result["other"] == 0
    assert sum(c["params"] for c in comps.values()) == result["total_params"]
    return result


def roots(result: dict[str, Any]) -> dict[str, list[str]]:
    return {name: sorted(c["roots"]) for name, c in result["components"].items()}


def qwen3_omni_mergers(config: Any) -> dict[str, int]:
    """Vision patch mergers (main + DeepStack) and the audio tower's proj1-act-proj2 head."""
    v, a = config.vision_config, config.audio_config
    wide = v.hidden_size * v.spatial_merge_size**2
    mlp = linear(wide, wide) + linear(wide, v.out_hidden_size)
    return {
        "visual.merger": layernorm(v.hidden_size) + mlp,
        "visual.merger_list": len(v.deepstack_visual_indexes) * (layernorm(wide) + mlp),
        "audio_tower.proj1": linear(a.d_model, a.d_model),
        "audio_tower.proj2": linear(a.d_model, a.output_dim),
    }


@pytest.fixture(scope="module")
def qwen25_omni(tmp_path_factory) -> Path:
    """Qwen2.5-Omni as its checkpoints declare it: thinker + talker + token2wav."""
    directory = tmp_path_factory.mktemp("qwen2_5_omni")
    return save_config("qwen2_5_omni", directory, architectures=[QWEN25_OMNI])


def test_qwen3_omni_thinker_deepstack_merger_list_is_merger(tmp_path):
    directory = save_config("qwen3_omni_moe_thinker", tmp_path, **QWEN3_OMNI_WIDTHS)
    result = inspected(directory)
    model = transformers_model(directory, "Qwen3OmniMoeThinkerForConditionalGeneration")
    config, inner = model.config, model.model
    moved = qwen3_omni_mergers(config)
    assert moved == {
        "visual.merger": 30_679_808,
        "visual.merger_list": 92_060_160,
        "audio_tower.proj1": 1_639_680,
        "audio_tower.proj2": 2_623_488,
    }
    for path, figure in moved.items():
        assert numel(inner.get_submodule(path)) == figure, path
    # what makes them mergers: their output is the LM width
    text_width = config.text_config.hidden_size
    assert output_width(inner.visual.merger_list[0]) == output_width(inner.audio_tower.proj2) == text_width

    c = result["components"]
    assert roots(result) == {
        "vision": ["model.visual"],
        "merger": [
            "model.audio_tower.proj1",
            "model.audio_tower.proj2",
            "model.visual.merger",
            "model.visual.merger_list",
        ],
        "lm": ["model.language_model"],
        "head": ["lm_head"],
        "audio": ["model.audio_tower"],
    }
    assert c["merger"]["params"] == sum(moved.values()) == 127_003_136
    assert c["vision"]["params"] == numel(inner.visual) - moved["visual.merger"] - moved["visual.merger_list"]
    assert c["vision"]["params"] == 415_891_440  # the Qwen3-VL ViT of test_counts, mergers apart
    audio_proj = moved["audio_tower.proj1"] + moved["audio_tower.proj2"]
    assert c["audio"]["params"] == numel(inner.audio_tower) - audio_proj
    assert result["total_params"] == numel(model)


def test_qwen3_omni_full_model_talker_and_code2wav_are_generator(tmp_path):
    # Two talker fields transformers' defaults lack: without them the model cannot be built.
    # Their values change only the generator's size, which is compared with transformers' own.
    talker = {"spatial_merge_size": 2, "text_config": {"shared_expert_intermediate_size": 768}}
    directory = save_config(
        "qwen3_omni_moe", tmp_path, architectures=[QWEN3_OMNI], thinker_config=QWEN3_OMNI_WIDTHS, talker_config=talker
    )
    result, model = inspected(directory), transformers_model(directory, QWEN3_OMNI)
    assert roots(result) == {
        "vision": ["thinker.model.visual"],
        "merger": [
            "thinker.model.audio_tower.proj1",
            "thinker.model.audio_tower.proj2",
            "thinker.model.visual.merger",
            "thinker.model.visual.merger_list",
        ],
        "lm": ["thinker.model.language_model"],
        "head": ["thinker.lm_head"],
        "audio": ["thinker.model.audio_tower"],
        "generator": ["code2wav", "talker"],
    }
    c = result["components"]
    assert c["merger"]["params"] == sum(qwen3_omni_mergers(model.config.thinker_config).values()) == 127_003_136
    assert c["generator"]["params"] == numel(model.talker) + numel(model.code2wav)
    assert c["generator"]["params"] == result["total_params"] - numel(model.thinker)


def test_hunyuan_vl_patch_merger_is_merger(tmp_path):
    from vlmsurgeon.plan.plan import plan_model

    # The default text config leaves head_dim None (the model then fails to build); 128 is
    # hidden_size / heads, the width the attention would otherwise derive.
    directory = save_config("hunyuan_vl", tmp_path, text_config={"head_dim": 128})
    result, model = inspected(directory), transformers_model(directory, "HunYuanVLForConditionalGeneration")
    v, text_width = model.config.vision_config, model.config.text_config.hidden_size
    h, m, t = v.hidden_size, v.spatial_merge_size, v.text_hidden_size
    patch_merger = (
        conv(h, 2 * h, m)
        + conv(2 * h, 4 * h, 1)
        + linear(4 * h, t)
        + 4 * h
        + 3 * t  # image_newline (vision width x4); image_begin/end/sep (LM width)
        + h
        + t
    )  # RMSNorms before and after
    assert t == text_width and model.model.vision_tower.patch_merger.mlp.out_features == text_width
    assert patch_merger == numel(model.model.vision_tower.patch_merger) == 40_141_184

    assert roots(result) == {
        "vision": ["model.vision_tower"],
        "merger": ["model.vision_tower.patch_merger"],
        "lm": ["model.language_model"],
        "head": ["lm_head"],
    }
    c = result["components"]
    assert c["merger"]["params"] == patch_merger
    assert c["vision"]["params"] == numel(model.model.vision_tower) - patch_merger
    assert result["total_params"] == numel(model)
    plan = plan_model(str(directory), preset="projector-only").to_json()["components"]
    assert plan["merger"]["trainable"] == patch_merger
    assert sum(entry["trainable"] for entry in plan.values()) == patch_merger


# Audio projectors into the LM width: family, config overrides, class, the moved modules with
# their hand-computed size (from the config), the merger's roots afterwards, and the LM width check.
AudioCase = tuple[str, dict[str, Any], str, Callable[[Any], dict[str, int]], list[str]]
AUDIO_CASES: dict[str, AudioCase] = {
    "qwen2_5_omni_thinker": (
        "qwen2_5_omni_thinker",
        {},
        "Qwen2_5OmniThinkerForConditionalGeneration",
        lambda c: {"model.audio_tower.proj": linear(c.audio_config.d_model, c.audio_config.output_dim)},
        ["model.audio_tower.proj", "model.visual.merger"],
    ),
    "gemma3n": (  # like embed_vision: audio soft-token table, two norms, projection to the LM
        "gemma3n",
        {},
        "Gemma3nForConditionalGeneration",
        lambda c: {
            "model.embed_audio": c.audio_config.vocab_size * c.audio_config.hidden_size
            + 2 * c.audio_config.hidden_size
            + linear(c.audio_config.hidden_size, c.text_config.hidden_size, bias=False)
        },
        ["model.embed_audio", "model.embed_vision"],
    ),
    "gemma4": (  # the default config is text-only: the audio and vision towers at their defaults
        "gemma4",
        {"audio_config": {}, "vision_config": {}},
        "Gemma4ForConditionalGeneration",
        lambda c: {"model.embed_audio": linear(c.audio_config.output_proj_dims, c.text_config.hidden_size, bias=False)},
        ["model.embed_audio", "model.embed_vision"],
    ),
    "muse_spark": (
        "muse_spark",
        {},
        "MuseSparkForConditionalGeneration",
        lambda c: {
            "model.audio_tower.proj": linear(c.audio_config.hidden_sizes[-1], c.audio_config.out_hidden_size),
            "model.audio_tower.post_proj_norm": c.audio_config.out_hidden_size,
        },
        [
            "model.audio_tower.post_proj_norm",
            "model.audio_tower.proj",
            "model.perception_emb_norm",
            "model.vision_adapter",
            "model.vision_projection",
        ],
    ),
    "dots3_note": (
        "dots3_note",
        {},
        "Dots3NoteForConditionalGeneration",
        lambda c: {
            "model.audio_tower.adapter": layernorm(c.audio_config.adapter_input_size)
            + linear(c.audio_config.adapter_input_size, c.audio_config.adapter_out_dim)
            + linear(c.audio_config.adapter_out_dim, c.audio_config.adapter_out_dim)
        },
        ["model.audio_tower.adapter", "model.vision_tower.merger"],
    ),
}
AUDIO_FIGURES = {
    "qwen2_5_omni_thinker": {"model.audio_tower.proj": 4_591_104},
    "gemma3n": {"model.embed_audio": 3_345_408},
    "gemma4": {"model.embed_audio": 3_538_944},
    "muse_spark": {"model.audio_tower.proj": 16_785_408, "model.audio_tower.post_proj_norm": 8_192},
    "dots3_note": {"model.audio_tower.adapter": 32_780_800},
}


@pytest.mark.parametrize("case", sorted(AUDIO_CASES))
def test_audio_projection_into_the_lm_is_merger(tmp_path, case):
    model_type, overrides, class_name, by_hand, merger_roots = AUDIO_CASES[case]
    directory = save_config(model_type, tmp_path, **overrides)
    result, model = inspected(directory), transformers_model(directory, class_name)
    moved = by_hand(model.config)
    assert moved == AUDIO_FIGURES[case]
    text_width = model.config.get_text_config().hidden_size
    for path, figure in moved.items():
        module = model.get_submodule(path)
        assert numel(module) == figure, path
        assert output_width(module) == text_width, path

    assert roots(result)["merger"] == merger_roots
    assert roots(result)["audio"] == ["model.audio_tower"]
    merger = sum(numel(model.get_submodule(r)) for r in merger_roots)
    assert result["components"]["merger"]["params"] == merger
    inside_tower = sum(f for p, f in moved.items() if p.startswith("model.audio_tower."))
    assert result["components"]["audio"]["params"] == numel(model.model.audio_tower) - inside_tower
    assert result["total_params"] == numel(model)


def test_qwen25_omni_talker_and_token2wav_are_generator(qwen25_omni):
    result, model = inspected(qwen25_omni), transformers_model(qwen25_omni, QWEN25_OMNI)
    assert roots(result) == {
        "vision": ["thinker.model.visual"],
        "merger": ["thinker.model.audio_tower.proj", "thinker.model.visual.merger"],
        "lm": ["thinker.model.language_model"],
        "head": ["thinker.lm_head"],
        "audio": ["thinker.model.audio_tower"],
        "generator": ["talker", "token2wav"],
    }
    c = result["components"]
    generator = numel(model.talker) + numel(model.token2wav)
    assert c["generator"]["params"] == generator == 7_048_076_928
    assert c["generator"]["params"] == result["total_params"] - numel(model.thinker)
    audio = model.config.thinker_config.audio_config
    visual_merger = numel(model.thinker.model.visual.merger)
    assert c["merger"]["params"] == linear(audio.d_model, audio.output_dim) + visual_merger
    assert (c["lm"]["params"], c["head"]["params"]) == (7_070_619_136, 544_997_376)


def test_generator_is_shown_only_when_present(qwen25_omni, tmp_path, cli):
    code, out, err = cli("inspect", qwen25_omni)
    assert code == 0, err
    assert "generator" in out and "7,048,076,928" in out and "talker, token2wav" in out
    thinker = save_config("qwen2_5_omni_thinker", tmp_path)
    assert "generator" not in inspect_model(str(thinker)).to_json()["components"]


def test_every_builtin_preset_leaves_the_generator_frozen(qwen25_omni):
    from vlmsurgeon.plan.plan import plan_model
    from vlmsurgeon.recipe.preset import builtin_names

    for name in builtin_names():
        comps = plan_model(str(qwen25_omni), preset=name).to_json()["components"]
        assert comps["generator"]["mode"] == "frozen" and comps["generator"]["trainable"] == 0, name
    text_only = plan_model(str(qwen25_omni), preset="text-only").to_json()
    comps = text_only["components"]
    assert {n: c["trainable"] for n, c in comps.items()} == {
        "vision": 0,
        "merger": 0,
        "lm": 7_070_619_136,
        "head": 544_997_376,
        "audio": 0,
        "generator": 0,
    }
    assert text_only["trainable_params"] == 7_070_619_136 + 544_997_376 and text_only["other"] == 0


def test_generator_is_a_valid_freeze_and_budget_name(qwen25_omni, tmp_path):
    from vlmsurgeon.plan.budget import check_budget
    from vlmsurgeon.plan.plan import plan_model

    comps = plan_model(str(qwen25_omni), freeze="vision,generator").to_json()["components"]
    assert comps["generator"]["trainable"] == 0 and comps["audio"]["trainable"] == comps["audio"]["params"]
    budget = tmp_path / "budget.yaml"
    budget.write_text(
        f"models:\n  - model: {qwen25_omni}\n    limits:\n"
        "      generator.params: {min: 7048076928, max: 7048076928}\n"
        f"  - model: {qwen25_omni}\n    preset: full\n    limits:\n"
        "      generator.trainable: 0\n"
    )
    result = check_budget(budget)
    assert [r.limit.key for r in result.results] == ["generator.params"] * 2 + ["generator.trainable"]
    assert all(r.ok for r in result.results)


def test_freeze_leaves_the_generator_frozen_unless_named(qwen25_omni):
    from vlmsurgeon.plan.plan import plan_model

    comps = plan_model(str(qwen25_omni), freeze="vision").to_json()["components"]
    assert comps["generator"]["mode"] == "frozen" and comps["generator"]["trainable"] == 0
    assert comps["audio"]["trainable"] == comps["audio"]["params"]  # the other encoder still trains
