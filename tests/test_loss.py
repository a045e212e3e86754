"""The chunked cross-entropy: the same loss and gradients as the model's own (fp32, several label
masks, padding, gradient accumulation's num_items_in_batch), the family table, and in a real
`finetune` step no tensor as large as the full logits; --no-chunked-loss logs the same losses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vlmsurgeon.plan.memory import chunk_rows
from vlmsurgeon.train.loss import chunked_loss_for
from vlmsurgeon.train.runconfig import RunOptions


def _batch(model_dir: Path, shapes: Path, rows: list[int]) -> dict:
    from vlmsurgeon.data.collate import Collator
    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.train.loop import load_processor

    processor, _ = load_processor(str(model_dir), RunOptions())
    samples = load_dataset_rows(str(shapes)).samples
    return Collator(processor, 512)([samples[i] for i in rows])


def _lora_model(model_dir: Path):
    from transformers import AutoModelForImageTextToText, set_seed

    from vlmsurgeon.recipe.freeze import apply_preset
    from vlmsurgeon.recipe.preset import load_preset
    from vlmsurgeon.train.prepare import enable_checkpointing

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    enable_checkpointing(model, offload=False)
    set_seed(0)
    applied = apply_preset(model, load_preset("lm-lora"), model.config.model_type)
    for name, param in applied.model.named_parameters():  # LoRA B starts at zero: give it a gradient path
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    applied.model.train()
    return applied.model


def _loss_and_grads(model, batch: dict, chunked=None, **kwargs) -> tuple[float, dict[str, torch.Tensor]]:
    import contextlib

    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same LoRA dropout masks on both paths
    with chunked.installed(model) if chunked else contextlib.nullcontext():
        loss = model(**batch, **kwargs).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


def _masks(batch: dict) -> dict[str, torch.Tensor]:
    """Label masks over the collated rows: the collator's own (assistant turn, padded rows), two
    separate trained spans per row (a multi-turn mask), one token, every real token."""
    ids, attention, own = batch["input_ids"], batch["attention_mask"], batch["labels"]
    multi = torch.full_like(ids, -100)
    for row in range(ids.shape[0]):
        real = attention[row].nonzero().squeeze(-1)
        first, last = int(real[0]), int(real[-1])
        span = (last - first) // 5
        multi[row, first + span : first + 2 * span] = ids[row, first + span : first + 2 * span]
        multi[row, last - span : last + 1] = ids[row, last - span : last + 1]
    one = torch.full_like(ids, -100)
    one[0, int(attention[0].nonzero()[-1])] = ids[0, int(attention[0].nonzero()[-1])]
    every = torch.where(attention.bool(), ids, torch.full_like(ids, -100))
    return {"assistant": own, "multi-turn": multi, "one-token": one, "every-token": every}


@pytest.fixture(scope="module")
def qwen(tiny_models, shapes):
    model_dir = tiny_models("qwen2_vl")
    batch = _batch(model_dir, shapes, [0, 2, 5])  # circle, triangle, …: rows of different lengths
    return _lora_model(model_dir), batch


@pytest.mark.parametrize("mask", ["assistant", "multi-turn", "one-token", "every-token"])
@pytest.mark.parametrize("accumulated", [False, True])
def test_chunked_loss_and_grads_equal_the_models_own(qwen, mask, accumulated):
    model, batch = qwen
    assert (batch["attention_mask"] == 0).any()  # a padded batch
    labels = _masks(batch)[mask]
    counted = int((labels[:, 1:] != -100).sum())
    assert counted > 0
    inputs = {**batch, "labels": labels}
    # under gradient accumulation the Trainer passes the token count of all accumulated batches
    extra = {"num_items_in_batch": torch.tensor(3 * counted)} if accumulated else {}
    chunked, reason = chunked_loss_for(model)
    assert reason is None
    chunked.rows = 5  # several chunks even for a tiny vocabulary
    plain_loss, plain_grads = _loss_and_grads(model, inputs, **extra)
    loss, grads = _loss_and_grads(model, inputs, chunked, **extra)
    assert abs(loss - plain_loss) <= 1e-5, (loss, plain_loss)
    assert set(grads) == set(plain_grads) and any("lora_A" in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-5, rtol=1e-5, msg=name)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "layers.0." in n)  # reached the first layer
    assert type(model.get_base_model().lm_head).__name__ == "Linear"  # the head is back in place


@pytest.mark.parametrize("mask", ["assistant", "every-token"])
def test_a_head_that_trains_gets_the_same_gradient(qwen, mask):
    """A frozen head takes the fused path (its input's gradient in the same pass); a head that
    trains takes the checkpointed one, and its own gradient must match too."""
    model, batch = qwen
    head = model.get_base_model().lm_head
    head.weight.requires_grad_(True)
    try:
        inputs = {**batch, "labels": _masks(batch)[mask]}
        chunked, _ = chunked_loss_for(model)
        chunked.rows = 5
        plain_loss, plain_grads = _loss_and_grads(model, inputs)
        loss, grads = _loss_and_grads(model, inputs, chunked)
    finally:
        head.weight.requires_grad_(False)
    assert abs(loss - plain_loss) <= 1e-5, (loss, plain_loss)
    assert any(n.endswith("lm_head.weight") for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_softcapping_family_matches_its_forward(tiny_models, shapes):
    """PaliGemma soft-caps the logits after its head when its text config says so."""
    model_dir = tiny_models("paligemma")
    model = _lora_model(model_dir)
    model.get_base_model().config.text_config.final_logit_softcapping = 2.0
    chunked, reason = chunked_loss_for(model)
    assert reason is None and chunked.transform is not None
    chunked.rows = 7
    batch = _batch(model_dir, shapes, [0, 1])
    plain_loss, plain_grads = _loss_and_grads(model, batch)
    loss, grads = _loss_and_grads(model, batch, chunked)
    assert abs(loss - plain_loss) <= 1e-5, (loss, plain_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-5, rtol=1e-5, msg=name)
    model.get_base_model().config.text_config.final_logit_softcapping = None
    assert chunked_loss_for(model)[0].transform is None


@pytest.mark.parametrize(
    "family, reason",
    [
        (
            "chameleon",
            "ChameleonForConditionalGeneration.forward changes the logits after its head "
            "(`image_tokens = self.model.vocabulary_mapping.image_tokens`)",
        ),
        (
            "blip-2",
            "Blip2ForConditionalGeneration.forward does not compute its loss from "
            "`logits = self.language_model.lm_head(hidden_states)`",
        ),
    ],
)
def test_families_it_cannot_reproduce_keep_the_plain_loss(family, reason):
    from transformers import AutoModelForImageTextToText

    from vlmsurgeon.tiny.build import build_config, build_tokenizer
    from vlmsurgeon.tiny.families import FAMILIES

    config = build_config(FAMILIES[family], build_tokenizer(FAMILIES[family]))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    assert chunked_loss_for(model) == (None, reason)


# --- a real finetune step with a 32,768-token vocabulary ------------------------------------

VOCAB = 32768


class LargestTensor(TorchDispatchMode):
    """The largest storage any op produces (forward and backward), in bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.nbytes = max(self.nbytes, t.untyped_storage().nbytes())
        return out


@pytest.fixture(scope="module")
def big_vocab_runs(tiny_models, shapes, tmp_path_factory):
    """`finetune` 2 steps, chunked and --no-chunked-loss, on a tiny qwen2_vl with a 32,768-token
    vocabulary and ~300-token rows; each training step (forward + backward) probed."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlmsurgeon.train.loop import finetune
    from vlmsurgeon.train.trainer import ComponentTrainer

    work = tmp_path_factory.mktemp("vocab")
    model_dir = work / "model"
    shutil.copytree(tiny_models("qwen2_vl"), model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    config.text_config.vocab_size = VOCAB
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(config).save_pretrained(model_dir)
    rows = [json.loads(line) for line in shapes.read_text().splitlines()][:4]
    data = work / "long.jsonl"
    with data.open("w") as fh:
        for row in rows:
            row["images"] = [str(shapes.parent / p) for p in row["images"]]
            row["messages"][1]["content"] = " ".join([row["messages"][1]["content"]] * 40)
            fh.write(json.dumps(row) + "\n")

    seen: list[tuple[int, int, int]] = []  # (largest bytes, batch, seq) per step
    original = ComponentTrainer.training_step

    def probed(self, model, inputs, *args, **kwargs):
        with LargestTensor() as probe:
            result = original(self, model, inputs, *args, **kwargs)
        seen.append((probe.nbytes, *inputs["input_ids"].shape))
        return result

    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ComponentTrainer, "training_step", probed)
        for chunked in (True, False):
            seen.clear()
            out = work / f"run-{chunked}"
            finetune(
                RunOptions(
                    model=str(model_dir),
                    data=str(data),
                    output=str(out),
                    freeze="vision",
                    steps=2,
                    batch_size=2,
                    seq_len=1024,
                    lr=1e-3,
                    chunked_loss=chunked,
                )
            )
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            results[chunked] = (list(seen), [r["loss"] for r in log if "loss" in r], out)
    return results


def test_no_tensor_as_large_as_the_full_logits(big_vocab_runs):
    steps, _, _ = big_vocab_runs[True]
    assert len(steps) == 2
    for largest, batch, seq in steps:
        assert seq >= 256
        full_logits = batch * seq * VOCAB * 4  # fp32 on the CPU
        assert largest < full_logits / 2, (largest, full_logits)
        chunk = chunk_rows(batch * seq, VOCAB) * VOCAB * 4  # at least 2^22 logits, at most 8 chunks
        assert largest <= max(chunk, VOCAB * 64 * 4), largest  # a chunk, or the embedding table


def test_no_chunked_loss_does_hold_the_full_logits(big_vocab_runs):
    steps, _, out = big_vocab_runs[False]
    assert len(steps) == 2
    for largest, batch, seq in steps:
        assert largest >= batch * seq * VOCAB * 4, (largest, batch, seq)
    inputs = json.loads((out / "run.json").read_text())["inputs"]
    assert inputs["chunked_loss"] is False and inputs["offload_activations"] is False


def test_chunked_and_plain_runs_log_the_same_losses(big_vocab_runs):
    chunked, plain = big_vocab_runs[True][1], big_vocab_runs[False][1]
    assert len(chunked) == len(plain) == 2
    for a, b in zip(chunked, plain, strict=True):
        assert abs(a - b) <= 1e-5, (chunked, plain)
    record = json.loads((big_vocab_runs[True][2] / "vlmsurgeon.json").read_text())
    assert record["training"]["chunked_loss"] is True
