"""Data faults found before training, each once: an empty file, image bytes that are not bytes,
pixel settings on transformers 5's SizeDict processors, and video at the peers' default sampling
(LLaMA-Factory's mllm_video_demo.json, shape for shape, with our own small clips)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from tests.test_formats import write_video
from vlmsurgeon.data.rows import load_dataset_rows

QUESTION = [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Red."}]


def _rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- empty data


def test_empty_data_is_bad_input_not_a_passing_check(tiny_models, tmp_path, cli):
    """`data check` on a file with no rows printed an all-zero report and exited 0: a CI gate
    that passed on nothing."""
    model = tiny_models("qwen2_vl")
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("none.json", "[]")):
        data = tmp_path / name
        data.write_text(text)
        code, out, err = cli("data", "check", data, "--model", model)
        assert (code, out) == (2, ""), (name, code, out)
        assert err == f"vlmsurgeon: error: data '{data}': no rows (try: check the file's format (see docs/data.md))\n"
        code, out, err = cli("finetune", model, "--data", data, "-o", tmp_path / "run", "--freeze", "vision")
        assert code == 2 and err.count("\n") == 1 and f"data '{data}': no rows" in err, (name, err)


# ---------------------------------------------------------------- image bytes that are not bytes


def _png_b64() -> str:
    import base64
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


NOT_BYTES = [
    ({"bytes": "not bytes at all"}, "image 'bytes' is text that is not base64 (not bytes at all)"),
    ({"bytes": 12.5}, "image 'bytes' must be bytes or base64 text, not float"),
    ({"bytes": {"a": 1}}, "image 'bytes' must be bytes or base64 text, not dict"),
]


def test_image_bytes_that_are_not_bytes_are_a_bad_row(tiny_models, tmp_path, cli):
    """`{"bytes": "<text>"}` raised TypeError in `bytes(...)` while reading rows: exit 3 from
    finetune, data check and eval, even with --skip-bad-rows. One media check now reports it."""
    from vlmsurgeon.use.evaluate import load_rows

    model = tiny_models("qwen2_vl")
    good = {"messages": QUESTION, "images": [{"bytes": _png_b64()}]}  # base64 text under 'bytes' reads
    data = _rows(tmp_path / "d.jsonl", [good] + [{"messages": QUESTION, "images": [ref]} for ref, _ in NOT_BYTES])
    # data check: the rows that would not train, exit 1 (its contract), one line
    code, out, err = cli("data", "check", data, "--model", model, "--json")
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1
    assert "data check: 3 row(s) of 4 would not train, first: line 2: " + NOT_BYTES[0][1] in err
    report = json.loads(out)
    assert report["rows"] == 1 and report["bad_rows"] == [f"line {i}: {r}" for i, (_, r) in enumerate(NOT_BYTES, 2)]
    # finetune: refused before any weight loads (exit 2) ...
    code, out, err = cli(
        "finetune", model, "--data", data, "-o", tmp_path / "run", "--freeze", "vision", "--steps", "1"
    )
    assert code == 2 and "3 bad row(s) of 4, first: line 2: " + NOT_BYTES[0][1] in err
    # ... or trains on the rest with --skip-bad-rows, counting them
    run = tmp_path / "run2"
    code, out, err = cli(
        "finetune", model, "--data", data, "-o", run, "--freeze", "vision", "--steps", "1", "--skip-bad-rows"
    )
    assert code == 0, err
    assert json.loads((run / "vlmsurgeon.json").read_text())["data"]["skipped"] == 3
    # eval: skipped rows, reported
    rows, skipped = load_rows(str(data))
    assert len(rows) == 1 and [str(b) for b in skipped] == report["bad_rows"]
    # the one check every command's media goes through (generate's --image too)
    from vlmsurgeon.data.media import MediaError, check_media

    for ref, reason in NOT_BYTES:
        with pytest.raises(MediaError) as caught:
            check_media(ref, "image", tmp_path)
        assert str(caught.value) == reason


# ---------------------------------------------------------------- pixel settings on SizeDict processors


def test_pixel_settings_reach_sizedict_processors(tiny_models, tmp_path, cli):
    """transformers 5 image/video processors hold a SizeDict in `.size`, not a dict: --max-pixels
    and --image-size were refused as "no such setting"."""
    from transformers import AutoProcessor
    from transformers.image_utils import SizeDict

    from vlmsurgeon.data.check import apply_overrides
    from vlmsurgeon.data.collate import Collator

    Image.new("RGB", (40, 32), (220, 30, 30)).save(tmp_path / "red.png")
    data = _rows(tmp_path / "d.jsonl", [{"messages": QUESTION, "images": ["red.png"]}])
    qwen = tiny_models("qwen2_vl")
    processor = AutoProcessor.from_pretrained(qwen)
    assert isinstance(processor.image_processor.size, SizeDict)  # what 5.x holds
    assert apply_overrides(processor, {"max_pixels": 512}) == {"max_pixels": 512}
    for part in (processor.image_processor, processor.video_processor):
        assert isinstance(part.size, SizeDict) and (part.size.shortest_edge, part.size.longest_edge) == (256, 512)
    # 40×32 at 8 pixels a token: 20 tokens; at 512 pixels smart_resize gives 24×16, i.e. 3×2 = 6
    sample = load_dataset_rows(data).samples[0]
    assert Collator(processor, 512).measure(sample).image_tokens == 6
    code, out, err = cli("data", "check", data, "--model", qwen, "--max-pixels", "512", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["processor"] == {"max_pixels": 512} and report["tokens"]["image"]["max"] == 6
    # a fixed-size family (size = {height, width}): --image-size
    gemma = tiny_models("gemma3")
    processor = AutoProcessor.from_pretrained(gemma)
    assert apply_overrides(processor, {"image_size": 48}) == {"image_size": 48}
    assert (processor.image_processor.size.height, processor.image_processor.size.width) == (48, 48)
    assert tuple(
        processor(text=["<start_of_image>"], images=[Image.open(tmp_path / "red.png")], return_tensors="pt")[
            "pixel_values"
        ].shape
    ) == (1, 3, 48, 48)
    code, out, err = cli("data", "check", data, "--model", gemma, "--image-size", "48", "--json")
    assert code == 0, err
    assert json.loads(out)["processor"] == {"image_size": 48}


# ---------------------------------------------------------------- video at the peers' defaults


def video_demo(folder: Path) -> Path:
    """mllm_video_demo.json's shape: a JSON array of sharegpt `messages` with `<video>` and a
    `videos` list, clips under mllm_demo_data/ with the demo's frame counts, rates and aspect
    ratios (1.mp4 243 frames at 25 fps 16:9, 2.avi 270 at 29.92 fps 4:3, 3.mp4 146 at 23.976 fps
    16:9), at 128×72 / 96×72 so that they write fast. Tiny Qwen2-VL caps a frame at 4,096 pixels
    either way (80×48 → 60 tokens a frame pair, 72×48 → 54), as it does the demo's 640×360."""
    media = folder / "mllm_demo_data"
    media.mkdir()
    for name, frames, rate, (width, height) in (
        ("1.mp4", 243, 25, (128, 72)),
        ("2.avi", 270, Fraction(359, 12), (96, 72)),
        ("3.mp4", 146, Fraction(24000, 1001), (128, 72)),
    ):
        write_video(media / name, frames=frames, size=(width, height), rate=rate)
    rows = [
        {
            "messages": [{"content": f"<video>{q}", "role": "user"}, {"content": a, "role": "assistant"}],
            "videos": [f"mllm_demo_data/{name}"],
        }
        for q, a, name in (
            ("Why is this video funny?", "Because a baby is reading, and he is so cute!", "1.mp4"),
            ("What is she doing?", "She is cooking.", "2.avi"),
            ("What's in the video?", "A baby is playing in the living room.", "3.mp4"),
        )
    ]
    path = folder / "mllm_video_demo.json"
    path.write_text(json.dumps(rows, indent=2))
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return video_demo(tmp_path_factory.mktemp("video_demo"))


def test_video_demo_fits_seq_len_2048_at_default_sampling(tiny_models, demo, cli):
    """Every frame went to the processor: 7,320 / 7,290 / 4,380 video tokens against --seq-len 2048,
    all three rows refused. At LLaMA-Factory's defaults (2 fps, at most 128 frames, 256×256 pixels
    a frame): 1.mp4 9.72 s → 19 frames → 10 pairs × 60 = 600; 2.avi 9.02 s → 18 → 9 × 54 = 486;
    3.mp4 6.09 s → 12 → 6 × 60 = 360."""
    code, out, err = cli("data", "check", demo, "--model", tiny_models("qwen2_vl"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["rows"], report["videos"], report["skipped"]) == (3, 3, 0)
    assert report["tokens"]["video"] == {"p50": 486, "p95": 600, "max": 600}
    assert (
        "videos sampled at the defaults, 2 fps, at most 128 frames and at most 65,536 pixels a frame "
        "(set --video-fps, --video-frames or --max-pixels to change them)"
    ) in report["notes"]
    assert json.loads(out)["notes"] == report["notes"]
    # the frame budget, as LLaMA-Factory applies it: a 640×360 frame becomes 341×192 (65,472 pixels);
    # 4 frames at 25 fps last 0.16 s, so 2 fps gives the 2 frames a temporal patch needs
    from transformers import AutoProcessor

    from vlmsurgeon.data.collate import Collator

    write_video(demo.parent / "big.mp4", frames=4, size=(640, 360), rate=25)
    clip = load_dataset_rows(
        _rows(
            demo.parent / "big.jsonl",
            [
                {
                    "messages": [
                        {"role": "user", "content": "<video>What moves?"},
                        {"role": "assistant", "content": "A bar."},
                    ],
                    "videos": ["big.mp4"],
                }
            ],
        )
    ).samples[0]
    _, (frames,) = Collator(AutoProcessor.from_pretrained(tiny_models("qwen2_vl")), 2048).load_media(clip)
    assert frames.shape == (2, 192, 341, 3)
    # every frame, as before: the figures the defaults fix
    code, out, err = cli("data", "check", demo, "--model", tiny_models("qwen2_vl"), "--json", "--video-frames", "300")
    assert code == 1
    video = [row.split(": its ")[1].split(" video")[0] for row in json.loads(out)["over_limit"]]
    assert video == ["7320", "7290", "4380"]


def test_over_limit_video_row_names_each_fix_with_its_figure(tiny_models, demo, tmp_path, cli):
    """A video row over --seq-len says which option fixes it and what the row would then be."""
    code, out, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        demo,
        "-o",
        tmp_path / "run",
        "--freeze",
        "vision",
        "--seq-len",
        "256",
        "--steps",
        "1",
    )
    assert code == 2 and err.count("\n") == 1
    # each figure is the row's tokens run with that option alone (checked by running data check with it)
    first = (
        "row 1: 692 tokens: its 600 video tokens end at position 607, past --seq-len 256 (cutting inside "
        "media breaks the model); it would be 212 tokens at --video-fps 0.43, 212 at --video-frames 4, "
        "242 at --max-pixels 1100, or it fits whole at --seq-len 692"
    )
    assert f"3 bad row(s) of 3, first: {first}" in err
    assert first in (tmp_path / "run" / "bad_rows.txt").read_text()
    for option, tokens in (
        (("--video-fps", "0.43"), 212),
        (("--video-frames", "4"), 212),
        (("--max-pixels", "1100"), 242),
    ):
        code, out, err = cli(
            "data", "check", demo, "--model", tiny_models("qwen2_vl"), "--seq-len", "256", *option, "--json"
        )
        assert code == 0 and json.loads(out)["tokens"]["total"]["max"] == tokens, (option, err)
