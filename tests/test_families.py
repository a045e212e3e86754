"""Families with a tied head or a bidirectional prefix (Gemma 3, PaliGemma) on the default path:
the LM trains in 4-bit while the tied head keeps its embedding's layout, the export verifies, and
PaliGemma's prefix never lets a position see a later one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.family_sweep import lm_linear_kinds
from vlmsurgeon.data.collate import IGNORE, Collator
from vlmsurgeon.data.rows import load_dataset_rows
from vlmsurgeon.train.loop import finetune
from vlmsurgeon.train.runconfig import RunOptions


@pytest.mark.parametrize("family", ["gemma3", "paligemma"])
def test_tied_head_family_trains_in_4bit_and_verifies(tiny_models, shapes, tmp_path, family, cli):
    import bitsandbytes as bnb

    result = finetune(
        RunOptions(
            model=str(tiny_models(family)),
            data=str(shapes),
            output=str(tmp_path / "run"),
            freeze="vision",
            steps=2,
            batch_size=2,
            seq_len=1024,
            lr=1e-3,
        )
    )
    model = result.applied.model
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    assert type(head) is torch.nn.Linear and not isinstance(head, bnb.nn.Linear4bit)
    assert head.weight is embed.weight  # still tied: one tensor, the embedding's
    kinds = lm_linear_kinds(result.applied)
    assert kinds["lm"] == {True}  # every LM Linear is 4-bit ...
    assert all(kinds[c] == {False} for c in kinds if c != "lm")  # ... and nothing else
    lm_linears = [
        n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit) and result.applied.component(n) == "lm"
    ]
    assert len(lm_linears) == 14  # 2 layers × (q, k, v, o, gate, up, down)
    record = json.loads((tmp_path / "run" / "vlmsurgeon.json").read_text())
    assert record["quantize"] == "4bit-nf4-double-quant" and record["training"]["global_step"] == 2
    code, out, err = cli("merge", tmp_path / "run", "-o", tmp_path / "export", "--verify")
    assert code == 0, err
    assert "merged 14 LoRA modules" in out and "verify: ok" in out.splitlines()


def _paligemma(tmp_path: Path, layers: int) -> tuple[object, object]:
    from transformers import PaliGemmaForConditionalGeneration

    from vlmsurgeon.tiny.build import build_config, build_processor, build_tokenizer
    from vlmsurgeon.tiny.families import FAMILIES

    family = FAMILIES["paligemma"]
    tokenizer = build_tokenizer(family)
    processor = build_processor(family, tokenizer)
    config = build_config(family, tokenizer)
    config.text_config.num_hidden_layers = layers
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config).eval()
    model.config._attn_implementation = "eager"
    return model, processor


def _two_answer_batch(tmp_path: Path, processor, rgb: tuple[int, int, int], turns: list[str]) -> dict:
    """One image and two question/answer turns, collated as finetune collates them."""
    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32), rgb).save(tmp_path / "img" / "a.png")
    messages = [
        {"role": role, "content": ("<image>" if i == 0 else "") + text}
        for i, (role, text) in enumerate(zip(["user", "assistant"] * 2, turns, strict=False))
    ]
    (tmp_path / "train.jsonl").write_text(json.dumps({"messages": messages, "images": ["img/a.png"]}) + "\n")
    return Collator(processor, 1024)(load_dataset_rows(tmp_path / "train.jsonl").samples)


def test_paligemma_prefix_never_sees_later_tokens(tmp_path):
    model, processor = _paligemma(tmp_path, layers=4)
    batch = _two_answer_batch(tmp_path, processor, (220, 30, 30), ["What colour?", "Red.", "Sure?", "Yes, red."])
    labels, types = batch.pop("labels")[0], batch["token_type_ids"][0]
    trained = (labels != IGNORE).nonzero().flatten().tolist()
    first = trained[0]
    # the prefix is exactly the prompt before the first answer token; everything after is causal
    assert types[:first].eq(0).all() and types[first:].eq(1).all()

    def logits(ids):
        with torch.no_grad():
            return model(**{**batch, "input_ids": ids}).logits[0]

    reference = logits(batch["input_ids"])
    other = processor.tokenizer.convert_tokens_to_ids("Z")
    for position in (trained[0], trained[1], trained[-1]):  # each answer position in turn
        ids = batch["input_ids"].clone()
        assert ids[0, position] != other
        ids[0, position] = other
        changed = logits(ids)
        drift = (changed[:position] - reference[:position]).abs().max().item()
        assert drift <= 1e-6, (position, drift)
        assert (changed[position] - reference[position]).abs().max() > 1e-3  # the change is real


def test_old_prefix_marking_leaked(tmp_path):
    """The guard above has teeth: marking only the answers as suffix (the old rule) lets an
    earlier position see a later answer token on this same model."""
    model, processor = _paligemma(tmp_path, layers=4)
    batch = _two_answer_batch(tmp_path, processor, (20, 30, 220), ["Colour?", "Blue.", "Again?", "Blue."])
    labels = batch.pop("labels")
    batch["token_type_ids"] = (labels != IGNORE).long()  # the old marking
    position = int((labels[0] != IGNORE).nonzero()[0])
    with torch.no_grad():
        reference = model(**batch).logits[0]
        ids = batch["input_ids"].clone()
        ids[0, position] = processor.tokenizer.convert_tokens_to_ids("Z")
        changed = model(**{**batch, "input_ids": ids}).logits[0]
    assert (changed[:position] - reference[:position]).abs().max() > 1e-4
