"""`tiny` builds models that plain transformers loads and runs on an image, and that
`inspect` counts exactly."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmsurgeon.model.inspection import inspect_model
from vlmsurgeon.tiny.families import FAMILIES

REQUIRED = [
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "llava",
    "llava_next",
    "idefics3",
    "paligemma",
    "gemma3",
    "mllama",
    "internvl",
]
TIED = {"paligemma", "gemma3", "internvl"}  # their default configs tie the head


def test_required_families_are_offered():
    assert set(REQUIRED) <= set(FAMILIES)


@pytest.mark.parametrize("family", REQUIRED)
def test_tiny_loads_and_runs_in_plain_transformers(tiny_models, family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_models(family)
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Shape?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    inputs = processor(images=[Image.new("RGB", (40, 30), (200, 30, 30))], text=[text], return_tensors="pt")
    inputs.pop("labels", None)
    with torch.no_grad():
        logits = model(**inputs).logits
    vocab = model.get_output_embeddings().out_features
    assert logits.shape == (1, inputs["input_ids"].shape[1], vocab)
    assert torch.isfinite(logits).all()
    image_token = getattr(processor, "image_token_id", None) or model.config.image_token_id
    assert (inputs["input_ids"] == image_token).sum() > 0  # the image really went in

    r = inspect_model(str(path))
    loaded = {id(p): p.numel() for p in model.parameters()}
    assert r.total_params == sum(loaded.values())
    assert r.other == 0
    assert r.components["vision"].params > 0 and r.components["merger"].params > 0
    assert r.components["lm"].params > 0
    if family in TIED:
        assert r.components["head"].params == 0 and r.components["head"].tied_to
    else:
        assert r.components["head"].params == model.get_output_embeddings().weight.numel()


def test_tiny_refuses_existing_output_and_unknown_family(tmp_path, cli):
    (tmp_path / "exists").mkdir()
    code, _, err = cli("tiny", "llava", "-o", tmp_path / "exists")
    assert code == 2 and "already exists" in err and "Traceback" not in err
    code, _, err = cli("tiny", "nosuch", "-o", tmp_path / "new")
    assert code == 2 and "unknown family 'nosuch'" in err and "llava" in err
    assert not (tmp_path / "new").exists()
