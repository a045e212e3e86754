"""A hub id inspected offline from a populated Hugging Face cache (issue 11): config.json and the
safetensors headers are read from the snapshot huggingface_hub keeps, never from the network."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, save_config
from tests.test_cli import _one_line_error
from tests.test_header_mode import make_phi3v

PHI = "microsoft/Phi-3.5-vision-instruct"
LLAVA = "llava-hf/llava-1.5-7b-hf"
COMMIT = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
# seed 000's module tree at tests/test_header_mode.phi3v_shapes' small sizes, by hand:
# vision 336 + 2 × 872, merger 528 + 272, lm 1024 + 16 + 2 × 2208, head 64 × 16
PHI_FIGURES = {"vision": 2080, "merger": 800, "lm": 5456, "head": 1024}


def populate(cache: Path, repo_id: str, files: Path, commit: str = COMMIT) -> Path:
    """Lay `files` out as huggingface_hub does: content in blobs/<sha256>, snapshots/<commit>/<name>
    a relative symlink to its blob, refs/main holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in sorted(p for p in files.iterdir() if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache directory that huggingface_hub uses, offline. Its constants are read from
    the environment once, at import, so the running process is pointed at it through them."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _figures(data: dict) -> dict[str, int]:
    return {c: data["components"][c]["params"] for c in PHI_FIGURES}


def test_remote_code_model_from_cached_shards(tmp_path, hub_cache, cli):
    expected = make_phi3v(tmp_path / "phi")  # config.json (phi3_v, auto_map), index, 2 shards
    assert expected == PHI_FIGURES
    snapshot = populate(hub_cache, PHI, tmp_path / "phi")
    assert (snapshot / "model-00001-of-00002.safetensors").is_symlink()

    code, out, err = cli("inspect", PHI, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["model"] == PHI and data["model_type"] == "phi3_v"
    assert data["source"] == "safetensors-headers"
    assert _figures(data) == {"vision": 2080, "merger": 800, "lm": 5456, "head": 1024}
    assert data["total_params"] == 9360 and data["other"] == 0
    assert data["components"]["lm"]["embeddings"] == 64 * 16
    assert data["checkpoint_check"]["checked"] is False
    assert err == ""

    code, out, err = cli("inspect", PHI, "--json", "--revision", COMMIT)
    assert code == 0, err
    assert json.loads(out)["total_params"] == 9360


def test_native_model_from_cached_config(tmp_path, hub_cache, cli):
    import torch
    from transformers import AutoConfig, LlavaForConditionalGeneration

    populate(hub_cache, LLAVA, save_config("llava", tmp_path / "llava"))
    config = AutoConfig.from_pretrained(tmp_path / "llava")
    with torch.device("meta"):
        built = LlavaForConditionalGeneration(config)
    direct = sum(p.numel() for p in built.parameters())
    assert direct == 7_062_902_784

    code, out, err = cli("inspect", LLAVA, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["source"] == "config" and data["model_type"] == "llava"
    assert data["total_params"] == direct
    assert data["checkpoint_check"] == {
        "checked": False,
        "reason": "the weights are not in the local cache and the hub is not reachable",
    }


def test_native_model_with_cached_weights_is_checked(tmp_path, hub_cache, cli, tiny_models):
    populate(hub_cache, "google/gemma-3-tiny", tiny_models("gemma3"))
    code, out, err = cli("inspect", "google/gemma-3-tiny", "--json")
    assert code == 0, err
    data = json.loads(out)
    _, local, _ = cli("inspect", tiny_models("gemma3"), "--json")
    assert data["source"] == "config" and data["total_params"] == json.loads(local)["total_params"]
    check = data["checkpoint_check"]
    assert check["checked"] and check["shards"] == 1
    assert [check[k]["count"] for k in ("missing", "unexpected", "shape_mismatch")] == [0, 0, 0]
    assert err == ""


def test_unreachable_hub_falls_back_to_the_cache(tmp_path, hub_cache, cli, monkeypatch):
    """Not offline by setting, but no network: the cached snapshot, after one quick probe."""
    from huggingface_hub import constants

    from vlmsurgeon.model import sources

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "_hub_reachable", lambda: False)
    make_phi3v(tmp_path / "phi")
    populate(hub_cache, PHI, tmp_path / "phi")
    code, out, err = cli("inspect", PHI, "--json")
    assert code == 0, err
    assert json.loads(out)["total_params"] == 9360
    code, _, err = cli("inspect", "Qwen/Qwen2-VL-2B-Instruct")
    _one_line_error(code, err, "not in the local cache", "the hub is not reachable")


def test_not_in_cache_is_one_line(hub_cache, cli):
    code, _, err = cli("inspect", "Qwen/Qwen2-VL-2B-Instruct")
    _one_line_error(code, err, "Qwen/Qwen2-VL-2B-Instruct", "not in the local cache", str(hub_cache), "HF_HUB_OFFLINE")


def test_unknown_revision_is_one_line(tmp_path, hub_cache, cli):
    populate(hub_cache, LLAVA, save_config("llava", tmp_path / "llava"))
    code, _, err = cli("inspect", LLAVA, "--revision", "f" * 40)
    _one_line_error(code, err, LLAVA, f"at revision {'f' * 40}", "not in the local cache")


def test_cached_remote_code_config_without_its_weights(tmp_path, hub_cache, cli):
    make_phi3v(tmp_path / "phi")
    for shard in (tmp_path / "phi").glob("model-*.safetensors"):
        shard.unlink()  # config.json and the index are cached, the shards are not
    populate(hub_cache, PHI, tmp_path / "phi")
    code, _, err = cli("inspect", PHI)
    _one_line_error(code, err, PHI, "weights are not", "--trust-remote-code")


def test_hf_home_is_honoured_in_a_fresh_process(tmp_path):
    """No monkeypatching: HF_HOME set before huggingface_hub is imported, as a user would."""
    make_phi3v(tmp_path / "phi")
    populate(tmp_path / "home" / "hub", PHI, tmp_path / "phi")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "vlmsurgeon.cli", "inspect", PHI, "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["source"] == "safetensors-headers" and data["total_params"] == 9360
