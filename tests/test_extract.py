"""extract on every tiny family, as measured: which give the VLM's text-only logits exactly and which
are refused, and why; the export in plain transformers (tied stays tied, tokenizer and chat template);
a run extracted as its merge; bad input as one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmsurgeon.ship.extract import extract
from vlmsurgeon.ship.textlm import DIFFERS, NO_TEXT_MODEL
from vlmsurgeon.tiny.families import FAMILIES

# What every extractable tiny family becomes (fp32, max |Δlogit| 0 on the probe for each of them).
ARCHITECTURES = {
    "aria": "AriaTextForCausalLM",
    "aya_vision": "Cohere2ForCausalLM",
    "blip-2": "OPTForCausalLM",
    "cohere2_vision": "Cohere2ForCausalLM",
    "deepseek_vl": "LlamaForCausalLM",
    "deepseek_vl_hybrid": "LlamaForCausalLM",
    "dots3_note": "Dots3NoteForCausalLM",
    "emu3": "LlamaForCausalLM",
    "exaone4_5": "Exaone4ForCausalLM",
    "fast_vlm": "Qwen2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "glm46v": "Glm4ForCausalLM",
    "glm4v": "Glm4ForCausalLM",
    "glm4v_moe": "Glm4MoeForCausalLM",
    "got_ocr2": "Qwen2ForCausalLM",
    "granite4_vision": "GraniteForCausalLM",
    "hunyuan_vl": "HunYuanDenseV1ForCausalLM",
    "hyperclovax_vision_v2": "HyperCLOVAXForCausalLM",
    "idefics2": "MistralForCausalLM",
    "idefics3": "LlamaForCausalLM",
    "instructblip": "LlamaForCausalLM",
    "internvl": "Qwen2ForCausalLM",
    "janus": "LlamaForCausalLM",
    "kimi_k25": "DeepseekV3ForCausalLM",
    "lfm2_vl": "Lfm2ForCausalLM",
    "lfm3_vl": "Lfm3ForCausalLM",
    "lighton_ocr": "Qwen3ForCausalLM",
    "llava": "LlamaForCausalLM",
    "llava_next": "LlamaForCausalLM",
    "llava_next_video": "LlamaForCausalLM",
    "llava_onevision": "Qwen2ForCausalLM",
    "minicpmv4_6": "Qwen3_5ForCausalLM",
    "mistral3": "MistralForCausalLM",
    "ovis2": "Qwen2ForCausalLM",
    "perception_lm": "LlamaForCausalLM",
    "qianfan_ocr": "Qwen3ForCausalLM",
    "qwen2_5_omni_thinker": "Qwen2ForCausalLM",
    "qwen2_5_vl": "Qwen2ForCausalLM",
    "qwen2_vl": "Qwen2ForCausalLM",
    "qwen3_5": "Qwen3_5ForCausalLM",
    "qwen3_5_moe": "Qwen3_5MoeForCausalLM",
    "qwen3_omni_moe_thinker": "Qwen3MoeForCausalLM",
    "qwen3_vl": "Qwen3ForCausalLM",
    "qwen3_vl_moe": "Qwen3MoeForCausalLM",
    "smolvlm": "LlamaForCausalLM",
    "video_llama_3": "Qwen2ForCausalLM",
    "video_llava": "LlamaForCausalLM",
    "vipllava": "LlamaForCausalLM",
}
# BLIP-2 and InstructBLIP cannot run without an image: their probe is their own decoder and head
LM_MODULES = {"blip-2", "instructblip"}
TIED = {
    *("aya_vision", "blip-2", "cohere2_vision", "deepseek_vl", "deepseek_vl_hybrid", "gemma3", "got_ocr2"),
    *("hunyuan_vl", "hyperclovax_vision_v2", "internvl", "janus", "kimi_k25", "lfm2_vl", "lfm3_vl"),
    *("lighton_ocr", "mistral3", "ovis2"),
}
NO_TEXT_MODEL_FAMILIES = {"chameleon", "ernie4_5_vl_moe", "idefics", "kosmos-2", "mistral_large4", "mllama"}
DIFFERS_FAMILIES = {"paligemma": 1.0, "paddleocr_vl": 1.0}  # measured max |Δlogit| 7.59 and 7.62: far above 1


def tensors(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def test_the_lists_in_code_are_the_measured_ones():
    assert set(NO_TEXT_MODEL) == NO_TEXT_MODEL_FAMILIES
    assert set(DIFFERS) == set(DIFFERS_FAMILIES)
    assert set(FAMILIES) == set(ARCHITECTURES) | NO_TEXT_MODEL_FAMILIES | set(DIFFERS_FAMILIES)


def test_every_family_extracts_exactly_or_is_refused(tiny_models, cli, tmp_path):
    """extract --verify on every tiny family: the extractable ones give the VLM's text-only logits within
    1e-5 (all of them exactly); the others are refused with their reason, one line, exit 2, nothing written."""
    passed, refused = {}, {}
    for family in sorted(FAMILIES):
        out = tmp_path / family
        if family in ARCHITECTURES:
            summary = extract(tiny_models(family), out, verify=True)
            verdict = summary["verify"]
            passed[family] = summary["architecture"]
            assert verdict["ok"] and verdict["load_problems"] == [], (family, verdict)
            assert verdict["max_abs_logit_delta"] <= 1e-5, (family, verdict)
            assert verdict["reference"] == ("lm modules" if family in LM_MODULES else "vlm"), family
            assert summary["tied"] == (family in TIED), family
            continue
        code, stdout, err = cli("extract", tiny_models(family), "-o", out, "--verify")
        refused[family] = err
        assert (code, stdout, err.count("\n")) == (2, "", 1), (family, err)
        reason = NO_TEXT_MODEL.get(family) or DIFFERS[family]
        assert err.startswith(f"vlmsurgeon: error: {family}: ") and reason in err, err
        assert not out.exists()
    assert passed == ARCHITECTURES
    assert set(refused) == NO_TEXT_MODEL_FAMILIES | set(DIFFERS_FAMILIES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ARCHITECTURES)  # no staging left behind


@pytest.mark.parametrize("family", sorted(DIFFERS_FAMILIES))
def test_force_writes_a_differing_family_and_verify_measures_it(tiny_models, cli, tmp_path, family):
    out = tmp_path / "out"
    code, stdout, err = cli("extract", tiny_models(family), "-o", out, "--verify", "--force", "--json")
    summary = json.loads(stdout)
    assert code == 1 and summary["forced"] == DIFFERS[family]
    assert summary["verify"]["ok"] is False and summary["verify"]["max_abs_logit_delta"] > DIFFERS_FAMILIES[family]
    assert f"warning: written with --force: {DIFFERS[family]}" in err and "error: verify:" in err
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("family", ["qwen2_vl", "gemma3"])
def test_export_loads_in_plain_transformers(tiny_models, cli, tmp_path, family):
    """Untied (qwen2_vl) and tied (gemma3) heads: every LM tensor is the VLM's, the head stays as it
    was, the tokenizer and chat template come along, and nothing else is written."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    base, out = tiny_models(family), tmp_path / "out"
    code, stdout, err = cli("extract", base, "-o", out, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors"]
        + ["tokenizer.json", "tokenizer_config.json", "vlmsurgeon.json"]
    )
    assert json.loads((out / "vlmsurgeon.json").read_text())["vlmsurgeon_extract"]["source"] == str(base)
    lm, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    vlm = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    ours = dict(vlm.model.language_model.state_dict())
    theirs = dict(lm.model.state_dict())
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    stored = tensors(out)
    assert len(stored) == summary["tensors"] == len(ours) + (0 if family == "gemma3" else 1)
    if family == "gemma3":  # tied stays tied: no lm_head stored, the head is the embeddings
        assert "lm_head.weight" not in stored and lm.config.tie_word_embeddings is True
        assert lm.lm_head.weight is lm.model.embed_tokens.weight
    else:
        assert torch.equal(stored["lm_head.weight"], vlm.lm_head.weight) and lm.config.tie_word_embeddings is False
        assert lm.lm_head.weight is not lm.model.embed_tokens.weight
    tokenizer, processor = AutoTokenizer.from_pretrained(out), AutoProcessor.from_pretrained(base)
    assert tokenizer.chat_template == processor.chat_template
    assert tokenizer("a red circle").input_ids == processor.tokenizer("a red circle").input_ids
    assert list(tmp_path.iterdir()) == [out]


def test_shards_stream_and_keep_the_stored_dtype(tiny_models, tmp_path):
    out = tmp_path / "out"
    summary = extract(tiny_models("qwen2_vl"), out, max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert summary["shards"] == len(set(index.values())) > 1 and len(index) == summary["tensors"] == 27
    assert {t.dtype for t in tensors(out).values()} == {torch.float32}


def test_a_run_is_extracted_as_its_merge(tiny_models, shapes, tmp_path):
    """finetune (LoRA on the LM) then extract RUN: bit for bit the LM of `merge RUN`, and different
    from the base's LM exactly where LoRA sat; the run's merge is built beside OUT and removed."""
    from tests.test_finetune import options
    from vlmsurgeon.ship.merge import MergePlan, merge
    from vlmsurgeon.ship.trained import load_trained
    from vlmsurgeon.train.loop import finetune

    base = tiny_models("qwen2_vl")
    run = tmp_path / "run"
    finetune(options(base, shapes, run, steps=2))
    work = tmp_path / "work"
    work.mkdir()
    summary = extract(run, work / "lm")
    assert summary["kind"] == "run" and summary["merge"]["dtype"] == "fp32"
    assert sorted(p.name for p in work.iterdir()) == ["lm"]
    merge(run, tmp_path / "merged", plan=MergePlan(dtype="fp32", target=summary["merge"]["target"]))
    extract(tmp_path / "merged", tmp_path / "from-merged")
    extract(base, tmp_path / "base-lm")
    from_run, from_merged, from_base = (
        tensors(work / "lm"),
        tensors(tmp_path / "from-merged"),
        tensors(tmp_path / "base-lm"),
    )
    assert set(from_run) == set(from_merged) and all(torch.equal(from_run[k], from_merged[k]) for k in from_run)
    lora = {m.replace("model.language_model.", "model.") + ".weight" for m in load_trained(run, None).lora}
    changed = {k for k in from_run if not torch.equal(from_run[k], from_base[k])}
    assert changed == lora and len(lora) == summary["merge"]["lora_modules_merged"] > 0


def test_bad_input_is_one_line_and_writes_nothing(tiny_models, cli, tmp_path):
    base = tiny_models("qwen2_vl")
    (tmp_path / "taken").mkdir()
    (tmp_path / "file").write_text("x")
    cases = {
        ("-o", tmp_path / "taken"): "output '{}' exists".format(tmp_path / "taken"),
        ("-o", tmp_path / "file"): "is a file, not a folder",
        ("-o", tmp_path / "v", "--component", "vision"): "--component vision: not supported",
    }
    for args, message in cases.items():
        code, stdout, err = cli("extract", base, *args)
        assert (code, stdout, err.count("\n")) == (2, "", 1) and message in err, err
    code, _, err = cli("extract", tmp_path / "absent", "-o", tmp_path / "x")
    assert code == 2 and "no such directory" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken"]
    assert list((tmp_path / "taken").iterdir()) == []
