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
from pathlib import Path

import pytest
import tomllib

from tests.conftest import ROOT
from vlmsurgeon.ship.verify import Verdict
from vlmsurgeon.train.loop import finetune
from vlmsurgeon.train.runconfig import RunOptions

CHOICE = (
    "--target dequantized merges into the NF4-dequantized weights it was trained against (reproduces the "
    "model as trained); --target original into the unquantized weights (differs from training by the "
    "4-bit rounding error, often more than the adapter's change)"
)


@pytest.fixture(scope="module")
def work(tiny_models, shapes, tmp_path_factory) -> Path:
    """QLoRA --freeze vision on tiny qwen2_vl, trained in WORK with the base typed as models/tiny."""
    work = tmp_path_factory.mktemp("first_hour").resolve()
    shutil.copytree(tiny_models("qwen2_vl"), work / "models" / "tiny")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        finetune(
            RunOptions(
                model="models/tiny",
                data=str(shapes),
                output="run",
                freeze="vision",
                steps=2,
                batch_size=2,
                seq_len=1024,
            )
        )
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
    assert " ".join(merged.split()).endswith(
        ": merged 14 LoRA modules and 6 trained tensors into the dequantized weights, 1 shard(s), bf16"
    )
    lines = verdict.splitlines()
    assert lines[:3] == [
        "  checked: every exported tensor against the base and the run merged again",
        "    in fp32 and rounded once to bf16: 14 LoRA modules (peft's delta on",
        "    the 4-bit weights as loaded), 6 trained, 38 unchanged",
    ]
    assert lines[3] == "  info (not a check): max |Δlogit| on a probe image + prompt"
    figures = [re.fullmatch(r"    (.+): (\S+)", line).groups() for line in lines[4:]]
    assert [label for label, _ in figures] == [
        "export vs the model as trained (4-bit base + adapter)",
        "bf16 rounding alone (the same merge unrounded)",
        "unrounded merge vs the model as trained",
    ]
    whole, rounding, unrounded = (float(v) for _, v in figures)
    assert unrounded < 1e-4 < rounding and abs(whole - rounding) <= unrounded + 1e-6  # rounding is all of it
    assert max(len(line) for line in out.splitlines()) <= 80


def test_verify_failed_exits_1_with_the_verdict_in_json(work, tmp_path, cli, monkeypatch):
    import vlmsurgeon.ship.merge as merge_module

    real = merge_module.merged_tensors

    def one_off(*args, **kwargs):  # a merge that gets one LoRA module wrong by 1e-3 relative
        for name, tensor in real(*args, **kwargs):
            yield name, tensor * (1 + 1e-3) if name == "model.layers.0.self_attn.q_proj.weight" else tensor

    monkeypatch.setattr(merge_module, "merged_tensors", one_off)
    out_dir = tmp_path / "out"
    code, out, err = cli(
        "merge", work / "run", "-o", out_dir, "--dtype", "fp32", "--target", "original", "--verify", "--json"
    )
    assert code == 1
    assert err == (
        "vlmsurgeon: error: verify: model.layers.0.self_attn.q_proj.weight in the export is not the "
        "base and run's merge rounded to fp32 (try: merge again into a new -o; if it persists, run "
        "with VLMSURGEON_DEBUG=1 and report it)\n"
    )
    result = json.loads(out)
    verdict = result.pop("verify")
    assert result == {
        "out": str(out_dir),
        "kind": "checkpoint",
        "source": str(work / "run"),
        "base": str(work / "models" / "tiny"),
        "target": "original",
        "quantized_components": ["lm"],
        "dtype": "fp32",
        "only": None,
        "components": {"lm": {"lora_modules": 14, "full_tensors": 0}, "merger": {"lora_modules": 0, "full_tensors": 6}},
        "lora_modules_merged": 14,
        "full_tensors": 6,
        "shards": 1,
        "adapter_base": None,
    }
    assert verdict["ok"] is False and verdict["checked_against"] == "original"
    first = verdict["first_mismatch"]
    assert first["tensor"] == "model.layers.0.self_attn.q_proj.weight" and first["of"] == 64 * 64
    assert 0 < first["values"] <= first["of"] and first["max_ulps"] > 1


def test_verdict_lines_for_a_failed_merge():
    from vlmsurgeon.ship.verify import Mismatch

    verdict = Verdict(
        gate="original",
        dtype="bf16",
        lora=14,
        full=6,
        copied=38,
        mismatch=Mismatch("model.layers.0.mlp.up_proj.weight", 37, 8192, 1.0, 0.00049),
    )
    assert verdict.lines() == [
        "verify: FAILED",
        "  model.layers.0.mlp.up_proj.weight: 37 of 8,192 values differ (max 1 ulp of bf16, |Δ| 0.00049)",
        "  checked: every exported tensor against the base and the run merged again",
        "    in fp32 and rounded once to bf16: 14 LoRA modules (peft's delta on",
        "    the original weights), 6 trained, 38 unchanged",
    ]
    assert verdict.to_json()["first_mismatch"] == {
        "tensor": "model.layers.0.mlp.up_proj.weight",
        "values": 37,
        "of": 8192,
        "max_ulps": 1.0,
        "max_abs": 0.00049,
        "why": None,
    }


# --- 2. --adapter-only speaks like merge; --json for both ---------------------------------


def test_adapter_only_prints_a_sentence_or_json(work, tmp_path, cli):
    code, out, err = cli("merge", work / "run", "-o", tmp_path / "lm", "--adapter-only", "--only", "lm")
    assert code == 0, err
    assert " ".join(out.split()).endswith(": exported the lm part of the adapter, 14 LoRA modules (28 tensors)")
    code, out, err = cli("merge", work / "run", "-o", tmp_path / "lm2", "--adapter-only", "--only", "lm", "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "out": str(tmp_path / "lm2"),
        "kind": "adapter",
        "source": str(work / "run"),
        "only": ["lm"],
        "lora_modules": 14,
        "tensors": 28,
    }
    code, _, err = cli("merge", work / "run", "-o", tmp_path / "x", "--adapter-only", "--only", "lm", "--verify")
    assert code == 2 and err == (
        "vlmsurgeon: error: --adapter-only writes an adapter, which --verify cannot "
        "check (try: drop --verify, or merge without --adapter-only)\n"
    )


# --- 3. the run's base, from any directory --------------------------------------------------


def test_run_records_the_absolute_base_and_works_from_another_directory(work, shapes, tmp_path, monkeypatch, cli):
    record = json.loads((work / "run" / "vlmsurgeon.json").read_text())["base"]
    assert record == {
        "reference": str(work / "models" / "tiny"),
        "revision": None,
        "model_type": "qwen2_vl",
        "given": "models/tiny",
        "cwd": str(work),
    }
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("merge", work / "run", "-o", "merged")
    assert code == 0, err
    assert json.loads((tmp_path / "merged" / "vlmsurgeon.json").read_text())["vlmsurgeon_merge"]["base"] == str(
        work / "models" / "tiny"
    )
    code, out, err = cli(
        "generate",
        work / "run",
        "--image",
        shapes.parent / "img" / "red_circle.png",
        "--prompt",
        "Colour?",
        "--max-new-tokens",
        "2",
        "--json",
    )
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
        "saved with save_pretrained, or run from the directory finetune ran in)\n"
    )
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
    assert err == (
        f"vlmsurgeon: warning: adapter '{adapter}' was trained on a 4-bit NF4 base (says "
        f"{adapter / 'vlmsurgeon.json'}): merged into the dequantized weights. {CHOICE}\n"
    )
    assert json.loads(out)["adapter_base"] == {
        "base": "4bit",
        "quantized": ["lm"],
        "compute_dtype": "fp32",
        "from": str(adapter / "vlmsurgeon.json"),
    }
    assert same_weights(tmp_path / "a", reference)  # what merging the run gives

    (adapter / "vlmsurgeon.json").unlink()  # a peft adapter from elsewhere: nothing says how it trained
    code, out, err = cli("merge", adapter, "--base", base, "-o", tmp_path / "b", "--dtype", "fp32")
    assert code == 0, err
    assert err == (
        f"vlmsurgeon: warning: cannot tell whether adapter '{adapter}' was trained on a 4-bit "
        f"(QLoRA) base: its files do not say; merged into the original weights. {CHOICE}\n"
    )
    assert "into the original weights" in " ".join(out.split()) and not same_weights(tmp_path / "b", reference)
    code, _, err = cli(
        "merge", adapter, "--base", base, "-o", tmp_path / "c", "--dtype", "fp32", "--target", "dequantized"
    )
    assert code == 0 and "merged into the dequantized weights" in err
    assert same_weights(tmp_path / "c", reference)

    card = adapter / "README.md"  # what peft's model card says after a bitsandbytes 4-bit run
    card.write_text(
        card.read_text() + "\n## Training procedure\n\nThe following `bitsandbytes` quantization "
        "config was used during training:\n- quant_method: bitsandbytes\n- load_in_4bit: True\n"
    )
    code, _, err = cli("merge", adapter, "--base", base, "-o", tmp_path / "d", "--dtype", "fp32")
    assert code == 0 and err.startswith(
        f"vlmsurgeon: warning: adapter '{adapter}' was trained on a 4-bit NF4 "
        f"base (says {card} (peft's model card)): merged into the dequantized"
    )
    assert same_weights(tmp_path / "d", reference)


# --- 5. no progress bars from the libraries -------------------------------------------------


BARS = ("Loading weights", "Writing model shards", "Fetching", "it/s]")


def test_tiny_and_merge_verify_show_no_library_bars(work, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_DISABLE", "TRANSFORMERS_", "HF_DATASETS"))}
    exe = str(Path(sys.executable).parent / "vlmsurgeon")
    for args in (
        ["tiny", "qwen2_vl", "-o", str(tmp_path / "tiny")],
        ["merge", str(work / "run"), "-o", str(tmp_path / "out"), "--verify"],
    ):
        done = subprocess.run([exe, *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        lines = done.stderr.replace("\r", "\n").splitlines()
        assert [line for line in lines if any(bar in line for bar in BARS)] == [], args
    # the bars are there to hide: asked for, they show
    done = subprocess.run(
        [exe, "tiny", "qwen2_vl", "-o", str(tmp_path / "tiny2")],
        capture_output=True,
        text=True,
        env={**env, "HF_HUB_DISABLE_PROGRESS_BARS": "0"},
    )
    assert done.returncode == 0 and "Writing model shards" in done.stderr


# --- 6. make demo, pyproject -----------------------------------------------------------------


def test_make_demo_runs_the_chain_without_hiding_bars():
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("\ndemo:")[1].split("\n\n")[0]
    commands = [
        re.search(r"vlmsurgeon (\w+)", line).group(1)
        for line in recipe.splitlines()
        if re.search(r"/vlmsurgeon \w+", line)
    ]
    assert commands == ["inspect", "tiny", "inspect", "plan", "finetune", "merge", "generate", "eval"]
    assert "vlmsurgeon merge demo-out/run -o demo-out/merged --verify" in recipe
    assert "generate demo-out/merged --image demo-out/shapes/img/red_circle.png" in recipe
    # it ends by proving the training worked: the export against its base on held-out images
    last = recipe.split("/vlmsurgeon eval ")[1].replace("\\\n", " ")
    assert " ".join(last.split()) == (
        "demo-out/merged --compare demo-out/tiny-qwen2-vl --data demo-out/shapes/eval.jsonl --max-new-tokens 20"
    )
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in recipe
    assert "HF_HUB_DISABLE_PROGRESS_BARS=1" in text.split("\ntest:")[1].split("\n\n")[0]
    readme = (ROOT / "README.md").read_text()
    assert "inspect → plan → finetune → merge → generate" in readme


def test_shapes_hold_out_images_the_training_never_sees(shapes):
    """make_shapes.py's eval.jsonl, which `make demo` ends on: the training's 12 captions, each on an
    image that is not one of the training images (another shade, background and position)."""
    from vlmsurgeon.data.rows import load_dataset_rows

    train, held_out = load_dataset_rows(shapes), load_dataset_rows(shapes.parent / "eval.jsonl")
    assert not held_out.bad and len(held_out.samples) == len(train.samples) == 12
    assert [s.messages for s in held_out.samples] == [s.messages for s in train.samples]
    seen = {(shapes.parent / "img" / p.name).read_bytes() for p in (shapes.parent / "img").iterdir()}
    shown = [(shapes.parent / "eval" / p.name).read_bytes() for p in sorted((shapes.parent / "eval").iterdir())]
    assert len(shown) == 12 and not seen & set(shown)


def test_license_is_an_spdx_string():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project.get("license-files", []) == (["LICENSE"] if (ROOT / "LICENSE").is_file() else [])
