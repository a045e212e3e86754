"""Data: three input formats, every bad-row kind reported by line before training, and labels
that cover exactly the assistant turns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT
from vlmsurgeon.data.collate import IGNORE, Collator
from vlmsurgeon.data.rows import load_dataset_rows

TWO_TURNS = {
    "messages": [
        {"role": "user", "content": "<image>What colour?"},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes, red."},
    ],
    "images": ["img/red.png"],
}


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32), (220, 30, 30)).save(tmp_path / "img" / "red.png")
    return tmp_path


def write_rows(folder: Path, rows: list) -> Path:
    path = folder / "train.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def subsequence_positions(ids: list[int], sub: list[int]) -> list[int]:
    for start in range(len(ids) - len(sub) + 1):
        if ids[start : start + len(sub)] == sub:
            return list(range(start, start + len(sub)))
    raise AssertionError("not found")


@pytest.mark.parametrize(
    "family,end", [("qwen2_vl", "<|im_end|>"), ("llava", "<|im_end|>"), ("gemma3", "<end_of_turn>")]
)
def test_labels_cover_exactly_the_assistant_turns(tiny_models, folder, family, end):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models(family))
    data = load_dataset_rows(write_rows(folder, [TWO_TURNS]))
    batch = Collator(processor, 512)(data.samples)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    tok = processor.tokenizer
    # expected, computed independently: the answer's tokens plus the end-of-turn token, each
    # found right after its own "assistant\n" header
    expected: list[int] = []
    for answer in ("Red.", "Yes, red."):
        header = tok.encode(f"assistant\n{answer}{end}", add_special_tokens=False)
        body = tok.encode(f"{answer}{end}", add_special_tokens=False)
        at = subsequence_positions(ids, header)
        expected += at[len(header) - len(body) :]
    positions = [i for i, label in enumerate(labels) if label != IGNORE]
    assert positions == expected
    assert all(labels[i] == ids[i] for i in positions)
    image_id = processor.image_token_id if hasattr(processor, "image_token_id") else None
    if image_id is not None:
        assert all(labels[i] == IGNORE for i, t in enumerate(ids) if t == image_id)


BAD = [
    ('{"messages": [', "invalid JSON"),
    (
        {
            "messages": [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Yo"}],
            "images": ["img/missing.png"],
        },
        "image not found: img/missing.png",
    ),
    (
        {
            "messages": [{"role": "user", "content": "<image><image>Hi"}, {"role": "assistant", "content": "Yo"}],
            "images": ["img/red.png"],
        },
        "2 image placeholder(s) but 1 image(s)",
    ),
    (
        {
            "messages": [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "  "}],
            "images": ["img/red.png"],
        },
        "empty assistant turn (message 1)",
    ),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, "message 0: unknown role 'robot'"),
    ({"text": "hello"}, "unknown row format (keys: text)"),
]


@pytest.mark.parametrize("row,reason", BAD)
def test_each_bad_row_kind_is_reported_with_its_line(tiny_models, folder, cli, row, reason):
    data = write_rows(folder, [TWO_TURNS, row, TWO_TURNS])
    run = folder / "run"
    code, out, err = cli(
        "finetune", tiny_models("qwen2_vl"), "--data", data, "-o", run, "--freeze", "vision", "--steps", "1"
    )
    assert code == 2 and "Traceback" not in err
    assert f"line 2: {reason}" in err and "1 bad row(s) of 3" in err and "--skip-bad-rows" in err
    assert sorted(p.name for p in run.iterdir()) == ["bad_rows.txt"]  # nothing else was written
    assert f"line 2: {reason}" in (run / "bad_rows.txt").read_text()


def test_skip_bad_rows_trains_on_the_rest(tiny_models, folder, cli):
    data = write_rows(folder, [TWO_TURNS, BAD[1][0], TWO_TURNS])
    run = folder / "run"
    code, out, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        data,
        "-o",
        run,
        "--freeze",
        "vision",
        "--steps",
        "2",
        "--skip-bad-rows",
    )
    assert code == 0, err
    assert "skipped 1 bad row(s)" in out
    record = json.loads((run / "vlmsurgeon.json").read_text())["data"]
    assert record["path"] == str(data) and len(record["sha256"]) == 64
    assert {k: record[k] for k in ("rows", "images", "videos", "truncated", "skipped", "skipped_bad_rows")} == {
        "rows": 2,
        "images": 2,
        "videos": 0,
        "truncated": 0,
        "skipped": 1,
        "skipped_bad_rows": 1,
    }


def test_three_formats_give_the_same_samples(tmp_path):
    messages_dir, conv_dir = tmp_path / "m", tmp_path / "c"
    for out, fmt in ((messages_dir, "messages"), (conv_dir, "conversations")):
        subprocess.run(
            [sys.executable, str(ROOT / "examples" / "make_shapes.py"), str(out), "--format", fmt],
            check=True,
            capture_output=True,
        )
    from datasets import Dataset, Sequence
    from datasets import Image as ImageFeature

    rows = [json.loads(line) for line in (messages_dir / "train.jsonl").read_text().splitlines()]
    table = Dataset.from_list(
        [{"messages": r["messages"], "images": [str(messages_dir / p) for p in r["images"]]} for r in rows]
    )
    table = table.cast_column("images", Sequence(ImageFeature()))
    table.save_to_disk(str(tmp_path / "disk"))
    a = load_dataset_rows(messages_dir / "train.jsonl")
    b = load_dataset_rows(conv_dir / "train.jsonl")
    c = load_dataset_rows(tmp_path / "disk")
    assert not a.bad and not b.bad and not c.bad and len(a.samples) == len(b.samples) == len(c.samples) == 12
    for x, y, z in zip(a.samples, b.samples, c.samples, strict=True):
        assert x.messages == y.messages == z.messages
        assert [p.name for p in x.images] == [p.name for p in y.images]  # each relative to its file
        assert len(z.images) == 1 and isinstance(z.images[0], (bytes, Path))  # read undecoded


def test_gemma3_counts_its_soft_image_tokens_not_the_marker(tiny_models, folder):
    """Gemma3Processor's own image_token_id is <start_of_image> (one per image); the image's
    embeddings go to the <image_soft_token>s after it. Counting the marker read 1 token per image
    and put the media's end before the soft tokens, so a --seq-len cutting through them passed."""
    from transformers import AutoConfig, AutoProcessor

    from vlmsurgeon.errors import BadInput

    model = tiny_models("gemma3")
    processor = AutoProcessor.from_pretrained(model)
    per_image = AutoConfig.from_pretrained(model).mm_tokens_per_image
    soft = processor.tokenizer.image_token_id
    assert processor.image_token_id != soft  # the quirk this guards against
    sample = load_dataset_rows(write_rows(folder, [TWO_TURNS])).samples[0]
    stats = Collator(processor, 512).measure(sample)
    ids = Collator(processor, 512).full_encoding(sample)["input_ids"][0].tolist()
    where = [i for i, t in enumerate(ids) if t == soft]
    assert stats.image_tokens == per_image == len(where)
    assert stats.media_end == where[-1] + 1
    cut = Collator(processor, where[1])  # the row ends inside the image's soft tokens
    with pytest.raises(BadInput, match="media tokens run past --seq-len"):
        cut.truncate(cut.full_encoding(sample), sample)
