"""Data as the peers ship it: each format in its own file (shaped like LLaMA-Factory's
mllm_demo.json + dataset_info.json, LLaVA's mix665k, TRL's vision examples, ms-swift's custom
dataset docs, OpenAI's image_url parts), trained 2 steps at batch size 3 with mixed rows, with the
label mask checked position by position for one row of each."""

from __future__ import annotations

import base64
import json
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from vlmsurgeon.data.collate import IGNORE, Collator
from vlmsurgeon.data.rows import load_dataset_rows

END = "<|im_end|>"


def write_video(path: Path, frames: int = 6, size: int | tuple[int, int] = 32, rate: int | Fraction = 4) -> Path:
    """A short clip written with PyAV (the decoder the tool reads videos with); `size` is a side
    or (width, height)."""
    import av
    import numpy as np

    width, height = (size, size) if isinstance(size, int) else size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[:, : (i + 1) * width // frames] = (200, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture
def media(tmp_path) -> Path:
    (tmp_path / "mllm_demo_data").mkdir()
    for name, rgb in (("1.jpg", (220, 30, 30)), ("2.jpg", (30, 30, 220)), ("3.png", (30, 200, 30))):
        Image.new("RGB", (40, 32), rgb).save(tmp_path / "mllm_demo_data" / name)
    return tmp_path


def _png_bytes(rgb=(200, 30, 30)) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


TEXT_ONLY = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]}


def llamafactory_sharegpt(folder: Path) -> tuple[str, list[str]]:
    """mllm_demo.json as shipped: a JSON array, openai-style roles through dataset_info tags."""
    rows = [
        {
            "messages": [
                {"content": "<image>Who are they?", "role": "user"},
                {"content": "Two shapes.", "role": "assistant"},
                {"content": "What are they doing?", "role": "user"},
                {"content": "Resting.", "role": "assistant"},
            ],
            "images": ["mllm_demo_data/1.jpg"],
        },
        {"messages": [{"content": "Who is he?", "role": "user"}, {"content": "Nobody.", "role": "assistant"}]},
        {
            "messages": [{"content": "<image>Colour?", "role": "user"}, {"content": "Blue.", "role": "assistant"}],
            "images": ["mllm_demo_data/2.jpg"],
        },
    ]
    (folder / "mllm_demo.json").write_text(json.dumps(rows, indent=2))
    (folder / "dataset_info.json").write_text(
        json.dumps(
            {
                "mllm_demo": {
                    "file_name": "mllm_demo.json",
                    "formatting": "sharegpt",
                    "columns": {"messages": "messages", "images": "images"},
                    "tags": {
                        "role_tag": "role",
                        "content_tag": "content",
                        "user_tag": "user",
                        "assistant_tag": "assistant",
                    },
                },
                "other": {"file_name": "missing.json"},
            }
        )
    )
    return f"{folder}/dataset_info.json:mllm_demo", ["Two shapes.", "Resting."]


def llamafactory_renamed(folder: Path) -> tuple[str, list[str]]:
    """A sharegpt dataset whose columns and tags are all renamed in dataset_info.json."""
    rows = [
        {
            "dialog": [
                {"speaker": "USER", "text": "<image>Name the colour."},
                {"speaker": "BOT", "text": "Red, plainly."},
            ],
            "pics": ["mllm_demo_data/1.jpg"],
            "sys": "Answer briefly.",
        },
        {"dialog": [{"speaker": "USER", "text": "Hello?"}, {"speaker": "BOT", "text": "Hello."}]},
        {
            "dialog": [{"speaker": "USER", "text": "<image>And this?"}, {"speaker": "BOT", "text": "Green."}],
            "pics": ["mllm_demo_data/3.png"],
        },
    ]
    (folder / "renamed.json").write_text(json.dumps(rows))
    (folder / "dataset_info.json").write_text(
        json.dumps(
            {
                "renamed": {
                    "file_name": "renamed.json",
                    "formatting": "sharegpt",
                    "columns": {"messages": "dialog", "images": "pics", "system": "sys"},
                    "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "USER", "assistant_tag": "BOT"},
                }
            }
        )
    )
    return str(folder), ["Red, plainly."]


def llamafactory_alpaca(folder: Path) -> tuple[str, list[str]]:
    rows = [
        {
            "q": "Describe the image.",
            "extra": "<image>",
            "a": "A red block.",
            "images": ["mllm_demo_data/1.jpg"],
            "hist": [["Ready?", "Yes."]],
        },
        {"q": "Count to two.", "a": "One, two."},
        {"q": "<image>Colour?", "a": "Blue.", "images": ["mllm_demo_data/2.jpg"]},
    ]
    (folder / "alpaca.json").write_text(json.dumps(rows))
    (folder / "dataset_info.json").write_text(
        json.dumps(
            {
                "alp": {
                    "file_name": "alpaca.json",
                    "columns": {
                        "prompt": "q",
                        "query": "extra",
                        "response": "a",
                        "history": "hist",
                        "images": "images",
                    },
                }
            }
        )
    )
    return f"{folder}/dataset_info.json:alp", ["Yes.", "A red block."]


def llava(folder: Path) -> tuple[str, list[str]]:
    """llava_v1_5_mix665k.json shape: a JSON array, `image` singular, text-only rows without it."""
    rows = [
        {
            "id": "000000033471",
            "image": "mllm_demo_data/1.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is it?"},
                {"from": "gpt", "value": "It is red."},
            ],
        },
        {"id": "text-1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey."}]},
        {
            "id": "000000033472",
            "image": "mllm_demo_data/2.jpg",
            "conversations": [{"from": "human", "value": "<image>\nAnd now?"}, {"from": "gpt", "value": "Blue."}],
        },
    ]
    (folder / "llava_mix.json").write_text(json.dumps(rows))
    return str(folder / "llava_mix.json"), ["It is red."]


def trl_messages(folder: Path) -> tuple[str, list[str]]:
    """TRL vision rows: content parts, and an images column with no placeholder (TRL inserts it)."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
            ],
            "images": ["mllm_demo_data/1.jpg"],
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]},
            ],
            "images": ["mllm_demo_data/2.jpg"],
        },
        TEXT_ONLY,
    ]
    (folder / "trl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder / "trl.jsonl"), ["Red."]


def trl_prompt_completion(folder: Path) -> tuple[str, list[str]]:
    rows = [
        {
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}],
            "images": ["mllm_demo_data/1.jpg"],
        },
        {"prompt": "Say yes.", "completion": "Yes."},
        {
            "prompt": [{"role": "user", "content": "Which?"}],
            "completion": [{"role": "assistant", "content": "Green."}],
            "images": ["mllm_demo_data/3.png"],
        },
    ]
    (folder / "pc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder / "pc.jsonl"), ["Red."]


def swift_messages(folder: Path) -> tuple[str, list[str]]:
    """ms-swift: system, a turn with "loss": false (context only), tool roles, grounding tags as text."""
    rows = [
        {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "<image>What is it?"},
                {"role": "assistant", "content": "A red square.", "loss": False},
                {"role": "user", "content": "Where is <ref-object>?"},
                {"role": "assistant", "content": "<bbox> in the middle."},
            ],
            "images": ["mllm_demo_data/1.jpg"],
            "objects": {"ref": ["square"], "bbox": [[1, 2, 3, 4]]},
        },
        {
            "tools": json.dumps([{"name": "get_colour", "parameters": {}}]),
            "messages": [
                {"role": "user", "content": "Colour of the sky?"},
                {"role": "tool_call", "content": '{"name": "get_colour", "arguments": {}}'},
                {"role": "tool_response", "content": '{"colour": "blue"}'},
                {"role": "assistant", "content": "Blue."},
            ],
        },
        {
            "messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Green."}],
            "images": ["mllm_demo_data/3.png"],
        },
    ]
    (folder / "swift.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder / "swift.jsonl"), ["<bbox> in the middle."]


def swift_query_response(folder: Path) -> tuple[str, list[str]]:
    rows = [
        {
            "system": "Be brief.",
            "query": "<image>Colour?",
            "response": "Red.",
            "history": [["Hi", "Hello."]],
            "images": ["mllm_demo_data/1.jpg"],
        },
        {"query": "Two plus two?", "response": "Four."},
        {"query": "<image>This one?", "response": "Blue.", "images": ["mllm_demo_data/2.jpg"]},
    ]
    (folder / "qr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder / "qr.jsonl"), ["Hello.", "Red."]


def openai_parts(folder: Path) -> tuple[str, list[str]]:
    """OpenAI chat rows: image_url parts with a data: URI, tool_calls with content null, role tool."""
    uri = "data:image/png;base64," + base64.b64encode(_png_bytes()).decode()
    rows = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "Colour?"}],
                },
                {"role": "assistant", "content": "Red."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Sky colour?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"type": "function", "function": {"name": "sky", "arguments": "{}"}}],
                },
                {"role": "tool", "content": "blue"},
                {"role": "assistant", "content": "Blue."},
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": uri}, {"type": "text", "text": "Again?"}],
                },
                {"role": "assistant", "content": "Still red."},
            ]
        },
    ]
    (folder / "openai.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder / "openai.jsonl"), ["Red."]


def datasets_dir(folder: Path) -> tuple[str, list[str]]:
    """A `datasets` save_to_disk folder: an Image feature column (stored as bytes) and text rows."""
    from datasets import Dataset, Sequence
    from datasets import Image as ImageFeature

    rows = [
        {
            "messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Red."}],
            "images": [str(folder / "mllm_demo_data/1.jpg")],
        },
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], "images": []},
        {
            "messages": [{"role": "user", "content": "<image>And?"}, {"role": "assistant", "content": "Blue."}],
            "images": [str(folder / "mllm_demo_data/2.jpg")],
        },
    ]
    table = Dataset.from_list(rows).cast_column("images", Sequence(ImageFeature()))
    table.save_to_disk(str(folder / "saved"))
    return str(folder / "saved"), ["Red."]


FORMATS = {
    "llamafactory-sharegpt": (llamafactory_sharegpt, "messages"),
    "llamafactory-renamed": (llamafactory_renamed, "sharegpt"),
    "llamafactory-alpaca": (llamafactory_alpaca, "alpaca"),
    "llava": (llava, "sharegpt"),
    "trl-messages": (trl_messages, "messages"),
    "trl-prompt-completion": (trl_prompt_completion, "prompt-completion"),
    "swift-messages": (swift_messages, "messages"),
    "swift-query-response": (swift_query_response, "query-response"),
    "openai": (openai_parts, "messages"),
    "datasets": (datasets_dir, "messages"),
}


def expected_labels(tokenizer, ids: list[int], answers: list[str]) -> list[int]:
    """Positions of each trained answer plus its end-of-turn token, each found right after its
    own `assistant\\n` header, computed from the tokenizer alone."""
    out: list[int] = []
    start = 0
    for answer in answers:
        header = tokenizer.encode(f"assistant\n{answer}{END}", add_special_tokens=False)
        body = tokenizer.encode(f"{answer}{END}", add_special_tokens=False)
        for at in range(start, len(ids) - len(header) + 1):
            if ids[at : at + len(header)] == header:
                out += list(range(at + len(header) - len(body), at + len(header)))
                start = at + len(header)
                break
        else:
            raise AssertionError(f"answer {answer!r} not found")
    return out


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_trains_with_mixed_rows_and_exact_labels(tiny_models, media, tmp_path, name, cli):
    from transformers import AutoProcessor

    build, reader = FORMATS[name]
    ref, answers = build(media)
    model = tiny_models("qwen2_vl")
    data = load_dataset_rows(ref)
    assert not data.bad, data.bad
    assert len(data.samples) == 3 and data.formats == {reader: 3}
    assert sorted(len(s.images) for s in data.samples) == [0, 1, 1]  # mixed: text-only beside images
    processor = AutoProcessor.from_pretrained(model)
    first = data.samples[0]
    batch = Collator(processor, 1024)([first])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    trained = [i for i, label in enumerate(labels) if label != IGNORE]
    assert trained == expected_labels(processor.tokenizer, ids, answers)
    assert all(labels[i] == ids[i] for i in trained)
    if first.images:
        assert ids.count(processor.image_token_id) > 0 and "pixel_values" in batch
    code, out, err = cli("data", "check", ref, "--model", model, "--json")
    assert code == 0, err
    report = json.loads(out)  # one object
    assert (report["rows"], report["images"], report["videos"], report["skipped"]) == (3, 2, 0, 0)
    assert report["formats"] == {reader: 3} and set(report["tokens"]) == {"text", "image", "video", "total"}
    assert report["tokens"]["image"]["max"] > 0 and report["tokens"]["total"]["max"] <= 2048
    code, text, err = cli("data", "check", ref, "--model", model)
    assert code == 0 and f"3 usable row(s) [3 {reader}], 2 image(s), 0 video(s)" in text and "p95" in text
    run = tmp_path / "run"
    code, out, err = cli(
        "finetune", model, "--data", ref, "-o", run, "--freeze", "vision", "--steps", "2", "--batch-size", "3"
    )
    assert code == 0, err
    assert "data: 3 row(s)" in err  # the same summary before training
    record = json.loads((run / "vlmsurgeon.json").read_text())["data"]
    assert (record["rows"], record["images"], record["videos"], record["skipped"]) == (3, 2, 0, 0)
    assert record["formats"] == {reader: 3} and record["tokens"] == report["tokens"]


def test_swift_loss_false_turn_is_context_and_tools_and_unused_columns_are_said(tiny_models, media, cli):
    from transformers import AutoProcessor

    ref, _ = swift_messages(media)
    data = load_dataset_rows(ref)
    first = data.samples[0]
    assert [m["train"] for m in first.messages] == [False, False, False, False, True]
    assert data.samples[1].tools == [{"name": "get_colour", "parameters": {}}]
    roles = [m["role"] for m in data.samples[1].messages]
    assert roles == ["user", "assistant", "tool", "assistant"]  # tool_call is the model's, trained
    processor = AutoProcessor.from_pretrained(tiny_models("qwen2_vl"))
    batch = Collator(processor, 1024)([data.samples[1]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    call = '{"name": "get_colour", "arguments": {}}'
    assert [i for i, x in enumerate(labels) if x != IGNORE] == expected_labels(
        processor.tokenizer, ids, [call, "Blue."]
    )
    said = data.messages()
    assert "column 'objects' is not used (1 row(s) have it)" in said
    assert "1 assistant turn(s) marked loss: false are context only (not trained)" in said
    code, out, err = cli("data", "check", ref, "--model", tiny_models("qwen2_vl"), "--json")
    report = json.loads(out)
    assert code == 0 and report["rows"] == 3
    assert any("describe tools, but this model's chat template does not render tools" in n for n in report["notes"])


def test_image_encodings_train_and_a_url_is_a_bad_row(tiny_models, media, tmp_path, cli):
    raw = _png_bytes((10, 200, 10))
    b64 = base64.b64encode(raw).decode()
    root = media / "mllm_demo_data"
    question = [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Green."}]
    rows = [
        {"messages": question, "images": [str(root / "1.jpg")]},  # absolute path
        {"messages": question, "images": ["2.jpg"]},  # relative to --image-root
        {"messages": question, "images": [{"path": "3.png"}]},  # dict with a path
        {"messages": question, "images": [{"bytes": None, "path": "1.jpg"}]},  # datasets-style, undecoded
        {"messages": question, "images": [b64]},  # bare base64
        {"messages": question, "images": ["data:image/png;base64," + b64]},
    ]  # data: URI
    data_file = tmp_path / "enc.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_dataset_rows(data_file, image_root=root)
    assert not data.bad and len(data.samples) == 6
    kinds = [type(s.images[0]).__name__ for s in data.samples]
    assert kinds == ["PosixPath", "PosixPath", "PosixPath", "PosixPath", "bytes", "bytes"]
    run = tmp_path / "run"
    code, out, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        data_file,
        "--image-root",
        root,
        "-o",
        run,
        "--freeze",
        "vision",
        "--steps",
        "2",
        "--batch-size",
        "3",
    )
    assert code == 0, err
    assert json.loads((run / "vlmsurgeon.json").read_text())["data"]["images"] == 6
    url = tmp_path / "url.jsonl"
    url.write_text(json.dumps({"messages": question, "images": ["https://example.com/cat.jpg"]}) + "\n")
    bad = load_dataset_rows(url)
    assert str(bad.bad[0]) == (
        "line 1: image is a URL (https://example.com/cat.jpg): download first, then point at "
        "the files (relative to the data file, or pass --image-root)"
    )


def test_video_reaches_the_model(tiny_models, media, tmp_path, cli, monkeypatch):
    import vlmsurgeon.data.collate as collate

    write_video(media / "clip.mp4")
    rows = [
        {
            "messages": [
                {"role": "user", "content": "<video>What moves?"},
                {"role": "assistant", "content": "A red bar."},
            ],
            "videos": ["clip.mp4"],
        },
        {
            "messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Red."}],
            "images": ["mllm_demo_data/1.jpg"],
        },
        TEXT_ONLY,
    ]
    (media / "video.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen: list[set[str]] = []
    original = collate.pad_and_stack

    def spy(encoded, pad_id, **kwargs):
        batch = original(encoded, pad_id, **kwargs)
        seen.append(set(batch))
        return batch

    monkeypatch.setattr(collate, "pad_and_stack", spy)
    run = tmp_path / "run"
    code, out, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        media / "video.jsonl",
        "-o",
        run,
        "--freeze",
        "vision",
        "--steps",
        "2",
        "--batch-size",
        "3",
        "--video-frames",
        "4",
    )
    assert code == 0, err
    assert all({"pixel_values_videos", "video_grid_thw", "pixel_values"} <= keys for keys in seen)
    record = json.loads((run / "vlmsurgeon.json").read_text())["data"]
    assert record["videos"] == 1 and record["images"] == 1 and record["tokens"]["video"]["max"] > 0
    # a family without video input: the row is a bad row, never trained as text
    code, out, err = cli("data", "check", media / "video.jsonl", "--model", tiny_models("llava"), "--json")
    report = json.loads(out)
    assert report["bad_rows"] == ["line 1: 1 video(s), but this model's processor takes no video input"]


def test_media_past_seq_len_is_refused_before_the_model_loads(tiny_models, media, tmp_path, cli, monkeypatch):
    import vlmsurgeon.train.loop as train

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(train, "load_for_training", must_not_load)
    ref, _ = llava(media)
    code, out, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        ref,
        "-o",
        tmp_path / "run",
        "--freeze",
        "vision",
        "--seq-len",
        "16",
    )
    assert code == 2 and "Traceback" not in err
    assert (
        "3 bad row(s) of 3, first: row 1: 71 tokens: its 20 image tokens end at position 27, past --seq-len 16" in err
    )
    # the text-only row has no media, but --seq-len 16 cuts every one of its labels: refused too
    code, out, err = cli("data", "check", ref, "--model", tiny_models("qwen2_vl"), "--seq-len", "16", "--json")
    assert code == 1 and err.count("\n") == 1 and "data check: 3 row(s) of 3 would not train" in err
    report = json.loads(out)
    assert report["rows"] == 0 and report["skipped"] == 3
    assert (
        report["over_limit"][1]
        == "row 2: 27 tokens: its first trained token is at position 21, so --seq-len 16 would cut every label"
    )
    # a limit that only cuts text after the media: trains, and the cut rows are counted
    code, out, err = cli("data", "check", ref, "--model", tiny_models("qwen2_vl"), "--seq-len", "64", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["rows"], report["truncated"], report["skipped"]) == (3, 1, 0)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "idefics3", "mllama"])
def test_mixed_batch_gives_each_row_its_own_logits(tiny_models, media, family):
    """Text-only, one-image and two-image rows in one batch: each row's logits equal those of the
    same row alone (nothing dropped, nothing shifted between rows)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_models(family)
    rows = [
        TEXT_ONLY,
        {
            "messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Red."}],
            "images": ["mllm_demo_data/1.jpg"],
        },
        {
            "messages": [{"role": "user", "content": "<image><image>Both?"}, {"role": "assistant", "content": "Yes."}],
            "images": ["mllm_demo_data/2.jpg", "mllm_demo_data/3.png"],
        },
    ]
    (media / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = load_dataset_rows(media / "mixed.jsonl").samples
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    collator = Collator(processor, 1024)
    for order in ([0, 1, 2], [1, 0, 2], [2, 1, 0]):
        batch = collator([samples[i] for i in order])
        batch.pop("labels")
        with torch.no_grad():
            together = model(**batch).logits
        for slot, i in enumerate(order):
            alone = collator([samples[i]])
            alone.pop("labels")
            with torch.no_grad():
                single = model(**alone).logits[0]
            n = single.shape[0]
            assert torch.allclose(together[slot, :n], single, atol=1e-4), (family, order, i)
