"""generate and chat on tiny fine-tunes: a run (as trained, 4-bit base + adapter) answers as its
fp32 export does, every SOURCE kind loads, chat runs on a terminal, bad input is one line."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, unknown_model
from tests.test_finetune import options
from vlmsurgeon.errors import BadInput
from vlmsurgeon.ship.merge import MergePlan, merge
from vlmsurgeon.train.loop import finetune
from vlmsurgeon.use.answer import answer, user_turn
from vlmsurgeon.use.generation import load_for_inference, source_kind

PROMPT = "What is in the picture?"


@pytest.fixture(scope="module")
def runs(tiny_models, shapes, tmp_path_factory):
    """family -> (base, run, fp32 export): QLoRA --freeze vision, 10 steps, merged into the
    dequantized weights it trained against."""
    base = tmp_path_factory.mktemp("gen")
    out = {}
    for family in ("qwen2_vl", "llava"):
        run, export = base / f"run-{family}", base / f"export-{family}"
        finetune(options(tiny_models(family), shapes, run, steps=10))
        merge(run, export, plan=MergePlan(dtype="fp32"))
        out[family] = (tiny_models(family), run, export)
    return out


@pytest.fixture(scope="module")
def image(shapes) -> Path:
    return shapes.parent / "img" / "red_circle.png"


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_run_and_its_fp32_export_answer_the_same(runs, image, cli, family):
    _, run, export = runs[family]
    answers = []
    for source in (run, export):
        code, out, err = cli("generate", source, "--image", image, "--prompt", PROMPT, "--max-new-tokens", "12")
        assert code == 0, err
        answers.append(out)
    assert answers[0] == answers[1]
    assert answers[0].strip()


def test_json_for_every_kind(runs, image, cli):
    base, run, export = runs["qwen2_vl"]
    cases = [((base,), "model"), ((run,), "run"), ((run / "adapter", "--base", base), "adapter"), ((export,), "export")]
    for args, kind in cases:
        code, out, err = cli("generate", *args, "--image", image, "--prompt", PROMPT, "--max-new-tokens", "6", "--json")
        assert code == 0, err
        lines = out.strip().splitlines()
        assert len(lines) == 1
        record = json.loads(lines[0])
        assert set(record) == {"text", "tokens", "prompt_tokens", "seconds", "source", "kind"}
        assert record["kind"] == kind and record["source"] == str(args[0])
        assert 1 <= record["tokens"] <= 6 and record["prompt_tokens"] > 0 and record["seconds"] >= 0


def test_answer_streams_the_text_it_returns(runs, image):
    _, run, _ = runs["qwen2_vl"]
    loaded = load_for_inference(str(run))
    assert (loaded.kind, loaded.quantized) == ("run", True)
    pieces: list[str] = []
    result = answer(loaded, [user_turn(PROMPT, 1)], [image], max_new_tokens=10, on_text=pieces.append)
    assert "".join(pieces) == result.text and result.tokens <= 10
    again = answer(loaded, [user_turn(PROMPT, 1)], [image], max_new_tokens=10)
    assert again.text == result.text  # greedy: the same every time
    with pytest.raises(BadInput, match="1 image placeholder"):
        answer(loaded, [user_turn(PROMPT, 1)], [], max_new_tokens=2)
    with pytest.raises(BadInput, match="last turn"):
        answer(loaded, [user_turn(PROMPT), {"role": "assistant", "content": [{"type": "text", "text": "x"}]}])


def _read_until(fd: int, marker: str, buffer: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while marker not in buffer:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} in {buffer!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            assert chunk, f"terminal closed before {marker!r}: {buffer!r}"
            buffer += chunk.decode(errors="replace")
    return buffer


def test_chat_on_a_terminal(runs, image):
    _, run, _ = runs["qwen2_vl"]
    master, slave = pty.openpty()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmsurgeon.cli", "chat", str(run), "--max-new-tokens", "6"],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    os.close(slave)
    try:
        seen = _read_until(master, "you> ", "")
        os.write(master, f"/image {image}\n".encode())
        seen = _read_until(master, "you> ", seen.split("you> ", 1)[1])
        assert "attached" in seen
        os.write(master, f"{PROMPT}\n".encode())
        seen = _read_until(master, "model> ", seen.split("you> ", 1)[1])
        seen = _read_until(master, "you> ", seen.split("model> ", 1)[1])
        reply = seen.split("you> ", 1)[0].strip()
        assert reply, seen
        os.write(master, b"/exit\n")
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_a_bad_image_is_refused_before_any_weight_loads(runs, cli, tmp_path, monkeypatch):
    from vlmsurgeon.use import generation

    def must_not_load(*args, **kwargs):
        raise AssertionError("a refused image must not load weights")

    monkeypatch.setattr(generation, "load_for_inference", must_not_load)
    _, run, _ = runs["llava"]
    (tmp_path / "text.png").write_text("not an image")
    for path, what in ((tmp_path / "missing.png", "image not found"), (tmp_path / "text.png", "cannot open image")):
        code, out, err = cli("generate", run, "--image", path, "--prompt", PROMPT)
        assert (code, out) == (2, "") and what in err and len(err.strip().splitlines()) == 1, err


def test_media_are_checked_as_data_check_does_and_videos_sampled_as_training(runs, cli, tmp_path, monkeypatch):
    """--image / --video go through media.check_media: a bad one is refused before any weight loads
    with the reason data check gives for the same reference; a video is sampled as finetune samples
    it (collate's fps, frame cap and pixel budget), not decoded whole."""
    from tests.test_formats import write_video
    from vlmsurgeon.data import media
    from vlmsurgeon.data.collate import VIDEO_FPS, VIDEO_FRAME_PIXELS, VIDEO_MAX_FRAMES
    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.use import generation

    base, run, _ = runs["qwen2_vl"]
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "tiny.png").write_bytes(_png(2, 2))
    bad = [
        ("video", tmp_path / "missing.mp4"),
        ("video", tmp_path / "text.mp4"),
        ("image", tmp_path / "tiny.png"),
        ("image", "https://example.com/cat.png"),
    ]
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [{"role": "user", "content": f"<{kind}>Hi"}, {"role": "assistant", "content": "Yo"}],
                    f"{kind}s": [str(ref)],
                }
            )
            + "\n"
            for kind, ref in bad
        )
    )
    reasons = [row.reason for row in load_dataset_rows(data).bad]
    with monkeypatch.context() as patch:
        patch.setattr(generation, "load_for_inference", lambda *a, **k: pytest.fail("weights were loaded"))
        for (kind, ref), reason in zip(bad, reasons, strict=True):
            code, out, err = cli("generate", run, f"--{kind}", ref, "--prompt", PROMPT)
            assert (code, out) == (2, ""), err
            assert len(err.strip().splitlines()) == 1 and err.startswith(f"vlmsurgeon: error: {reason} (try: "), (
                reason,
                err,
            )
    calls = []

    def spy(ref, max_frames, fps, max_pixels=None):
        frames = load_video(ref, max_frames, fps, max_pixels)
        calls.append((max_frames, fps, max_pixels, len(frames)))
        return frames

    load_video = media.load_video
    monkeypatch.setattr(media, "load_video", spy)
    clip = write_video(tmp_path / "clip.mp4", frames=40, size=(64, 48), rate=20)  # 2 s: 4 frames at 2 fps
    code, out, err = cli("generate", run, "--video", clip, "--prompt", PROMPT, "--max-new-tokens", "2")
    assert code == 0, err
    assert calls == [(VIDEO_MAX_FRAMES, VIDEO_FPS, VIDEO_FRAME_PIXELS, 4)]


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_input_is_one_line_exit_2(runs, image, cli, tmp_path, shapes):
    base, run, _ = runs["llava"]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (("generate", run, "--image", tmp_path / "missing.png", "--prompt", PROMPT), "image not found"),
        (("generate", base, "--base", base, "--image", image, "--prompt", PROMPT), "needs no base"),
        (
            ("generate", run / "adapter", "--base", tmp_path / "nowhere", "--image", image, "--prompt", PROMPT),
            "is not a local directory",
        ),
        (("generate", run, "--prompt", PROMPT, "--temperature", "-1"), "--temperature"),
        (("generate", run, "--video", image, "--prompt", PROMPT), "takes no video"),
        (("generate", empty, "--image", image, "--prompt", PROMPT), "is not a model directory"),
        (("generate", shapes, "--image", image, "--prompt", PROMPT), "is a file, not"),
        (("generate", tmp_path / "nowhere", "--image", image, "--prompt", PROMPT), "no such file"),
    ]
    for args, what in cases:
        code, out, err = cli(*args)
        assert code == 2, (args, err)
        assert out == "" and len(err.strip().splitlines()) == 1, err
        assert err.startswith("vlmsurgeon: error: ") and what in err and "(try: " in err, err


def test_source_kind_without_loading(runs, tmp_path):
    base, run, export = runs["llava"]
    assert [source_kind(str(p)) for p in (base, run, run / "adapter", export)] == ["model", "run", "adapter", "export"]
    assert source_kind("org/some-model") == "model"  # a hub id's shape; the load says if it is missing
    with pytest.raises(BadInput):
        source_kind(str(tmp_path))


def test_a_run_or_adapter_for_another_base_is_refused(runs, image, cli):
    """peft skips a module the base lacks: without merge's check the base would answer alone."""
    qwen_base, qwen_run, _ = runs["qwen2_vl"]
    llava_base, llava_run, _ = runs["llava"]
    for source, base in (
        (qwen_run, llava_base),
        (qwen_run / "adapter", llava_base),
        (llava_run / "adapter", qwen_base),
    ):
        code, out, err = cli(
            "generate", source, "--base", base, "--image", image, "--prompt", PROMPT, "--max-new-tokens", "2"
        )
        assert (code, out) == (2, ""), (source, err)
        assert len(err.strip().splitlines()) == 1 and "(try: pass the " in err, err
        assert "does not fit the base" in err or "has no base weight" in err, err
        tensor = err.split("tensor ", 1)[1].split()[0]
        family = "multi_modal_projector" if "llava" in str(source) else "visual"
        assert family in tensor, err  # the first tensor the other family lacks, by name


def test_a_typed_placeholder_marks_where_the_image_goes(runs, image, cli):
    """`<image>`, or the model's own placeholder, typed in the prompt counts against --image."""
    qwen, llava = runs["qwen2_vl"][0], runs["llava"][0]
    for model, typed in (
        (qwen, "<image><image>"),
        (qwen, "<|vision_start|><|image_pad|><|vision_end|> <image>"),
        (llava, "<image> <image>"),
    ):
        code, out, err = cli("generate", model, "--image", image, "--prompt", f"{typed} {PROMPT}")
        assert (code, out) == (2, ""), err
        assert "2 image placeholder(s)" in err and "but 1 image(s)" in err and len(err.splitlines()) == 1, err
    code, out, err = cli("generate", qwen, "--prompt", f"<|image_pad|>{PROMPT}")
    assert (code, out) == (2, "") and "1 image placeholder(s) (<|image_pad|>) but 0 image(s)" in err, err
    for model in (qwen, llava):  # one typed placeholder is where the image goes: here, first, as without
        answers = []
        for prompt in (f"<image>{PROMPT}", PROMPT):
            code, out, err = cli(
                "generate", model, "--image", image, "--prompt", prompt, "--max-new-tokens", "4", "--json"
            )
            assert code == 0, err
            answers.append({k: v for k, v in json.loads(out).items() if k != "seconds"})
        assert answers[0] == answers[1]


@pytest.mark.parametrize("auto_map", [True, False])
def test_remote_code_is_refused_naming_the_flag(tiny_models, shapes, image, cli, tmp_path, auto_map):
    model = unknown_model(
        tmp_path / "frob", "frob_vl", auto_map, json.loads((tiny_models("llava") / "config.json").read_text())
    )
    for args in (
        ("generate", model, "--image", image, "--prompt", PROMPT),
        ("chat", model),
        ("eval", model, "--data", shapes),
    ):
        code, out, err = cli(*args)
        assert (code, out) == (2, ""), (args, err)
        assert len(err.strip().splitlines()) == 1 and "model_type 'frob_vl'" in err, err
        hint = err.split("(try: ", 1)[1]
        assert ("--trust-remote-code if you trust the repo's code" in hint) == auto_map, err
        assert ("upgrade transformers" in hint) != auto_map, err


def test_a_run_answers_on_videos_sampled_as_it_trained(runs, cli, tmp_path, monkeypatch):
    """A run trained with --video-fps 1 is asked about a video sampled at 1 fps, not at the
    defaults: its vlmsurgeon.json says how it trained (its export carries the same record)."""
    import shutil

    from tests.test_formats import write_video
    from vlmsurgeon.data import media
    from vlmsurgeon.data.collate import VIDEO_FRAME_PIXELS, VIDEO_MAX_FRAMES

    _, run, _ = runs["qwen2_vl"]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    record = json.loads((copy / "vlmsurgeon.json").read_text())
    record["training"]["video_fps"] = 1.0
    (copy / "vlmsurgeon.json").write_text(json.dumps(record))
    calls = []
    load_video = media.load_video

    def spy(ref, max_frames, fps, max_pixels=None):
        frames = load_video(ref, max_frames, fps, max_pixels)
        calls.append((max_frames, fps, max_pixels, len(frames)))
        return frames

    monkeypatch.setattr(media, "load_video", spy)
    clip = write_video(tmp_path / "clip.mp4", frames=40, size=(64, 48), rate=20)  # 2 s: 2 frames at 1 fps
    code, out, err = cli("generate", copy, "--video", clip, "--prompt", PROMPT, "--max-new-tokens", "2")
    assert code == 0, err
    assert calls == [(VIDEO_MAX_FRAMES, 1.0, VIDEO_FRAME_PIXELS, 2)]
