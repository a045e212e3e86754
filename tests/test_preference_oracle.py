"""TRL 1.16's DPOTrainer as the oracle for preference training at the model level (issue 23,
acceptance 1). On tiny qwen2_vl and llava models and one batch of mixed image / text-only pairs:
our dpo (TRL's loss_type "sigmoid") and ipo loss, the rewards / logps metrics, the per-sequence
log-probs (policy and reference) and the LoRA gradients equal TRL's, fp32, on the same peft model
and the same tensors. And our pair collation against TRL's vision collator for the same rows: the
same sequences, media tensors and answer tokens, but for one token per sequence (the newline the
template writes after the end-of-turn, which TRL scores and we do not)."""

from __future__ import annotations

import json

import pytest
import torch

FAMILIES = ("qwen2_vl", "llava")
# our objective -> TRL's loss_type, and a β that is neither one's default (0.1)
LOSSES = {"dpo": ("sigmoid", 0.3), "ipo": ("ipo", 0.2)}
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)
TOL = 1e-5
EPS = torch.finfo(torch.float32).eps
NEWLINE = "\n"


def _said(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _user(text: str, image: bool = False) -> dict:
    return {"role": "user", "content": ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def pairs(shapes, tmp_path_factory):
    """A pairs.jsonl of mixed rows in TRL's conversational preference format: two pairs of the
    shapes set (examples/make_shapes.py: 64 × 64 images), one with a 48 × 40 image (another
    patch grid for qwen2_vl), a text-only pair and a text-only pair whose prompt holds an earlier assistant
    turn; chosen and rejected answers of unequal lengths."""
    from PIL import Image

    out = tmp_path_factory.mktemp("oracle")
    small = out / "small_triangle.png"
    with Image.open(shapes.parent / "img" / "blue_triangle.png") as image:
        image.convert("RGB").resize((48, 40)).save(small)
    shipped = [json.loads(line) for line in (shapes.parent / "pairs.jsonl").read_text().splitlines()]
    rows = [{**row, "images": [str(shapes.parent / name) for name in row["images"]]} for row in shipped[:5:4]]
    assert [r["chosen"][0]["content"][0]["text"] for r in rows] == ["A red circle.", "A green square."]
    rows[1]["rejected"] = _said("A green triangle, or a green circle with corners.")
    rows += [
        {
            "prompt": shipped[0]["prompt"],  # the image, then "What is in the picture?"
            "chosen": _said("A blue triangle."),
            "rejected": _said("A blue circle."),
            "images": [str(small)],
        },
        {"prompt": [_user("Say hi.")], "chosen": _said("Hi."), "rejected": _said("Goodbye now."), "images": []},
        {
            "prompt": [_user("Say hi."), *_said("Hi."), _user("Count to three.")],
            "chosen": _said("One, two, three."),
            "rejected": _said("Four."),
            "images": [],
        },
    ]
    path = out / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _trl_dataset(path):
    """The rows as TRL takes them: a `datasets.Dataset` whose `images` are PIL images."""
    from datasets import Dataset
    from PIL import Image

    def rgb(name: str) -> Image.Image:
        with Image.open(name) as image:
            return image.convert("RGB")

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return Dataset.from_list([{**row, "images": [rgb(name) for name in row["images"]]} for row in rows])


def _trainer(model_dir, dataset, loss_type: str, beta: float, out):
    """TRL's DPOTrainer on a fresh fp32 copy of the model, LoRA on every linear layer (vision
    tower included) with B not zero (init_lora_weights=False), so the policy is not the reference
    (the adapter disabled, as ours)."""
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(out),
        beta=beta,
        loss_type=[loss_type],
        per_device_train_batch_size=len(dataset),
        report_to="none",
        use_cpu=True,
        gradient_checkpointing=False,
        max_length=None,  # no truncation: every image token and answer stays
        bf16=False,
        fp16=False,
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
    )
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_dir)  # given: TRL would look the model's hub name up
    return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor, peft_config=lora)


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("objective", LOSSES)
@pytest.mark.parametrize("family", FAMILIES)
def test_loss_metrics_and_lora_gradients_equal_trl_dpo_trainer(family, objective, tiny_models, pairs, tmp_path):
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference
    from trl.trainer.utils import use_adapter

    from vlmsurgeon.train.loss import chunked_loss_for
    from vlmsurgeon.train.objectives import Knobs
    from vlmsurgeon.train.preference import Objective, Reference, answer_logps

    loss_type, beta = LOSSES[objective]
    dataset = _trl_dataset(pairs)
    trainer = _trainer(tiny_models(family), dataset, loss_type, beta, tmp_path)
    assert isinstance(trainer.data_collator, DataCollatorForVisionPreference) and trainer.ref_model is None
    model = trainer.model
    model.train()  # TRL logs under "train" in training mode; no dropout is left (disable_dropout, LoRA p=0)
    batch = next(iter(trainer.get_train_dataloader()))

    # one batch of every pair, [chosen…, rejected…], images in some rows only
    processor = trainer.processing_class
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    with_image = (batch["input_ids"] == image_token).any(1)
    assert batch["input_ids"].shape[0] == 2 * len(dataset)
    assert with_image.sum() == 6 and (~with_image).sum() == 4
    assert batch["pixel_values"].shape[0] > 0

    # ours on TRL's tensors: labels are input_ids where completion_mask is 1. TRL's per-token
    # log-probs are aligned to completion_mask[..., 1:] (position t scores token t+1), ours to
    # labels[..., 1:]: the same positions, checked on the counts below
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"} | {"labels": labels}
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    chunked, reason = chunked_loss_for(model)
    assert reason is None

    # per sequence, policy and reference: TRL's fused head (what its loss sums) against answer_logps
    with torch.no_grad():
        trl_policy = model(**model_inputs, labels=labels, use_cache=False, fused_lm_head=True)
        policy = answer_logps(model, inputs, chunked)
        with use_adapter(model, None):
            trl_reference = model(**model_inputs, labels=labels, use_cache=False, fused_lm_head=True)
            reference = answer_logps(model, inputs, chunked)
    assert torch.equal(policy.tokens, batch["completion_mask"][:, 1:].sum(1).float())
    assert torch.equal(policy.tokens, trl_policy.label_mask.sum(1).float())
    torch.testing.assert_close(policy.sum, trl_policy.log_probs.sum(1), atol=TOL, rtol=4 * EPS)
    torch.testing.assert_close(reference.sum, trl_reference.log_probs.sum(1), atol=TOL, rtol=4 * EPS)
    assert (policy.sum - reference.sum).abs().min() > 1e-3  # the policy is not the reference
    # fp32 holds these sums (|S| up to ~360 here) to one ulp, 3e-5 at that size, so a value derived
    # from them is compared within 1e-5 plus 4 ulps of the largest S times its sensitivity to them:
    # 1 for logps, β for rewards and the dpo loss, 1 for the ipo loss (2|δ - 1/2β| / (answer tokens
    # · pairs), below 1 here). Measured on this batch, every one is within 1e-5 (printed below)
    spread = 4 * EPS * max(policy.sum.abs().max().item(), reference.sum.abs().max().item())

    # TRL: its loss and metrics (under "train"), then its gradients
    trl_loss = trainer.compute_loss(model, batch)
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    trl_loss.backward()
    trl_grads = _grads(model)

    # ours: the same peft model (same weights), the same tensors
    loss, metrics = Objective(objective, Knobs(beta=beta), chunked, Reference(model)).loss(model, inputs)
    loss.backward()
    our_grads = _grads(model)

    weight = {"loss": beta if objective == "dpo" else 1.0, "rewards/accuracies": 0.0, "logps/chosen": 1.0}
    weight |= {"logps/rejected": 1.0, "rewards/chosen": beta, "rewards/rejected": beta, "rewards/margins": beta}
    diffs = {name: abs(metrics[name].item() - trl_metrics[name]) for name in METRICS}
    diffs["loss"] = abs(loss.item() - trl_loss.item())
    for name, diff in diffs.items():
        assert diff <= TOL + spread * weight[name], (name, diff)
    assert loss.item() > 0 and abs(trl_metrics["rewards/margins"]) > 1e-3

    # LoRA gradients: the same parameters, vision tower included (the image rows reach the loss).
    # fp32 rounding grows with a gradient's size: TRL's fp32 gradients and ours each lie up to ~7e-6
    # × the tensor's largest entry (which reaches ~6) from a float64 computation of ours, so the
    # 1e-5 absolute bound is taken per unit of that entry, twice (one error on each side)
    assert our_grads.keys() == trl_grads.keys() and all("lora_" in n for n in our_grads)
    vision = [n for n in our_grads if "visual" in n or "vision_tower" in n]
    assert vision and any(trl_grads[n].abs().max() > 0 for n in vision)
    grad_diff = 0.0
    for name, theirs in trl_grads.items():
        scale = max(1.0, theirs.abs().max().item())
        torch.testing.assert_close(our_grads[name], theirs, atol=2 * TOL * scale, rtol=1e-4)
        grad_diff = max(grad_diff, (our_grads[name] - theirs).abs().max().item() / scale)
    print(
        f"{family} {objective}: loss {diffs['loss']:.1e}, rewards "
        f"{max(v for k, v in diffs.items() if k.startswith('rewards')):.1e}, logps "
        f"{max(v for k, v in diffs.items() if k.startswith('logps')):.1e}, per-sequence logps "
        f"{(policy.sum - trl_policy.log_probs.sum(1)).abs().max().item():.1e} / "
        f"{(reference.sum - trl_reference.log_probs.sum(1)).abs().max().item():.1e} (|S| {spread / 4 / EPS:.0f}), "
        f"gradients {grad_diff:.1e} × the largest entry"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_our_pair_collation_against_trl_vision_collator(family, tiny_models, pairs):
    from transformers import AutoProcessor
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from vlmsurgeon.data.collate import Collator
    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.train.loop import load_processor
    from vlmsurgeon.train.preference import PairCollator
    from vlmsurgeon.train.runconfig import RunOptions

    model_dir = tiny_models(family)
    # TRL's collator as its DPOTrainer builds it for a vision dataset (max_length=None), rows in order
    theirs = DataCollatorForVisionPreference(processor=AutoProcessor.from_pretrained(model_dir))(
        [dict(row) for row in _trl_dataset(pairs)]
    )
    data = load_dataset_rows(pairs, kind="pair")
    assert not data.bad and len(data.samples) == 5
    processor, _ = load_processor(str(model_dir), RunOptions())
    ours = PairCollator(Collator(processor, 1024))(data.samples)

    # the same model inputs, but for TRL's completion_mask and our labels
    assert set(ours) - {"labels"} == set(theirs) - {"completion_mask"}
    # the media: the same tensors, in the same order ([chosen…, rejected…], one set per image row)
    for key in ("pixel_values", "image_grid_thw"):
        if key in theirs:
            assert torch.equal(ours[key], theirs[key]), key
    tokenizer = processor.tokenizer
    newline = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(NEWLINE))
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert len(newline) == 1
    answers = []
    for row in range(2 * len(data.samples)):
        # the same sequence, token for token, both right-padded (TRL flushes its left padding)
        length = int(theirs["attention_mask"][row].sum())
        assert int(ours["attention_mask"][row].sum()) == length
        assert theirs["attention_mask"][row][:length].all() and ours["attention_mask"][row][:length].all()
        ids = theirs["input_ids"][row][:length]
        assert torch.equal(ours["input_ids"][row][:length], ids)
        for key in set(theirs) - {"input_ids", "attention_mask", "completion_mask", "pixel_values", "image_grid_thw"}:
            assert torch.equal(ours[key][row][:length], theirs[key][row][:length]), key  # mm_token_type_ids
        # the answer: ours labels the answer and its end-of-turn token; TRL's completion is that and
        # the newline the template writes after it (its completion is the prompt+answer text minus
        # the prompt's; our span ends at the turn's rstrip()ed text, as for SFT). A known difference:
        # TRL's log-prob sums hold one more token per sequence than ours on the same rows
        labelled = (ours["labels"][row] != -100).nonzero().flatten()
        completion = theirs["completion_mask"][row].nonzero().flatten()
        assert torch.equal(completion[:-1], labelled) and int(completion[-1]) == int(labelled[-1]) + 1
        assert torch.equal(ours["labels"][row][labelled], ids[labelled])
        assert int(ids[labelled[-1]]) == end_of_turn and [int(ids[completion[-1]])] == newline
        assert int(completion[-1]) == length - 1  # TRL's newline is the sequence's last token
        answers.append(tokenizer.decode(ids[labelled]))
    assert answers == [
        f"{text}<|im_end|>"
        for text in (
            "A red circle.",
            "A green square.",
            "A blue triangle.",
            "Hi.",
            "One, two, three.",
            "A red square.",
            "A green triangle, or a green circle with corners.",
            "A blue circle.",
            "Goodbye now.",
            "Four.",
        )
    ]
