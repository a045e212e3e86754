"""diff tells a dtype cast from a trained change: an fp32 base against its bf16 export shows
every tensor `cast only` and 0 changed; a real change on top of the cast is `changed`; after a
--freeze vision QLoRA run merged to the default bf16 export, vision shows 0 changed (issue 15)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.test_finetune import options
from vlmsurgeon.ship.diff import classify

# qwen2_vl tiny model: tensors and parameters per component (hand-counted from its config:
# vision 2 blocks of width 32, merger ln_q 32 + mlp 128×128 and 128→64, LM 2 layers of width 64,
# head 264 × 64, untied)
TENSORS = {"vision": 25, "merger": 6, "lm": 26, "head": 1}
PARAMS = {"vision": 20160, "merger": 24832, "lm": 91200, "head": 16896}
LM_LINEARS = {
    f"model.language_model.layers.{i}.{m}.weight"
    for i in (0, 1)
    for m in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
}
NUDGED = "model.language_model.layers.0.mlp.down_proj.weight"  # stored as model.layers.0.…


def cast_copy(src: Path, dst: Path, dtype: torch.dtype, nudge: str | None = None) -> Path:
    """`src` with every tensor cast to `dtype` (no training), optionally one tensor changed by
    far more than the rounding."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = {k: v.to(dtype) for k, v in load_file(str(src / "model.safetensors")).items()}
    if nudge is not None:
        tensors[nudge] = tensors[nudge] + 0.5
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def rows(text: str) -> dict[str, list[str]]:
    """The table's rows, by component: tensors, changed, cast only, unchanged, max |Δ|, relative."""
    return {cells[0]: cells[1:] for cells in map(str.split, text.splitlines()) if cells and cells[0] in TENSORS}


def diff_json(cli, a: Path, b: Path) -> dict:
    code, out, err = cli("diff", a, b, "--json")
    assert code == 0, err
    return json.loads(out)


def test_classify_is_bit_exact_in_both_directions():
    a = torch.tensor([1.0, 1 / 3, -2.5e-3, 1e5, 0.0])
    rounded = a.to(torch.bfloat16)
    assert classify(a, rounded) == "cast"  # B is A rounded to B's dtype
    assert classify(rounded, a) == "cast"  # A is the narrower side
    assert classify(rounded, rounded.float()) == "cast"  # a widening cast is exact
    assert classify(a.half(), a.half().to(torch.bfloat16)) == "cast"
    assert classify(a, (a * 1.0001).to(torch.bfloat16)) == "cast"  # a change below bf16's spacing is lost
    assert classify(a, a.clone()) == "unchanged"
    assert classify(a, rounded.float()) == "changed"  # same dtype: no cast explains the rounding
    off_by_one = rounded.clone()
    off_by_one.view(torch.int16)[1] += 1  # the next bf16 value after 1/3
    assert classify(a, off_by_one) == "changed"
    assert classify(rounded, off_by_one) == "changed"


def test_bf16_export_without_training_is_cast_only(tiny_models, tmp_path, cli):
    base = tiny_models("qwen2_vl")
    export = cast_copy(base, tmp_path / "bf16", torch.bfloat16)
    result = diff_json(cli, base, export)
    assert result["casts"] == {"float32->bfloat16": 58}
    for name, c in result["components"].items():
        assert (c["tensors"], c["changed"], c["cast_only"], c["unchanged"]) == (TENSORS[name], 0, TENSORS[name], 0)
        assert (c["cast_only_params"], c["changed_params"], c["changed_tensors"]) == (PARAMS[name], 0, [])
        assert c["max_abs_change"] == c["relative_frobenius"] == 0.0
        assert 0 < c["cast_max_abs_change"] < 2**-8  # bf16 rounding of weights below 1 in size
    largest = max(c["cast_max_abs_change"] for c in result["components"].values())

    code, out, err = cli("diff", base, export)
    assert code == 0, err
    assert {k: v[:4] for k, v in rows(out).items()} == {k: [str(n), "0", str(n), "0"] for k, n in TENSORS.items()}
    note = f"cast only: 58 tensors differ only by the fp32 → bf16 rounding (max |Δ| {largest:.3g})"
    assert out.splitlines()[-1] == note

    back = diff_json(cli, export, base)  # the wider side second: the same tensors, cast the other way
    assert back["casts"] == {"bfloat16->float32": 58}
    assert {k: (c["changed"], c["cast_only"]) for k, c in back["components"].items()} == {
        k: (0, n) for k, n in TENSORS.items()
    }


def test_a_real_change_beside_the_cast_is_changed(tiny_models, tmp_path, cli):
    base = tiny_models("qwen2_vl")
    export = cast_copy(base, tmp_path / "bf16", torch.bfloat16, nudge="model.layers.0.mlp.down_proj.weight")
    result = diff_json(cli, base, export)
    assert result["casts"] == {"float32->bfloat16": 57}
    lm = result["components"]["lm"]
    assert (lm["changed"], lm["cast_only"], lm["unchanged"], lm["changed_tensors"]) == (1, 25, 0, [NUDGED])
    assert (lm["changed_params"], lm["cast_only_params"]) == (64 * 128, PARAMS["lm"] - 64 * 128)
    assert lm["max_abs_change"] == pytest.approx(0.5, abs=2**-7)  # the nudge, plus its rounding
    others = {k: (c["changed"], c["cast_only"]) for k, c in result["components"].items() if k != "lm"}
    assert others == {k: (0, n) for k, n in TENSORS.items() if k != "lm"}
    code, out, _ = cli("diff", base, export)
    assert rows(out)["lm"][:4] == ["26", "1", "25", "0"]
    assert out.splitlines()[-1].startswith("cast only: 57 tensors differ only by the fp32 → bf16 rounding")


def test_freeze_vision_qlora_export_shows_vision_unchanged(tiny_models, shapes, tmp_path, cli):
    from vlmsurgeon.ship.merge import merge
    from vlmsurgeon.train.loop import finetune

    base = tiny_models("qwen2_vl")
    finetune(options(base, shapes, tmp_path / "run", steps=2))
    merge(tmp_path / "run", tmp_path / "export")  # the defaults: dequantized target, bf16
    assert json.loads((tmp_path / "export" / "config.json").read_text())["dtype"] == "bfloat16"
    c = diff_json(cli, base, tmp_path / "export")["components"]
    assert (c["vision"]["changed"], c["vision"]["cast_only"], c["vision"]["max_abs_change"]) == (0, 25, 0.0)
    assert set(c["lm"]["changed_tensors"]) == LM_LINEARS  # LoRA on every LM linear, merged
    assert (c["lm"]["changed"], c["lm"]["cast_only"]) == (14, 12)  # norms, biases, embeddings: rounding
    assert (c["merger"]["changed"], c["merger"]["cast_only"]) == (6, 0)  # trained in full
    assert (c["head"]["changed"], c["head"]["cast_only"]) == (0, 1)
    code, out, err = cli("diff", base, tmp_path / "export")
    assert code == 0, err
    assert rows(out)["vision"] == ["25", "0", "25", "0", "0", "0"]
    assert out.splitlines()[-1].startswith("cast only: 38 tensors differ only by the fp32 → bf16 rounding")
