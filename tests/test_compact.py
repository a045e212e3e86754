"""Frozen blocks held in 16 bits and computed in fp32 (train/compact.py): from a bf16 checkpoint,
an fp32 run's frozen vision blocks and peft's original merger take half the memory, and the loss,
every gradient, the reference pass and whole runs (SFT, DPO, GRPO with a KL term) are the same to
the bit as without it. A block that a graph would pass through goes back to fp32; a tensor that
16 bits cannot hold, or one tied to a weight outside the block, is left alone."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.test_finetune import options
from tests.test_frozen_memory import _ours, _run
from vlmsurgeon.train import compact
from vlmsurgeon.train.compact import Compacted, compact_frozen, compacted_line
from vlmsurgeon.train.loop import finetune


def _bf16_copy(source, out):
    """A tiny model saved in bf16, as released checkpoints are."""
    from transformers import AutoModelForImageTextToText

    shutil.copytree(source, out)
    for stale in out.glob("*.safetensors*"):
        stale.unlink()
    AutoModelForImageTextToText.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bf16_models(tiny_models, tmp_path_factory):
    base = tmp_path_factory.mktemp("bf16")
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = _bf16_copy(tiny_models(family), base / family)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def bf16_model(bf16_models):
    return bf16_models("qwen2_vl")


def _batch(model_dir, shapes):
    from vlmsurgeon.data.collate import Collator
    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.train.loop import load_processor
    from vlmsurgeon.train.runconfig import RunOptions

    processor, _ = load_processor(str(model_dir), RunOptions())
    samples = load_dataset_rows(str(shapes)).samples
    return Collator(processor, 512)([samples[0], samples[4]])


@pytest.fixture(scope="module")
def batch(bf16_model, shapes):
    return _batch(bf16_model, shapes)


def _step(applied, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    for name, param in applied.model.named_parameters():  # LoRA B starts at zero
        if "lora_B" in name:
            torch.manual_seed(len(name))
            torch.nn.init.normal_(param, std=0.05)
    applied.model.train()
    torch.manual_seed(1)
    loss = applied.model(**batch).loss
    loss.backward()
    grads = {n: p.grad for n, p in applied.model.named_parameters() if p.requires_grad}
    applied.model.eval()
    with torch.no_grad(), applied.model.disable_adapter():  # the reference: original merger, no LoRA
        reference = applied.model(**batch).logits
    return loss.detach(), grads, reference


def test_frozen_blocks_halve_and_the_step_is_the_same_to_the_bit(bf16_model, batch):
    run = _run(bf16_model, dtype="fp32")
    plain = _ours(run)
    held = _ours(run)
    visual = held.model.get_base_model().model.visual
    blocks = list(visual.blocks)
    before = sum(p.numel() for b in blocks for p in b.parameters())
    merger = visual.merger.original_module
    result = compact_frozen(held.model)
    assert result.blocks == [
        *(f"base_model.model.model.visual.blocks.{i}" for i in range(len(blocks))),
        "base_model.model.model.visual.merger.original_module",
    ]
    assert result.restored == []
    held_numel = before + sum(p.numel() for p in merger.parameters())
    assert result.saved_bytes == 2 * held_numel  # 4 bytes become 2
    assert {p.dtype for b in blocks for p in b.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in merger.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in visual.merger.modules_to_save["default"].parameters()} == {torch.float32}
    assert visual.patch_embed.proj.weight.dtype == torch.float32  # outside the blocks: the tower's dtype
    assert compacted_line(result) == (
        f"{len(blocks) + 1} frozen block(s) kept in bfloat16 as the checkpoint stores them, computed in fp32 "
        f"({2 * held_numel / 2**20:,.0f} MiB less)"
    )
    (loss, grads, reference), (plain_loss, plain_grads, plain_reference) = _step(held, batch), _step(plain, batch)
    assert torch.equal(loss, plain_loss)
    assert set(grads) == set(plain_grads) and all(g is not None for g in grads.values())
    assert all(torch.equal(grads[n], plain_grads[n]) for n in grads)
    assert torch.equal(reference, plain_reference)
    assert {p.dtype for b in blocks for p in b.parameters()} == {torch.bfloat16}  # narrowed after each call


@pytest.mark.parametrize("family", ["llava", "idefics3", "gemma3", "qwen2_5_vl", "qwen3_vl"])
def test_other_families_step_the_same_to_the_bit(bf16_models, shapes, family):
    model_dir = bf16_models(family)
    batch = _batch(model_dir, shapes)
    run = _run(model_dir, dtype="fp32")
    plain, held = _ours(run), _ours(run)
    result = compact_frozen(held.model)
    assert result.restored == [] and len(result.blocks) >= 2, result.blocks  # vision layers, the original merger
    assert any("original_module" in name for name in result.blocks)
    (loss, grads, reference), (plain_loss, plain_grads, plain_reference) = _step(held, batch), _step(plain, batch)
    assert torch.equal(loss, plain_loss)
    assert set(grads) == set(plain_grads) and all(torch.equal(grads[n], plain_grads[n]) for n in grads)
    assert torch.equal(reference, plain_reference)
    assert result.restored == []


def test_a_block_a_graph_passes_through_goes_back_to_fp32(capsys):
    torch.manual_seed(0)
    layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))
    for p in layers.parameters():
        p.data = p.data.to(torch.bfloat16).float()
        p.requires_grad_(False)
    result = compact_frozen(layers)
    assert result.blocks == ["0", "1"] and layers[0].weight.dtype == torch.bfloat16
    x = torch.randn(3, 4)
    with torch.no_grad():
        expected = layers[1](layers[0](x))
    assert layers[0].weight.dtype == torch.bfloat16 and result.restored == []
    wanted = x.clone().requires_grad_(True)
    out = layers[1](layers[0](wanted))
    assert torch.equal(out, expected)
    assert result.restored == ["0", "1"]
    assert "frozen block 0 is on a gradient's path: back to fp32" in capsys.readouterr().err
    assert {p.dtype for p in layers.parameters()} == {torch.float32}  # for good
    out.sum().backward()
    assert wanted.grad is not None
    layers[0](x)
    assert layers[0].weight.dtype == torch.float32


def test_what_16_bits_cannot_hold_or_a_tied_weight_is_left_alone():
    torch.manual_seed(0)
    exact, inexact, tied = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([exact, inexact, tied])
    model.head = torch.nn.Linear(4, 4)
    model.head.weight = tied.weight
    for p in model.parameters():
        p.requires_grad_(False)
    for p in (*exact.parameters(), *tied.parameters(), inexact.bias):
        p.data = p.data.to(torch.bfloat16).float()
    inexact.weight.data[0, 0] = 1 + 2**-20  # not a bf16 (nor an fp16) value
    result = compact_frozen(model)
    assert result.blocks == ["layers.0"]
    assert inexact.weight.dtype == torch.float32 and tied.weight.dtype == torch.float32
    fp16 = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    fp16[0].weight.data = torch.tensor([[1 + 2**-10, 0.5], [2.0, 3.0]])  # fp16 holds it, bf16 does not
    fp16[0].bias.data = torch.tensor([0.25, 1.0])
    fp16.requires_grad_(False)
    got = compact_frozen(fp16)
    assert got.blocks == ["0"] and fp16[0].weight.dtype == torch.float16 and got.dtypes["float16"] == 1
    assert compact_frozen(torch.nn.ModuleList([torch.nn.Linear(2, 2)])).blocks == []  # trains: left alone


RUNS = {
    "sft": dict(steps=2),
    "dpo": dict(objective="dpo", steps=2, seq_len=256),
    "grpo": dict(objective="grpo", steps=2, reward=["exact"], beta=0.04, num_generations=2, max_completion_length=4),
}


@pytest.mark.parametrize("objective", sorted(RUNS))
def test_a_run_from_a_bf16_checkpoint_ends_on_the_same_weights(
    bf16_model, shapes, tmp_path, monkeypatch, capsys, objective
):
    data = {"sft": shapes, "dpo": shapes.parent / "pairs.jsonl", "grpo": shapes.parent / "grpo.jsonl"}[objective]
    finetune(options(bf16_model, data, tmp_path / "held", **RUNS[objective]))
    assert "frozen block(s) kept in bfloat16 as the checkpoint stores them" in capsys.readouterr().err
    monkeypatch.setattr(compact, "compact_frozen", lambda model: Compacted())
    finetune(options(bf16_model, data, tmp_path / "plain", **RUNS[objective]))
    held = load_file(str(tmp_path / "held" / "adapter" / "adapter_model.safetensors"))
    plain = load_file(str(tmp_path / "plain" / "adapter" / "adapter_model.safetensors"))
    assert held.keys() == plain.keys() and any("merger" in k for k in held)
    assert all(torch.equal(held[k], plain[k]) for k in held), objective
    if objective == "grpo":
        assert (tmp_path / "held" / "completions.jsonl").read_text() == (
            tmp_path / "plain" / "completions.jsonl"
        ).read_text()
