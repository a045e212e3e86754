"""merge --verify decides on exact evidence (issue 27): every exported tensor is compared with the
base and the run merged again independently (peft's delta on the weights bitsandbytes loads) and
rounded once to the export dtype. Correct merges pass in bf16; a 1e-3 error, an unmerged LoRA
module, a shard from another run or a missing tensor fail, naming the tensor."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.test_finetune import options
from vlmsurgeon.ship.merge import MergePlan, merge
from vlmsurgeon.ship.trained import load_trained
from vlmsurgeon.ship.verify import verify
from vlmsurgeon.train.loop import finetune

LORA = "model.layers.0.self_attn.v_proj.weight"  # a LoRA module of tiny qwen2_vl's 4-bit LM, as stored


@pytest.fixture(scope="module")
def work(tiny_models, shapes, tmp_path_factory) -> Path:
    """Two QLoRA --freeze vision runs of tiny qwen2_vl (other seeds), each merged to bf16."""
    work = tmp_path_factory.mktemp("verify_exact")
    for name, seed in (("run", 0), ("other", 1)):
        finetune(options(tiny_models("qwen2_vl"), shapes, work / name, steps=4, seed=seed, lr=1e-3))
        merge(work / name, work / f"{name}-export", plan=MergePlan(dtype="bf16"))
    return work


def tampered(work: Path, tmp_path: Path, change) -> Path:
    from safetensors.torch import load_file, save_file

    out = tmp_path / "export"
    shutil.copytree(work / "run-export", out)
    tensors = load_file(str(out / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def judge(work: Path, out: Path):
    return verify(out, load_trained(work / "run", None), "bf16", "dequantized", logits=False)


def test_the_default_bf16_merge_is_ok_tensor_by_tensor(work):
    verdict = judge(work, work / "run-export")
    assert verdict.ok and verdict.gate == "trained"
    assert (verdict.lora, verdict.full, verdict.copied) == (14, 6, 38)


def test_a_merge_off_by_1e_3_relative_before_rounding_fails_naming_the_tensor(work, tmp_path, monkeypatch):
    import vlmsurgeon.ship.merge as merge_module

    real, calls = merge_module.nf4_roundtrip, []

    def off(weight, dtype):  # the first module's base weight wrong by 1e-3 relative, rounded once after
        calls.append(1)
        return real(weight, dtype) * (1 + 1e-3 if len(calls) == 1 else 1)

    monkeypatch.setattr(merge_module, "nf4_roundtrip", off)
    merge(work / "run", tmp_path / "export", plan=MergePlan(dtype="bf16"))
    monkeypatch.undo()
    verdict = judge(work, tmp_path / "export")
    assert not verdict.ok and verdict.mismatch.tensor == "model.layers.0.mlp.down_proj.weight"
    # about a fifth of bf16 values cross a rounding boundary at 1e-3; each is off by one ulp
    assert 0 < verdict.mismatch.values < verdict.mismatch.of and verdict.mismatch.max_ulps == pytest.approx(1, abs=0.01)


def test_an_unmerged_lora_module_fails(work, tiny_models, tmp_path):
    from safetensors.torch import load_file

    base = load_file(str(tiny_models("qwen2_vl") / "model.safetensors"))
    out = tampered(work, tmp_path, lambda t: t.update({LORA: base[LORA].to(torch.bfloat16)}))
    verdict = judge(work, out)
    assert not verdict.ok and verdict.mismatch.tensor == LORA and verdict.mismatch.values > 0


def test_a_shard_from_another_run_fails(work, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(work / "run-export", out)
    shutil.copy(work / "other-export" / "model.safetensors", out / "model.safetensors")
    verdict = judge(work, out)
    assert not verdict.ok and verdict.mismatch.values > 0
    assert verdict.mismatch.tensor.startswith(("model.layers.", "visual.merger."))


def test_a_missing_or_recast_tensor_fails(work, tmp_path):
    key = "visual.blocks.0.norm1.weight"
    verdict = judge(work, tampered(work, tmp_path / "a", lambda t: t.pop(key)))
    assert verdict.mismatch.tensor == key and verdict.mismatch.why == "in the base, absent from the export"
    verdict = judge(work, tampered(work, tmp_path / "b", lambda t: t.update({key: t[key].float()})))
    assert verdict.mismatch.tensor == key and verdict.mismatch.why == "stored as torch.float32, expected torch.bfloat16"


def test_an_exact_criterion_not_a_tolerance():
    """The bound is fp32 rounding of the recomputation: a value one bf16 ulp away fails even where
    the logits would not notice, and an in-bound value passes."""
    from vlmsurgeon.ship.verify import compare

    reference = torch.tensor([1.0, 0.5, -3.0, 0.0])
    exported = reference.to(torch.bfloat16)
    assert compare("w", exported, reference, torch.zeros(()), "bf16") is None
    nudged = exported.clone()
    nudged[2] = torch.tensor(-3.0 + 2**-6, dtype=torch.bfloat16)  # one bf16 ulp towards zero at 3.0
    found = compare("w", nudged, reference, torch.zeros(()), "bf16")
    assert found.values == 1 and found.max_ulps == pytest.approx(1.0) and found.max_abs == 2**-6
    # a reference just below a rounding midpoint: either neighbour is a correct rounding within the slack
    midpoint = torch.tensor([1.0 + 2**-8 - 2**-20])
    up = torch.tensor([1.0 + 2**-7], dtype=torch.bfloat16)
    assert compare("w", up, midpoint, torch.tensor([2**-19]), "bf16") is None
    assert compare("w", up, midpoint, torch.zeros(()), "bf16").values == 1


def test_a_partial_merge_is_checked_as_partial(work, tmp_path):
    """`merge --only merger`: the LM's LoRA modules stay as the base stores them, and verify
    expects exactly that (the base's tensors there, the merger's trained ones)."""
    merge(work / "run", tmp_path / "export", plan=MergePlan(dtype="bf16", only=["merger"]))
    verdict = verify(
        tmp_path / "export", load_trained(work / "run", None), "bf16", "dequantized", logits=False, only=["merger"]
    )
    assert verdict.ok and (verdict.lora, verdict.full, verdict.copied) == (0, 6, 52)
    wrong = verify(tmp_path / "export", load_trained(work / "run", None), "bf16", "dequantized", logits=False)
    assert not wrong.ok and wrong.mismatch.tensor.startswith("model.layers.")  # a full merge was expected
