"""graft: `graft BASE --lm (extract BASE)` is BASE bit for bit; a text model of matching shapes grafted
into a tiny VLM changes exactly the LM and head, and the result trains and generates; a smaller
vocabulary keeps BASE's extra rows; every mismatch is one line, exit 2, and no OUT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.test_extract import tensors
from vlmsurgeon.ship.diff import diff
from vlmsurgeon.ship.extract import extract
from vlmsurgeon.ship.graft import graft


def text_model(config_dir: Path, out: Path, seed: int, **changes) -> Path:
    """A random text model from the config extract wrote for a VLM's LM, saved as transformers saves it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    return out


def changed(a: Path, b: Path) -> dict[str, int]:
    result = diff(a, b)
    assert (result.only_in_a, result.only_in_b, result.shape_mismatch, result.casts) == ([], [], [], {})
    return {name: c.changed for name, c in result.components.items()}


# untied, tied, experts stored transposed (converted on the way), per-expert (re-rooted), BLIP-2's OPT
@pytest.mark.parametrize("family", ["qwen2_vl", "gemma3", "qwen3_vl_moe", "glm4v_moe", "blip-2"])
def test_grafting_the_extracted_lm_back_reproduces_base(tiny_models, cli, tmp_path, family):
    base = tiny_models(family)
    extract(base, tmp_path / "lm")
    code, stdout, err = cli("graft", base, "--lm", tmp_path / "lm", "-o", tmp_path / "out", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["components"]["lm"]["kind"] == "text" and summary["components"]["lm"]["vocab_rows_kept"] == {}
    a, b = tensors(base), tensors(tmp_path / "out")
    assert list(a) == list(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert set(changed(base, tmp_path / "out").values()) == {0}


def test_a_text_model_grafted_in_trains_and_generates(tiny_models, shapes, cli, tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.test_finetune import options
    from vlmsurgeon.train.loop import finetune

    base = tiny_models("qwen2_vl")
    extract(base, tmp_path / "lm")
    donor = text_model(tmp_path / "lm", tmp_path / "text", seed=1)
    out = tmp_path / "out"
    code, stdout, err = cli("graft", base, "--lm", donor, "-o", out)
    assert code == 0 and stdout.startswith(f"{out}:"), err
    text = AutoModelForCausalLM.from_pretrained(donor, dtype=torch.float32).state_dict()
    stored, before = tensors(out), tensors(base)
    lm = dict(text)  # qwen2_vl stores its LM under the text model's own names: model.*, lm_head.weight
    assert len(lm) == 27 and all(torch.equal(stored[k], v) for k, v in lm.items())
    assert all(torch.equal(stored[k], before[k]) for k in before if k not in lm)
    differing = {k for k in lm if not torch.equal(lm[k], before[k])}
    assert changed(base, out) == {"head": 1, "lm": len(differing) - 1, "vision": 0, "merger": 0}
    record = json.loads((out / "vlmsurgeon.json").read_text())["vlmsurgeon_graft"]
    assert record["base"] == str(base) and record["components"]["lm"]["from"] == str(donor)
    result = finetune(options(out, shapes, tmp_path / "run", steps=2))
    assert result.global_step == 2
    code, stdout, err = cli("generate", out, "--prompt", "hi", "--max-new-tokens", "3", "--json")
    assert code == 0, err
    answer = json.loads(stdout)
    assert answer["kind"] == "model" and 1 <= answer["tokens"] <= 3


def test_a_smaller_vocabulary_keeps_base_rows(tiny_models, tmp_path):
    base = tiny_models("qwen2_vl")
    extract(base, tmp_path / "lm")
    donor = text_model(tmp_path / "lm", tmp_path / "text", seed=2, vocab_size=250, pad_token_id=None)
    summary = graft(base, tmp_path / "out", {"lm": donor})
    assert summary["components"]["lm"]["vocab_rows_kept"] == {"model.embed_tokens.weight": 14, "lm_head.weight": 14}
    stored, before, text = tensors(tmp_path / "out"), tensors(base), load_file(str(donor / "model.safetensors"))
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(stored[key][:250], text[key]) and torch.equal(stored[key][250:], before[key][250:])


def test_vision_and_merger_from_a_vlm_of_the_same_family(tiny_models, tmp_path):
    from vlmsurgeon.tiny.build import build_tiny

    base, other = tiny_models("qwen2_vl"), build_tiny("qwen2_vl", tmp_path / "other", seed=3)
    graft(base, tmp_path / "out", {"vision": other, "merger": other})
    counts = changed(base, tmp_path / "out")
    assert counts["lm"] == counts["head"] == 0
    stored, donor = tensors(tmp_path / "out"), tensors(other)
    assert all(torch.equal(stored[k], donor[k]) for k in stored if k.startswith("visual."))


def _mismatch(tmp_path: Path, lm: Path, kind: str) -> Path:
    """A copy of the extracted text model broken one way."""
    import shutil

    out = tmp_path / kind
    shutil.copytree(lm, out)
    stored = load_file(str(out / "model.safetensors"))
    if kind == "missing":
        del stored["model.layers.1.mlp.up_proj.weight"]
    elif kind == "renamed":
        stored["model.layers.1.mlp.upper_proj.weight"] = stored.pop("model.layers.1.mlp.up_proj.weight")
    elif kind == "extra":
        stored["model.layers.1.mlp.extra_proj.weight"] = stored["model.layers.1.mlp.up_proj.weight"].clone()
    save_file(stored, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_mismatches_are_one_line_and_leave_no_out(tiny_models, cli, tmp_path):
    base = tiny_models("qwen2_vl")
    extract(base, tmp_path / "lm")
    extract(tiny_models("llava"), tmp_path / "llama")
    cases = {
        "shape": (
            ["--lm", text_model(tmp_path / "lm", tmp_path / "wide", seed=4, intermediate_size=96)],
            "model.layers.0.mlp.down_proj.weight is (64, 96) there, (64, 128) in BASE",
        ),
        "missing": (["--lm", _mismatch(tmp_path, tmp_path / "lm", "missing")], "it has no model.layers.1.mlp.up_proj"),
        "renamed": (["--lm", _mismatch(tmp_path, tmp_path / "lm", "renamed")], "it has no model.layers.1.mlp.up_proj"),
        "extra": (
            ["--lm", _mismatch(tmp_path, tmp_path / "lm", "extra")],
            "its tensor model.layers.1.mlp.extra_proj.weight has no place in BASE",
        ),
        "family": (["--lm", tmp_path / "llama"], "a llama model; BASE (qwen2_vl) holds a qwen2 language model"),
        "vision": (["--vision", tiny_models("llava")], "a llava model, BASE is qwen2_vl"),
        "absent": (["--lm", tmp_path / "nothing"], "no such directory"),
    }
    for name, (args, message) in cases.items():
        code, stdout, err = cli("graft", base, *args, "-o", tmp_path / "out")
        assert (code, stdout, err.count("\n")) == (2, "", 1), (name, err)
        assert message in err, (name, err)
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*")), name
