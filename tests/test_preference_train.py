"""Preference training's own parts on a tiny qwen2_vl: pairs collated with one media set per row,
answer log-probs from the head's input equal to the full logits' (values and gradients), and the
reference (adapter disabled, fully trained parts at their start) equal to the untrained model."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from vlmsurgeon.data.collate import Collator
from vlmsurgeon.data.rows import Sample
from vlmsurgeon.train.loop import load_processor
from vlmsurgeon.train.runconfig import RunOptions


def _text(role: str, text: str, train: bool = False, image: bool = False) -> dict:
    parts = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return {"role": role, "content": parts, "train": train}


def _pairs() -> list[Sample]:
    """An image pair, a text pair with an earlier (context) answer, answers of unequal lengths."""
    red = Image.new("RGB", (40, 28), (200, 30, 30))
    return [
        Sample(
            1,
            [_text("user", "What is in the picture?", image=True), _text("assistant", "A red circle.", True)],
            [red],
            rejected=_text("assistant", "A blue square on a green field.", True),
        ),
        Sample(
            2,
            [
                _text("user", "Say hi."),
                _text("assistant", "Hi."),
                _text("user", "Count to three."),
                _text("assistant", "One, two, three.", True),
            ],
            rejected=_text("assistant", "Four.", True),
        ),
    ]


@pytest.fixture(scope="module")
def qwen(tiny_models):
    from transformers import AutoModelForImageTextToText

    from vlmsurgeon.train.preference import PairCollator

    model_dir = tiny_models("qwen2_vl")
    processor, _ = load_processor(str(model_dir), RunOptions())
    collator = Collator(processor, 512)
    batch = PairCollator(collator)(_pairs())
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    return model_dir, collator, batch, model


def _lora(model_dir, seed: int = 0):
    from transformers import AutoModelForImageTextToText, set_seed

    from vlmsurgeon.recipe.freeze import apply_preset
    from vlmsurgeon.recipe.preset import freeze_preset

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    set_seed(seed)
    applied = apply_preset(model, freeze_preset("vision", ["vision", "merger", "lm", "head"]), "qwen2_vl")
    return applied.model


def test_a_pair_is_two_sequences_with_the_same_media_and_only_the_last_answers_labelled(qwen):
    _, collator, batch, _ = qwen
    singles = [collator([s]) for s in _pairs()]
    assert batch["input_ids"].shape[0] == 4  # [chosen 1, chosen 2, rejected 1, rejected 2]
    # the image row's media, once per side, the same tensors (TRL #2660: never cut or dropped)
    patches = singles[0]["pixel_values"].shape[0]
    assert batch["pixel_values"].shape[0] == 2 * patches
    assert torch.equal(batch["pixel_values"][:patches], batch["pixel_values"][patches:])
    assert torch.equal(batch["image_grid_thw"][0], batch["image_grid_thw"][1])
    tokenizer = collator.processor.tokenizer
    answers = []
    for row in range(4):
        labelled = batch["labels"][row][batch["labels"][row] != -100]
        answers.append(tokenizer.decode(labelled).strip())
    assert [a.split("<|im_end|>")[0] for a in answers] == [
        "A red circle.",
        "One, two, three.",
        "A blue square on a green field.",
        "Four.",
    ]
    # the prompt side of each pair is the same tokens
    for row in (0, 1):
        prompts = []
        for side in (row, row + 2):
            start = int(batch["attention_mask"][side].nonzero()[0])  # after any left padding
            first = int((batch["labels"][side] != -100).nonzero()[0])
            prompts.append(batch["input_ids"][side][start:first])
        assert torch.equal(prompts[0], prompts[1]) and len(prompts[0]) > 5


def test_answer_logps_from_the_head_input_equal_the_full_logits(qwen):
    from vlmsurgeon.train.loss import chunked_loss_for
    from vlmsurgeon.train.preference import answer_logps

    model_dir, _, batch, _ = qwen
    model = _lora(model_dir)
    for name, param in model.named_parameters():  # LoRA B starts at zero: give it a gradient path
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    model.eval()  # no dropout: both paths see the same network
    chunked, reason = chunked_loss_for(model)
    assert reason is None

    def run(head):
        model.zero_grad(set_to_none=True)
        logps = answer_logps(model, batch, head)
        (logps.sum * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logps, grads

    fused, fused_grads = run(chunked)
    plain, plain_grads = run(None)
    labelled = (batch["labels"][:, 1:] != -100).sum(1).float()
    assert torch.equal(fused.tokens, labelled) and torch.equal(plain.tokens, labelled)
    assert torch.allclose(fused.sum, plain.sum, atol=1e-5, rtol=0)
    assert fused_grads.keys() == plain_grads.keys() and len(fused_grads) > 10
    for name in fused_grads:
        assert torch.allclose(fused_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4), name


def test_answer_logps_are_the_sum_of_the_labelled_tokens_log_probs(qwen):
    from vlmsurgeon.train.preference import answer_logps

    _, _, batch, model = qwen
    with torch.no_grad():
        ours = answer_logps(model, batch, None)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    logprobs = logits[:, :-1].log_softmax(-1)
    targets = batch["labels"][:, 1:]
    for row in range(4):
        keep = targets[row] != -100
        expected = logprobs[row][keep].gather(-1, targets[row][keep].unsqueeze(-1)).sum()
        assert math.isclose(ours.sum[row].item(), expected.item(), abs_tol=1e-5)


def test_the_reference_is_the_model_before_training_without_a_second_copy(qwen):
    from vlmsurgeon.train.loss import chunked_loss_for
    from vlmsurgeon.train.preference import Reference, answer_logps

    model_dir, _, batch, base = qwen
    model = _lora(model_dir)
    model.eval()
    chunked, _ = chunked_loss_for(model)
    with torch.no_grad():
        untrained = answer_logps(model, batch, chunked)
        from_base = answer_logps(base, batch, None)
    assert torch.allclose(untrained.sum, from_base.sum, atol=1e-5)
    reference = Reference(model)
    # the merger trains in full through peft's modules_to_save, which keeps its start itself:
    # nothing is copied for it, and no parameter of the base is
    assert reference.copied == (0, 0)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in trained) and any("modules_to_save" in n for n in trained)
    with torch.no_grad():  # "training": every trained tensor moves
        for param in trained.values():
            param.add_(torch.randn_like(param) * 0.05)
        moved = answer_logps(model, batch, chunked)
        with reference.active(model):
            again = answer_logps(model, batch, chunked)
        after = answer_logps(model, batch, chunked)
    assert (moved.sum - untrained.sum).abs().min() > 1e-3
    assert torch.allclose(again.sum, untrained.sum, atol=1e-5)
    assert torch.equal(after.sum, moved.sum)


def test_a_component_trained_in_full_without_peft_is_copied_once_and_swapped_back(qwen):
    from transformers import AutoModelForImageTextToText

    from vlmsurgeon.recipe.freeze import apply_preset
    from vlmsurgeon.recipe.preset import load_preset
    from vlmsurgeon.train.preference import Reference, answer_logps

    model_dir, _, batch, _ = qwen
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    applied = apply_preset(model, load_preset("projector-only"), "qwen2_vl")
    model = applied.model
    model.eval()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    reference = Reference(model)
    assert reference.copied == (
        sum(p.numel() for p in trained.values()),
        sum(p.numel() * p.element_size() for p in trained.values()),
    )
    assert reference.copied[0] == 24_832  # the tiny merger, as `inspect` counts it
    with torch.no_grad():
        start = answer_logps(model, batch, None)
        for param in trained.values():
            param.add_(0.1)
        with reference.active(model):
            assert torch.allclose(answer_logps(model, batch, None).sum, start.sum, atol=1e-6)
        assert not torch.allclose(answer_logps(model, batch, None).sum, start.sum, atol=1e-3)
    model.train()
    with reference.active(model):  # the reference never records a graph, even when called with one
        assert not torch.is_grad_enabled() and not model.training
        assert not answer_logps(model, batch, None).sum.requires_grad
    assert torch.is_grad_enabled() and model.training
