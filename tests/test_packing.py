"""`finetune --packing` (issue 26): each row's logits inside a packed sequence are the row's alone,
the loss is the mean over the rows' tokens as unpacked, the packs are first-fit decreasing over a
seeded shuffled window, a packed QLoRA run resumes exactly and merges verified, the padding
figures are what the collators produce, and a family that cannot pack is refused before any
weight loads."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT
from tests.test_finetune import options
from tests.test_train_faults import error_line, no_weights
from vlmsurgeon.data.packing import REAL_TOKENS, PackedCollator, check_packing, padding, plan_packs
from vlmsurgeon.data.rows import load_dataset_rows
from vlmsurgeon.model.packing import CANNOT, PACKS
from vlmsurgeon.train.loop import finetune, load_processor, make_collator
from vlmsurgeon.train.runconfig import RunOptions

TEXT = {
    "messages": [
        {"role": "user", "content": "Say something about shapes."},
        {"role": "assistant", "content": "Shapes have sides and corners; a circle has none at all."},
    ]
}
ORDERS = [(0, 1, 2), (2, 0, 1), (1, 2, 0)]
# processors that refuse a row without an image
IMAGE_ONLY = {"paligemma", "got_ocr2"}


def _image_row(img: Path, names: list[str], prompt: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": "<image>" * len(names) + prompt},
            {"role": "assistant", "content": answer},
        ],
        "images": [str(img / f"{n}.png") for n in names],
    }


def rows_file(shapes: Path, out: Path, text: bool = True) -> Path:
    """Three rows: text-only (or, for IMAGE_ONLY families, a long one-image row), one image, two images."""
    img = shapes.parent / "img"
    first = (
        TEXT if text else _image_row(img, ["yellow_triangle"], "Describe it at length.", "A yellow triangle, alone.")
    )
    rows = [
        first,
        _image_row(img, ["red_circle"], "What is in the picture?", "A red circle."),
        _image_row(img, ["blue_square", "green_triangle"], "Are these the same?", "No: a square and a triangle."),
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def loaded(path: Path, seq_len: int = 1024):
    from transformers import AutoModelForImageTextToText

    opts = RunOptions(model=str(path), seq_len=seq_len)
    collator = make_collator(load_processor(str(path), opts)[0], opts)
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32).eval()
    packed = PackedCollator(collator, check_packing(model.config.model_type))
    packed.bind(model)
    return model, collator, packed


def forward(model, batch: dict):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != REAL_TOKENS}, use_cache=False)


def exactness(tiny_models, shapes, tmp_path, family: str) -> float:
    """The largest logit difference between a row packed (three orders, beside a padded pack of
    one) and the row alone; also checks each row's first label is cut."""
    model, collator, packed = loaded(tiny_models(family))
    samples = load_dataset_rows(str(rows_file(shapes, tmp_path / "rows.jsonl", family not in IMAGE_ONLY))).samples
    alone = [forward(model, collator([s])).logits[0] for s in samples]
    worst = 0.0
    for order in ORDERS:
        batch = packed([tuple(samples[i] for i in order), (samples[order[0]],)])
        assert "attention_mask" not in batch
        logits = forward(model, batch).logits
        at = 0
        for i in order:
            n = alone[i].shape[0]
            assert batch["labels"][0, at] == -100  # the previous row's last token predicts nothing
            worst = max(worst, (logits[0, at : at + n] - alone[i]).abs().max().item())
            at += n
        n = alone[order[0]].shape[0]
        worst = max(worst, (logits[1, :n] - alone[order[0]]).abs().max().item())
        assert (batch["labels"][1, n:] == -100).all() and int(batch[REAL_TOKENS]) == at + n
    return worst


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "idefics3", "paligemma"])
def test_a_packed_row_gives_its_logits_alone(tiny_models, shapes, tmp_path, family):
    assert exactness(tiny_models, shapes, tmp_path, family) <= 1e-4


@pytest.mark.sweep
@pytest.mark.parametrize("family", sorted(PACKS))
def test_every_family_that_packs_is_exact(tiny_models, shapes, tmp_path, family):
    assert exactness(tiny_models, shapes, tmp_path, family) <= 1e-4


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_rows_leak_without_restarting_positions_or_with_any_attention_mask(tiny_models, shapes, tmp_path, family):
    """The controls: what keeps rows apart is positions that restart and no attention mask (an
    all-ones mask turns transformers' packed-sequence detection off)."""
    model, collator, packed = loaded(tiny_models(family))
    samples = load_dataset_rows(str(rows_file(shapes, tmp_path / "rows.jsonl"))).samples
    second = forward(model, collator([samples[1]])).logits[0]
    batch = packed([(samples[0], samples[1])])
    start, n = collator([samples[0]])["input_ids"].shape[1], second.shape[0]
    assert (forward(model, batch).logits[0, start : start + n] - second).abs().max() <= 1e-4
    ones = {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}
    running = dict(batch)
    running["position_ids"] = batch["position_ids"].clone()
    running["position_ids"][..., start:] += start  # the second row's positions go on from the first's
    for leaky in (ones, running):
        assert (forward(model, leaky).logits[0, start : start + n] - second).abs().max() > 1e-2


def test_the_packed_loss_is_the_mean_over_the_rows_tokens(tiny_models, shapes, tmp_path):
    from vlmsurgeon.train.loss import chunked_loss_for

    model, collator, packed = loaded(tiny_models("qwen2_vl"))
    samples = load_dataset_rows(str(rows_file(shapes, tmp_path / "rows.jsonl"))).samples
    total, count = 0.0, 0
    for s in samples:
        batch = collator([s])
        logits, labels = forward(model, batch).logits[0, :-1], batch["labels"][0, 1:]
        total += torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
        count += int((labels != -100).sum())
    mean = total / count
    padded = forward(model, collator(samples)).loss.item()  # unpacked, one padded batch
    pack = packed([tuple(samples[i] for i in (2, 0)), (samples[1],)])
    chunked, _ = chunked_loss_for(model)
    with chunked.installed(model):
        chunked_value = forward(model, pack).loss.item()
    for value in (padded, forward(model, pack).loss.item(), chunked_value):
        assert abs(value - mean) <= 1e-5


def test_packs_are_first_fit_decreasing_over_a_seeded_shuffled_window():
    lengths = [5, 3, 7, 2, 4, 6]
    # one window: first-fit decreasing (7, 6, 5, 4, 3, 2 into bins of 10), whatever the shuffle
    assert plan_packs(lengths, 10, seed=0) == plan_packs(lengths, 10, seed=1) == [[2, 1], [5, 4], [0, 3]]
    assert plan_packs([15, 4, 6], 10, seed=0) == [[0], [2, 1]]  # too long: cut to --seq-len, alone
    many = [random.Random(7).randint(1, 600) for _ in range(300)]
    packs = plan_packs(many, 1024, seed=3, window=50)
    assert packs == plan_packs(many, 1024, seed=3, window=50) != plan_packs(many, 1024, seed=4, window=50)
    assert sorted(i for p in packs for i in p) == list(range(300))
    assert all(sum(many[i] for i in p) <= 1024 for p in packs)
    order = list(range(300))
    random.Random(3).shuffle(order)
    window = {row: at // 50 for at, row in enumerate(order)}
    assert all(len({window[i] for i in p}) == 1 for p in packs)  # never across windows


def test_padding_figures():
    figures = padding([10, 6, 4], seq_len=10, batch_size=3, seed=0)
    assert (figures.before, figures.after) == (1 / 3, 0.0)  # 30 computed, 20 real; packed 10 + (6 + 4)
    assert (figures.sequences_before, figures.sequences_after) == (3, 2)
    assert figures.line() == (
        "packing (batch 3, --seq-len 10): padding 33.3% → 0.0% of tokens computed; 3 → 2 sequences per epoch"
    )


@pytest.fixture(scope="module")
def mixed(shapes, tmp_path_factory) -> Path:
    """The 12 shapes rows, four text-only rows and four two-image rows."""
    img = shapes.parent / "img"
    rows = [json.loads(line) for line in shapes.read_text().splitlines()]
    for row in rows:
        row["images"] = [str(img.parent / p) for p in row["images"]]
    rows += [TEXT] * 4
    rows += [_image_row(img, ["red_square", c], "Same colour?", f"No, red and {c}.") for c in ("green_circle",) * 4]
    path = tmp_path_factory.mktemp("mixed") / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def packed_options(tiny_models, mixed, shapes, run: Path) -> RunOptions:
    """Four steps over three packed batches an epoch: the resume at step 2 crosses an epoch (and its
    evaluation, on rows one a sequence)."""
    eval_data = str(shapes.parent / "eval.jsonl")
    return options(
        tiny_models("qwen2_vl"), mixed, run, steps=4, save_every=2, packing=True, lr=1e-3, eval_data=eval_data
    )


@pytest.fixture(scope="module")
def packed_run(tiny_models, mixed, shapes, tmp_path_factory):
    run = tmp_path_factory.mktemp("packed") / "run"
    finetune(packed_options(tiny_models, mixed, shapes, run))
    return run


def test_a_packed_run_counts_real_tokens_and_records_packing(packed_run, tiny_models, mixed):
    opts = RunOptions(model=str(tiny_models("qwen2_vl")), seq_len=512)
    collator = make_collator(load_processor(opts.model, opts)[0], opts)
    lengths = [collator.measure(s).tokens for s in load_dataset_rows(str(mixed)).samples]
    epoch = math.ceil(len(plan_packs(lengths, 512, seed=0)) / 2)
    log = [json.loads(line) for line in (packed_run / "log.jsonl").read_text().splitlines()]
    # an epoch visits every pack once: its tokens are the rows', no padding
    assert next(r for r in log if r["step"] == epoch and "loss" in r)["tokens"] == sum(lengths)
    assert any("eval_loss" in r for r in log)
    assert json.loads((packed_run / "run.json").read_text())["inputs"]["packing"] is True
    record = json.loads((packed_run / "vlmsurgeon.json").read_text())["data"]["packing"]
    assert record == padding(lengths, 512, 2, 0).to_json()


def test_a_packed_run_resumes_exactly_and_merges_verified(packed_run, tiny_models, mixed, shapes, tmp_path, cli):
    run = tmp_path / "run"  # the run as a kill after checkpoint-2 leaves it
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(packed_run / "run.json", run / "run.json")
    shutil.copytree(packed_run / "checkpoints" / "checkpoint-2", run / "checkpoints" / "checkpoint-2")
    assert finetune(packed_options(tiny_models, mixed, shapes, run), resume=True).global_step == 4
    a = load_file(str(packed_run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    code, out, err = cli("merge", str(packed_run), "-o", str(tmp_path / "merged"), "--verify")
    assert code == 0, err
    assert "verify: ok" in out


def test_data_check_reports_what_the_collators_pad(tiny_models, shapes, cli):
    code, out, err = cli(
        "data", "check", str(shapes), "--model", str(tiny_models("qwen2_vl")), "--packing", "--batch-size", "4",
        "--seq-len", "512", "--seed", "3", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)["packing"]
    opts = RunOptions(model=str(tiny_models("qwen2_vl")), seq_len=512)
    model_collator = make_collator(load_processor(opts.model, opts)[0], opts)
    samples = load_dataset_rows(str(shapes)).samples
    lengths = [model_collator.measure(s).tokens for s in samples]
    order = list(range(len(samples)))
    random.Random(3).shuffle(order)
    batches = [model_collator([samples[i] for i in order[k : k + 4]]) for k in range(0, len(order), 4)]
    pad = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    computed = sum(b["input_ids"].numel() for b in batches)
    assert report["padding_share"]["unpacked"] == round(pad / computed, 4)
    packs = plan_packs(lengths, 512, seed=3)
    random.Random(3).shuffle(packs)
    joined = PackedCollator(model_collator, "positions")  # positions do not change what is padded
    batches = [joined([tuple(samples[i] for i in p) for p in packs[k : k + 4]]) for k in range(0, len(packs), 4)]
    pad = sum(b["input_ids"].numel() - int(b[REAL_TOKENS]) for b in batches)
    assert report["padding_share"]["packed"] == round(pad / sum(b["input_ids"].numel() for b in batches), 4)
    assert report["sequences_per_epoch"] == {"unpacked": len(samples), "packed": len(packs)}
    assert report["batch_size"] == 4 and report["seq_len"] == 512


def test_a_family_that_cannot_pack_is_refused_before_weights_load(tiny_models, shapes, tmp_path, cli, monkeypatch):
    no_weights(monkeypatch)
    run = tmp_path / "run"
    model = str(tiny_models("mllama"))
    code, _, err = cli("finetune", model, "--data", str(shapes), "--freeze", "vision", "-o", str(run), "--packing")
    assert code == 2
    assert error_line(err) == (
        "vlmsurgeon: error: --packing: mllama rows cannot be packed: its text attends to the images through "
        "cross-attention layers, which take no per-row mask (try: drop --packing; `vlmsurgeon tiny --list` "
        "shows the families that pack)"
    )
    assert not (run / "run.json").exists()  # refused before the data pre-pass
    code, _, err = cli("data", "check", str(shapes), "--model", model, "--packing")
    assert code == 2 and "mllama rows cannot be packed" in error_line(err)


def test_packing_is_sft_only(tiny_models, shapes, tmp_path, cli, monkeypatch):
    no_weights(monkeypatch)
    pairs = str(shapes.parent / "pairs.jsonl")
    model = str(tiny_models("qwen2_vl"))
    code, _, err = cli(
        "finetune", model, "--data", pairs, "--freeze", "vision", "-o", str(tmp_path / "r"), "--packing",
        "--objective", "dpo",
    )  # fmt: skip
    assert code == 2 and "packing applies to objective sft only for now, not dpo" in error_line(err)
    code, _, err = cli("data", "check", pairs, "--model", model, "--packing", "--objective", "dpo")
    assert code == 2 and "--packing applies to objective sft only for now, not dpo" in error_line(err)
    code, _, err = cli("plan", model, "--freeze", "vision", "--packing", "--objective", "dpo")
    assert code == 2 and "packing applies to objective sft only for now, not dpo" in error_line(err)


def test_plan_prices_a_packed_sequence_full(tiny_models, cli):
    model = str(tiny_models("qwen2_vl"))
    base = ("plan", model, "--freeze", "merger", "--seq-len", "2048", "--json")
    code, out, err = cli(*base, "--packing", "--image-tokens", "256")
    assert code == 0, err
    packed = json.loads(out)
    # the vision encoder (it trains) on as many whole images as fill the sequence: 8 of 256 tokens
    _, out, _ = cli(*base, "--image-tokens", "2048")
    assert packed["memory"] == json.loads(out)["memory"]
    assert packed["settings"]["packing"] is True
    said = "packed: each sequence priced full, 2,048 real tokens, its vision encoder on up to 8 image(s) of 256 tokens"
    assert said in packed["notes"]
    code, out, _ = cli("plan", str(tiny_models("mllama")), "--freeze", "vision", "--packing", "--json")
    notes = json.loads(out)["notes"]
    assert code == 0 and any(n.startswith("finetune --packing refuses this model: its text attends") for n in notes)


def test_tiny_list_says_which_families_pack(cli):
    code, out, _ = cli("tiny", "--list")
    lines = {line.split()[0]: line.split() for line in out.splitlines()[:-1]}
    assert code == 0 and lines["qwen2_vl"][3] == "packs" and lines["mllama"][3] == "-"
    assert out.splitlines()[-1] == (
        f"56 families; {len(PACKS)} pack (finetune --packing keeps their rows apart; docs/finetune.md)"
    )


def test_the_docs_name_every_family_that_packs_and_every_refusal():
    section = (ROOT / "docs" / "finetune.md").read_text().split("## Packing")[1].split("\n## ")[0]
    assert [f for f in [*PACKS, *CANNOT] if f"`{f}`" not in section] == []
