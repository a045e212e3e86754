"""A user's first hour (issue 15): merge --verify says ok/FAILED and labels its figures, merge
--json, runs whose base was typed as a relative path, bare QLoRA adapters, no library progress
bars, `make demo` running the whole chain, and pyproject's license in SPDX form."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT
from vlmsurgeon.runconfig import RunOptions
from vlmsurgeon.train import finetune
from vlmsurgeon.verify import Verdict

CHOICE = ("--target dequantized merges into the NF4-dequantized weights it was trained against (reproduces the "
          "model as trained); --target original into the unquantized weights (differs from training by the "
          "4-bit rounding error, often more than the adapter's change)")


@pytest.fixture(scope="module")
def work(tiny_models, shapes, tmp_path_factory) -> Path:
    """QLoRA --freeze vision on tiny qwen2_vl, trained in WORK with the base typed as models/tiny."""
    work = tmp_path_factory.mktemp("first_hour").resolve()
    shutil.copytree(tiny_models("qwen2_vl"), work / "models" / "tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        finetune(RunOptions(model="models/tiny", data=str(shapes), output="run", freeze="vision", steps=2,
                            batch_size=2, seq_len=1024))
    return work


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    left, right = weights(a), weights(b)
    return left.keys() == right.keys() and all(left[k].equal(right[k]) for k in left)


# --- 1. the verify verdict ------------------------------------------------------------------


def test_verify_prints_the_verdict_first_then_labelled_figures(work, tmp_path, cli):
    code, out, err = cli("merge", work / "run", "-o", tmp_path / "out", "--verify")
    assert code == 0, err
    merged, verdict = out.split("verify: ok\n")  # the verdict is the first line of verify's output
    assert " ".join(merged.split()).endswith(": merged 14 LoRA modules and 6 trained tensors into the "
                                             "dequantized weights, 1 shard(s), bf16")
    lines = verdict.splitlines()
    assert lines[0] == "  checked: export vs the model as trained (4-bit base + adapter)"
    judged, allowed = map(float, re.fullmatch(r"    max \|Δlogit\| (\S+), allowed (\S+)", lines[1]).groups())
    tolerance, scale = re.fullmatch(r"    \(tolerance (\S+) for bf16 × largest logit (\S+)\)", lines[2]).groups()
    assert tolerance == "0.04" and judged <= allowed == pytest.approx(0.04 * float(scale), rel=1e-2)
    assert lines[3] == "  info (not a check): export vs original base + adapter"
    assert re.fullmatch(r"    max \|Δlogit\| \S+; expected to differ for a QLoRA run:", lines[4])
    assert lines[5:] == ["    the adapter was trained against the 4-bit weights"]


def test_verify_failed_exits_1_with_the_verdict_in_json(work, tmp_path, cli, monkeypatch):
    from vlmsurgeon import verify

    monkeypatch.setitem(verify.TOLERANCE, "fp32", 0.0)  # nothing passes a zero tolerance
    out_dir = tmp_path / "out"
    code, out, err = cli("merge", work / "run", "-o", out_dir, "--dtype", "fp32", "--target", "original",
                         "--verify", "--json")
    assert code == 1
    assert err == ("vlmsurgeon: error: verify: the export does not reproduce the trained model within tolerance "
                   "(try: compare --target dequantized/original, or export --dtype fp32)\n")
    result = json.loads(out)
    verdict = result.pop("verify")
    assert result == {
        "out": str(out_dir), "kind": "checkpoint", "source": str(work / "run"), "base": str(work / "models" / "tiny"),
        "target": "original", "quantized_components": ["lm"], "dtype": "fp32", "only": None,
        "components": {"lm": {"lora_modules": 14, "full_tensors": 0}, "merger": {"lora_modules": 0, "full_tensors": 6}},
        "lora_modules_merged": 14, "full_tensors": 6, "shards": 1, "adapter_base": None}
    assert verdict["ok"] is False and verdict["checked_against"] == "original" and verdict["allowed"] == 0.0
    assert verdict["max_abs_logit_diff"] == verdict["vs_original"] < 1e-4 < verdict["vs_trained"]


def test_verdict_lines_for_a_failed_original_target():
    lines = Verdict(vs_original=0.5, vs_trained=3.25, scale=6.0, gate="original", tolerance=0.04).lines("bf16")
    assert lines == ["verify: FAILED",
                     "  checked: export vs original base + adapter",
                     "    max |Δlogit| 0.5, allowed 0.24",
                     "    (tolerance 0.04 for bf16 × largest logit 6)",
                     "  info (not a check): export vs the model as trained (4-bit base + adapter)",
                     "    max |Δlogit| 3.25; expected to differ for a QLoRA run:",
                     "    --target original skips the 4-bit weights it trained on"]
    plain = Verdict(vs_original=1e-6, vs_trained=None, scale=2.0, gate="original", tolerance=1e-5).lines("fp32")
    assert plain == ["verify: ok", "  checked: export vs original base + adapter",
                     "    max |Δlogit| 1e-06, allowed 2e-05", "    (tolerance 1e-05 for fp32 × largest logit 2)"]


# --- 2. --adapter-only speaks like merge; --json for both ---------------------------------


def test_adapter_only_prints_a_sentence_or_json(work, tmp_path, cli):
    code, out, err = cli("merge", work / "run", "-o", tmp_path / "lm", "--adapter-only", "--only", "lm")
    assert code == 0, err
    assert " ".join(out.split()).endswith(": exported the lm part of the adapter, 14 LoRA modules (28 tensors)")
    code, out, err = cli("merge", work / "run", "-o", tmp_path / "lm2", "--adapter-only", "--only", "lm", "--json")
    assert code == 0, err
    assert json.loads(out) == {"out": str(tmp_path / "lm2"), "kind": "adapter", "source": str(work / "run"),
                               "only": ["lm"], "lora_modules": 14, "tensors": 28}
    code, _, err = cli("merge", work / "run", "-o", tmp_path / "x", "--adapter-only", "--only", "lm", "--verify")
    assert code == 2 and err == ("vlmsurgeon: error: --adapter-only writes an adapter, which --verify cannot "
                                 "check (try: drop --verify, or merge without --adapter-only)\n")


# --- 3. the run's base, from any directory --------------------------------------------------


def test_run_records_the_absolute_base_and_works_from_another_directory(work, shapes, tmp_path, monkeypatch, cli):
    record = json.loads((work / "run" / "vlmsurgeon.json").read_text())["base"]
    assert record == {"reference": str(work / "models" / "tiny"), "revision": None, "model_type": "qwen2_vl",
                      "given": "models/tiny", "cwd": str(work)}
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("merge", work / "run", "-o", "merged")
    assert code == 0, err
    assert json.loads((tmp_path / "merged" / "vlmsurgeon.json").read_text())["vlmsurgeon_merge"]["base"] == \
        str(work / "models" / "tiny")
    code, out, err = cli("generate", work / "run", "--image", shapes.parent / "img" / "red_circle.png", "--prompt", "Colour?",
                         "--max-new-tokens", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["kind"] == "run" and json.loads(out)["tokens"] <= 2


def test_old_run_with_a_relative_base(work, tmp_path, monkeypatch, cli):
    run = Path(shutil.copytree(work / "run", tmp_path / "old", ignore=shutil.ignore_patterns("checkpoints")))
    record = json.loads((run / "vlmsurgeon.json").read_text())
    record["base"] = {"reference": "models/tiny", "revision": None, "model_type": "qwen2_vl"}  # as runs were
    (run / "vlmsurgeon.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("merge", run, "-o", "a")  # run.json (written by every run since resume) has it absolute
    assert code == 0, err
    (run / "run.json").unlink()
    code, _, err = cli("merge", run, "-o", "b")
    assert code == 2 and err == (
        f"vlmsurgeon: error: run '{run}' records its base as 'models/tiny', relative to where it was trained, "
        f"and that is not a directory from here ({tmp_path.resolve()}) (try: pass --base DIR, a checkpoint "
        "saved with save_pretrained, or run from the directory finetune ran in)\n")
    assert not (tmp_path / "b").exists()
    monkeypatch.chdir(work)  # from where it was trained, the relative path still works
    code, _, err = cli("merge", run, "-o", tmp_path / "c")
    assert code == 0, err


# --- 4. a bare QLoRA adapter merged with --base ---------------------------------------------


def test_bare_adapter_says_which_weights_it_went_into(work, tmp_path, cli):
    base, reference = work / "models" / "tiny", tmp_path / "from-run"
    assert cli("merge", work / "run", "-o", reference, "--dtype", "fp32")[0] == 0
    adapter = Path(shutil.copytree(work / "run" / "adapter", tmp_path / "adapter"))
    code, out, err = cli("merge", adapter, "--base", base, "-o", tmp_path / "a", "--dtype", "fp32", "--json")
    assert code == 0, err
    assert err == (f"vlmsurgeon: warning: adapter '{adapter}' was trained on a 4-bit NF4 base (says "
                   f"{adapter / 'vlmsurgeon.json'}): merged into the dequantized weights. {CHOICE}\n")
    assert json.loads(out)["adapter_base"] == {"base": "4bit", "quantized": ["lm"], "compute_dtype": "fp32",
                                               "from": str(adapter / "vlmsurgeon.json")}
    assert same_weights(tmp_path / "a", reference)  # what merging the run gives

    (adapter / "vlmsurgeon.json").unlink()  # a peft adapter from elsewhere: nothing says how it trained
    code, out, err = cli("merge", adapter, "--base", base, "-o", tmp_path / "b", "--dtype", "fp32")
    assert code == 0, err
    assert err == (f"vlmsurgeon: warning: cannot tell whether adapter '{adapter}' was trained on a 4-bit "
                   f"(QLoRA) base: its files do not say; merged into the original weights. {CHOICE}\n")
    assert "into the original weights" in " ".join(out.split()) and not same_weights(tmp_path / "b", reference)
    code, _, err = cli("merge", adapter, "--base", base, "-o", tmp_path / "c", "--dtype", "fp32",
                       "--target", "dequantized")
    assert code == 0 and "merged into the dequantized weights" in err
    assert same_weights(tmp_path / "c", reference)

    card = adapter / "README.md"  # what peft's model card says after a bitsandbytes 4-bit run
    card.write_text(card.read_text() + "\n## Training procedure\n\nThe following `bitsandbytes` quantization "
                    "config was used during training:\n- quant_method: bitsandbytes\n- load_in_4bit: True\n")
    code, _, err = cli("merge", adapter, "--base", base, "-o", tmp_path / "d", "--dtype", "fp32")
    assert code == 0 and err.startswith(f"vlmsurgeon: warning: adapter '{adapter}' was trained on a 4-bit NF4 "
                                        f"base (says {card} (peft's model card)): merged into the dequantized")
    assert same_weights(tmp_path / "d", reference)


# --- 5. no progress bars from the libraries -------------------------------------------------


BARS = ("Loading weights", "Writing model shards", "Fetching", "it/s]")


def test_tiny_and_merge_verify_show_no_library_bars(work, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_DISABLE", "TRANSFORMERS_", "HF_DATASETS"))}
    exe = str(Path(sys.executable).parent / "vlmsurgeon")
    for args in (["tiny", "qwen2_vl", "-o", str(tmp_path / "tiny")],
                 ["merge", str(work / "run"), "-o", str(tmp_path / "out"), "--verify"]):
        done = subprocess.run([exe, *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        lines = done.stderr.replace("\r", "\n").splitlines()
        assert [line for line in lines if any(bar in line for bar in BARS)] == [], args
    # the bars are there to hide: asked for, they show
    done = subprocess.run([exe, "tiny", "qwen2_vl", "-o", str(tmp_path / "tiny2")], capture_output=True, text=True,
                          env={**env, "HF_HUB_DISABLE_PROGRESS_BARS": "0"})
    assert done.returncode == 0 and "Writing model shards" in done.stderr


# --- 6. make demo, pyproject -----------------------------------------------------------------


def test_make_demo_runs_the_chain_without_hiding_bars():
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("\ndemo:")[1].split("\n\n")[0]
    commands = [re.search(r"vlmsurgeon (\w+)", line).group(1) for line in recipe.splitlines()
                if re.search(r"/vlmsurgeon \w+", line)]
    assert commands == ["inspect", "tiny", "inspect", "plan", "finetune", "merge", "generate"]
    assert "vlmsurgeon merge demo-out/run -o demo-out/merged --verify" in recipe
    assert "generate demo-out/merged --image demo-out/shapes/img/red_circle.png" in recipe
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in recipe
    assert "HF_HUB_DISABLE_PROGRESS_BARS=1" in text.split("\ntest:")[1].split("\n\n")[0]
    readme = (ROOT / "README.md").read_text()
    assert "inspect → plan → finetune → merge → generate" in readme


def test_license_is_an_spdx_string():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project.get("license-files", []) == (["LICENSE"] if (ROOT / "LICENSE").is_file() else [])
