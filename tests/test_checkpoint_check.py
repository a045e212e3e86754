"""Checkpoint check (issue 11, acceptance 6): the model a config builds against the tensors its
checkpoint stores: missing, unexpected, wrong shapes, and a head the config ties but the
checkpoint stores on its own. Warnings on stderr, exit 0, `checkpoint_check` in the JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tests.conftest import save_config

# tiny gemma3 (vlmsurgeon.tiny): text hidden 64, vocab 263; saved by transformers 5 in the legacy
# v4 layout (`language_model.model.*`), which its conversion mapping renames on load
HEAD = (263, 64)
CLEAN = {"count": 0, "first": []}


def _copy_with(source: Path, target: Path, change) -> Path:
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    tensors = load_file(weights)
    change(tensors)
    save_file(tensors, weights, metadata={"format": "pt"})
    return target


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("vlmsurgeon: warning: ")]


def _four_defects(t: dict) -> None:
    t["multi_modal_projector.extra_gate.weight"] = torch.zeros(8, 8)  # unexpected
    del t["language_model.model.norm.weight"]  # missing
    t["multi_modal_projector.mm_input_projection_weight"] = torch.zeros(32, 48)  # config: (32, 64)
    t["language_model.lm_head.weight"] = torch.randn(*HEAD)  # untied under a tying config


def test_four_defects_are_reported_as_warnings(tmp_path, cli, tiny_models):
    bad = _copy_with(tiny_models("gemma3"), tmp_path / "bad", _four_defects)
    code, out, err = cli("inspect", bad, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "config" and data["components"]["head"]["tied_to"]
    assert data["checkpoint_check"] == {
        "checked": True,
        "shards": 1,
        "tensors": 79,
        "renamed": 78,
        "missing": {"count": 1, "first": ["model.language_model.norm.weight"]},
        "unexpected": {"count": 1, "first": ["multi_modal_projector.extra_gate.weight"]},
        "shape_mismatch": {
            "count": 1,
            "first": [
                {
                    "name": "model.multi_modal_projector.mm_input_projection_weight",
                    "config": [32, 64],
                    "checkpoint": [32, 48],
                }
            ],
        },
        "untied_head_in_checkpoint": True,
        "untied_head": {"name": "lm_head.weight", "params": 263 * 64},
    }
    assert _warnings(err) == [
        "vlmsurgeon: warning: checkpoint: 1 tensor(s) of the model built from the config are not in "
        "the checkpoint: model.language_model.norm.weight",
        "vlmsurgeon: warning: checkpoint: 1 tensor(s) in the checkpoint that the model built from "
        "the config does not have: multi_modal_projector.extra_gate.weight",
        "vlmsurgeon: warning: checkpoint: 1 shape mismatch(es): "
        "model.multi_modal_projector.mm_input_projection_weight config [32, 64] vs checkpoint [32, 48]",
        "vlmsurgeon: warning: checkpoint: the config ties the head to the input embeddings but the "
        "checkpoint stores its own lm_head.weight (16,832 params); the figures count the head as tied "
        "(set tie_word_embeddings: false in config.json if the head is its own)",
    ]
    code, out, err2 = cli("inspect", bad, "--depth", "1")  # the table view warns the same way
    assert code == 0 and _warnings(err2) == _warnings(err) and "total" in out


def test_clean_tiny_model_reports_zero_in_either_layout(tmp_path, cli, tiny_models):
    """As saved by transformers 5 (legacy layout, every name renamed on load) and with the
    model's own names: both clean, so a legacy checkpoint is not reported all missing."""
    from vlmsurgeon.model.inspection import meta_model

    clean = tiny_models("gemma3")
    _, model = meta_model(str(clean))
    own = {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied

    def own_names(tensors: dict) -> None:
        tensors.clear()
        tensors.update({k: torch.zeros(shape) for k, shape in own.items()})

    current = _copy_with(clean, tmp_path / "v5", own_names)
    assert not set(own) & set(load_file(clean / "model.safetensors"))

    for directory, renamed in ((clean, 78), (current, 0)):
        code, out, err = cli("inspect", directory, "--json")
        assert code == 0 and _warnings(err) == [], err
        assert json.loads(out)["checkpoint_check"] == {
            "checked": True,
            "shards": 1,
            "tensors": 78,
            "renamed": renamed,
            "missing": CLEAN,
            "unexpected": CLEAN,
            "shape_mismatch": CLEAN,
            "untied_head_in_checkpoint": False,
            "untied_head": None,
        }


def test_mistral3_top_level_tie_with_a_stored_head(tmp_path, cli, tiny_models):
    """Mistral-Small-3.1's case: `tie_word_embeddings` true at the top level (the default), false
    in text_config, and a checkpoint with its own head."""
    clean = tiny_models("mistral3")
    config = json.loads((clean / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["text_config"]["tie_word_embeddings"] is False
    hidden, vocab = config["text_config"]["hidden_size"], config["text_config"]["vocab_size"]
    stored = _copy_with(
        clean, tmp_path / "m3", lambda t: t.update({"language_model.lm_head.weight": torch.zeros(vocab, hidden)})
    )
    code, out, err = cli("inspect", stored, "--json")
    assert code == 0, err
    check = json.loads(out)["checkpoint_check"]
    assert check["untied_head"] == {"name": "lm_head.weight", "params": vocab * hidden}
    assert [check[k]["count"] for k in ("missing", "unexpected", "shape_mismatch")] == [0, 0, 0]
    assert len(_warnings(err)) == 1 and "stores its own lm_head.weight" in err


def test_quantization_aux_tensors_are_not_unexpected(tiny_models):
    """A bitsandbytes 4-bit weight (packed U8 + absmax, quant_map, …) and a GPTQ layer (qweight,
    qzeros, scales, g_idx) stand for the weights the model has."""
    from vlmsurgeon.model.checkpoint import compare
    from vlmsurgeon.model.inspection import meta_model

    directory = tiny_models("gemma3")
    _, model = meta_model(str(directory))
    tensors = [(n, tuple(t.shape), "F32") for n, t in load_file(directory / "model.safetensors").items()]
    bnb, gptq = "language_model.model.layers.0.mlp.up_proj", "language_model.model.layers.1.mlp.up_proj"
    out = [t for t in tensors if not t[0].startswith((bnb + ".", gptq + "."))]
    out += [
        (f"{bnb}.weight", (128 * 64 // 2, 1), "U8"),
        (f"{bnb}.weight.absmax", (128,), "F32"),
        (f"{bnb}.weight.quant_map", (16,), "F32"),
        (f"{bnb}.weight.quant_state.bitsandbytes__nf4", (100,), "U8"),
    ]
    out += [
        (f"{gptq}.{leaf}", shape, "I32")
        for leaf, shape in (("qweight", (8, 128)), ("qzeros", (1, 16)), ("scales", (1, 128)), ("g_idx", (64,)))
    ]
    check = compare(model, out)
    assert (check.missing, check.unexpected, check.shape_mismatch) == ([], [], [])


def test_no_weights_is_not_checked(tmp_path, cli):
    code, out, err = cli("inspect", save_config("llava", tmp_path), "--json")
    assert code == 0 and err == ""
    assert json.loads(out)["checkpoint_check"] == {
        "checked": False,
        "reason": "no *.safetensors weights beside the config",
    }
