"""Remote code runs only with --trust-remote-code; without it the headers are read instead."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_header_mode import write_header_only

CONFIGURATION = """
import os
from pathlib import Path
from transformers import PretrainedConfig
Path(os.environ["TOY_MARKER"]).write_text("configuration ran")

class ToyConfig(PretrainedConfig):
    model_type = "toy_vlm"
    def __init__(self, hidden=8, vocab=32, **kwargs):
        self.hidden, self.vocab = hidden, vocab
        super().__init__(**kwargs)
"""
MODELING = """
import torch.nn as nn
from transformers import PreTrainedModel
from .configuration_toy import ToyConfig

class ToyInner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.vision_tower = nn.Linear(c.hidden, c.hidden)
        self.multi_modal_projector = nn.Linear(c.hidden, c.hidden, bias=False)
        self.language_model = nn.ModuleDict({
            "embed_tokens": nn.Embedding(c.vocab, c.hidden),
            "layers": nn.ModuleList([nn.Linear(c.hidden, c.hidden) for _ in range(2)]),
        })

class ToyForCausalLM(PreTrainedModel):
    config_class = ToyConfig
    def __init__(self, config):
        super().__init__(config)
        self.model = ToyInner(config)
        self.lm_head = nn.Linear(config.hidden, config.vocab, bias=False)
        self.post_init()
"""
SHAPES = {
    "model.vision_tower.weight": (8, 8),
    "model.vision_tower.bias": (8,),
    "model.multi_modal_projector.weight": (8, 8),
    "model.language_model.embed_tokens.weight": (32, 8),
    "model.language_model.layers.0.weight": (8, 8),
    "model.language_model.layers.0.bias": (8,),
    "model.language_model.layers.1.weight": (8, 8),
    "model.language_model.layers.1.bias": (8,),
    "lm_head.weight": (32, 8),
}
EXPECTED = {"vision": 72, "merger": 64, "lm": 256 + 144, "head": 256}


def make_repo(directory: Path) -> Path:
    directory.mkdir()
    (directory / "configuration_toy.py").write_text(CONFIGURATION)
    (directory / "modeling_toy.py").write_text(MODELING)
    (directory / "config.json").write_text(
        json.dumps(
            {
                "model_type": "toy_vlm",
                "architectures": ["ToyForCausalLM"],
                "hidden": 8,
                "vocab": 32,
                "auto_map": {
                    "AutoConfig": "configuration_toy.ToyConfig",
                    "AutoModelForCausalLM": "modeling_toy.ToyForCausalLM",
                },
            }
        )
    )
    write_header_only(directory / "model.safetensors", SHAPES, dtype="F32", itemsize=4)
    return directory


def _figures(data: dict) -> dict[str, int]:
    return {c: data["components"][c]["params"] for c in EXPECTED}


def test_without_trust_no_repo_code_runs(tmp_path, cli, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("TOY_MARKER", str(marker))
    repo = make_repo(tmp_path / "toy")
    code, out, err = cli("inspect", repo, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "safetensors-headers" and _figures(data) == EXPECTED
    assert not marker.exists()


def test_with_trust_the_repo_model_is_built_on_meta(tmp_path, cli, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("TOY_MARKER", str(marker))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    repo = make_repo(tmp_path / "toy")
    code, out, err = cli("inspect", repo, "--json", "--trust-remote-code")
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "remote-code" and _figures(data) == EXPECTED
    assert data["other"] == 0 and marker.read_text() == "configuration ran"
