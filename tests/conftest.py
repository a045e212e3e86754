"""Shared fixtures: tiny models built once per session, and an in-process CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """tiny_models(family) -> directory with a tiny saved model, built once per session."""
    from vlmsurgeon.tiny.build import build_tiny

    base = tmp_path_factory.mktemp("tiny")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = build_tiny(family, base / family)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def shapes(tmp_path_factory) -> Path:
    """The synthetic shapes dataset (examples/make_shapes.py): its train.jsonl."""
    out = tmp_path_factory.mktemp("shapes")
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_shapes.py"), str(out)], check=True, capture_output=True
    )
    return out / "train.jsonl"


@pytest.fixture
def cli(monkeypatch, capsys):
    """cli(*args) -> (exit_code, stdout, stderr), running the real entry point in-process."""
    from vlmsurgeon.cli.app import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["vlmsurgeon", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def save_config(model_type: str, directory: Path, **overrides) -> Path:
    """Write the installed transformers' default config for `model_type` to a directory."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **overrides)
    config.save_pretrained(directory)
    return directory


def unknown_model(directory: Path, model_type: str, auto_map: bool, config: dict | None = None) -> Path:
    """A model folder whose config.json names a model type transformers does not know, with or
    without an auto_map pointing at repo code (that is never written)."""
    import json

    config = {**(config or {}), "model_type": model_type}
    if auto_map:
        config["auto_map"] = {
            "AutoConfig": "configuration_x.XConfig",
            "AutoModelForImageTextToText": "modeling_x.XForConditionalGeneration",
        }
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory
