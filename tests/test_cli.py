"""The command contract: JSON shape, tree collapsing, one-line errors with exit code 2,
and a `--help` that never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, save_config


def test_inspect_json_has_the_design_shape(tmp_path, cli):
    code, out, err = cli("inspect", save_config("llava", tmp_path), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert list(data) == [
        "model",
        "model_type",
        "source",
        "total_params",
        "components",
        "other",
        "buffers",
        "notes",
        "checkpoint_check",
    ]
    assert data["buffers"] == {"total": 0, "components": {}} and data["notes"] == []
    assert data["source"] == "config" and data["model_type"] == "llava"
    assert list(data["components"]) == ["vision", "merger", "lm", "head"]
    assert set(data["components"]["lm"]) == {"params", "embeddings", "trainable", "roots"}
    assert set(data["components"]["head"]) == {"params", "tied_to", "trainable", "roots"}
    assert data["total_params"] == 7_062_902_784


def test_inspect_tree_collapses_repeated_blocks(cli):
    code, out, _ = cli("inspect", ROOT / "examples" / "qwen3-vl-235b-a22b" / "config.json", "--depth", "4")
    assert code == 0
    assert "(0-93): 94 × Qwen3VLMoeTextDecoderLayer · 2.5B each" in out
    assert "(0-26): 27 × Qwen3VLMoeVisionBlock" in out
    assert "visual: Qwen3VLMoeVisionModel · 576.4M  [vision 415.9M + merger 160.5M]" in out
    assert "merger: Qwen3VLMoeVisionPatchMerger · 40.1M  [merger]" in out
    assert "lm_head: Linear · 622.3M  [head]" in out
    assert "of which embeddings" in out and "235,670,022,896" in out


def test_tied_head_shown_as_tied(tmp_path, cli):
    code, out, _ = cli("inspect", save_config("paligemma", tmp_path), "--depth", "2")
    assert code == 0
    words = " ".join(out.split())  # the roots cell may break between words at 80 columns
    assert "head tied to model.language_model.embed_tokens.weight (counted once, in lm)" in words


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlmsurgeon: error: "), err
    assert "Traceback" not in err and "(try: " in err
    for needle in needles:
        assert needle in err


def test_missing_path(cli):
    code, _, err = cli("inspect", "./does/not/exist")
    _one_line_error(code, err, "./does/not/exist", "no such file")


def test_invalid_json_config(tmp_path, cli):
    (tmp_path / "config.json").write_text('{"model_type": "llava",,}')
    code, _, err = cli("inspect", tmp_path)
    _one_line_error(code, err, "config.json", "invalid JSON at line 1")


def test_unknown_model_type_without_weights(tmp_path, cli):
    (tmp_path / "config.json").write_text('{"model_type": "not_a_real_vlm"}')
    code, _, err = cli("inspect", tmp_path)
    _one_line_error(code, err, "unknown model_type 'not_a_real_vlm'")


def test_remote_code_without_weights_or_trust(tmp_path, cli):
    (tmp_path / "config.json").write_text('{"model_type": "phi3_v", "auto_map": {"AutoConfig": "x.Y"}}')
    code, _, err = cli("inspect", tmp_path)
    _one_line_error(code, err, "needs code from the model repo", "--trust-remote-code")


def test_hub_id_while_offline(cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = cli("inspect", "Qwen/Qwen2-VL-2B-Instruct")
    _one_line_error(code, err, "Qwen/Qwen2-VL-2B-Instruct", "HF_HUB_OFFLINE")


def test_debug_variable_shows_traceback(tmp_path):
    (tmp_path / "config.json").write_text("{bad")
    env = {"VLMSURGEON_DEBUG": "1", "PATH": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "vlmsurgeon.cli", "inspect", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_help_does_not_import_torch():
    code = (
        "import sys, runpy; sys.argv=['vlmsurgeon','--help']\n"
        "try:\n    runpy.run_module('vlmsurgeon.cli', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "heavy=[m for m in ('torch','transformers','peft','bitsandbytes') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert "inspect" in proc.stdout and "tiny" in proc.stdout


def test_text_only_model_inspects_with_vision_zero(tmp_path, cli):
    code, out, err = cli("inspect", save_config("llama", tmp_path, num_hidden_layers=2), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["components"]["vision"]["params"] == 0
    assert data["components"]["merger"]["params"] == 0
    assert data["components"]["lm"]["params"] > 0 and data["other"] == 0
    assert data["components"]["head"]["roots"] == ["lm_head"]
