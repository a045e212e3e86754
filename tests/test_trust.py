"""Causes behind issue 27's broken promises that live below the commands: peft dropping adapter
keys it renames wrongly, bitsandbytes' CPU inference repacking of 4-bit weights, the merge's idea
of which modules were 4-bit, and third-party lines on the user's terminal."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT
from tests.test_finetune import options
from vlmsurgeon.train.loop import finetune


@pytest.fixture(scope="module")
def mistral_run(tiny_models, shapes, tmp_path_factory):
    """Mistral Large 3's tiny model: shared_experts, whose adapter keys peft renames wrongly, and an
    indexer projection transformers keeps out of 4-bit."""
    work = tmp_path_factory.mktemp("mistral")
    finetune(options(tiny_models("mistral_large4"), shapes, work / "run", steps=4, save_every=2, lr=1e-3, seq_len=1024))
    return work / "run"


def test_a_run_loads_with_every_adapter_tensor_it_saved(mistral_run):
    from vlmsurgeon.ship.trained import load_trained
    from vlmsurgeon.ship.verify import with_adapter

    saved = load_file(str(mistral_run / "adapter" / "adapter_model.safetensors"))
    model = with_adapter(load_trained(mistral_run, None).base, load_trained(mistral_run, None))
    params = dict(model.named_parameters())
    shared = [k for k in saved if "shared_experts" in k]
    assert shared  # the keys peft 0.21 turns into `mlp.mlp.shared_experts` and skips
    for key in saved:
        place = key.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
        if place in params:
            assert torch.equal(params[place].detach(), saved[key]), key


def test_resume_restores_every_adapter_tensor(mistral_run, tiny_models, shapes, tmp_path):
    split = tmp_path / "split"
    shutil.copytree(mistral_run, split)
    shutil.rmtree(split / "checkpoints" / "checkpoint-4")
    for entry in ("adapter", "vlmsurgeon.json"):
        path = split / entry
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    finetune(
        options(tiny_models("mistral_large4"), shapes, split, steps=4, save_every=2, lr=1e-3, seq_len=1024), resume=True
    )
    a = load_file(str(mistral_run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(split / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    worst = {k: (a[k] - b[k]).abs().max().item() for k in a}
    assert max(worst.values()) <= 1e-6, sorted(worst.items(), key=lambda kv: -kv[1])[:3]


def test_merge_dequantizes_only_what_training_held_in_4_bit(mistral_run, tiny_models):
    from vlmsurgeon.model.inspection import meta_model
    from vlmsurgeon.recipe.freeze import four_bit_modules
    from vlmsurgeon.ship.trained import load_trained

    trained = load_trained(mistral_run, None)
    _, meta = meta_model(str(tiny_models("mistral_large4")))
    held = four_bit_modules(trained, meta)
    kept = sorted(m for m in trained.lora if m not in held)
    # transformers keeps the indexer's weights_proj in fp32 (`_keep_in_fp32_modules`), never 4-bit
    assert kept == [f"model.language_model.layers.{i}.self_attn.indexer.weights_proj" for i in (0, 1)]


def test_4bit_layers_evaluate_then_train_again_at_any_width():
    """bitsandbytes repacks a Linear4bit for its CPU bf16 kernel the first time it runs in eval
    without gradients: a width not divisible by 32 fails, and a repacked layer cannot train again."""
    import bitsandbytes as bnb

    from vlmsurgeon.recipe.freeze import training_numerics

    layer = bnb.nn.Linear4bit(64, 48, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(48, 64) * 0.05, requires_grad=False, quant_type="nf4")
    layer = training_numerics(torch.nn.Sequential(layer.to("cpu")))
    x = torch.randn(3, 64)
    with torch.no_grad():
        before = layer.eval()(x)
    x.requires_grad_(True)
    out = layer.train()(x)
    out.sum().backward()
    assert x.grad is not None and torch.allclose(out.detach(), before, atol=1e-6)


def test_no_third_party_line_on_a_refused_command(tmp_path):
    """A command refusing its input after torch, transformers, peft and bitsandbytes are imported
    prints our one line and nothing else (bitsandbytes logs a kernel-hub probe on import)."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapter_config.json").write_text("{}")
    # the order of every command: quiet_libraries first, then the heavy imports, then the refusal
    probe = (
        "import sys; from vlmsurgeon.quiet import quiet_libraries; quiet_libraries(); "
        "import peft, bitsandbytes; from vlmsurgeon.cli import main; "
        "sys.argv = ['vlmsurgeon', 'merge', sys.argv[1], '-o', sys.argv[2]]; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "run"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("vlmsurgeon: error: "), done.stderr


@pytest.mark.parametrize("native", [True, False])
def test_data_check_never_runs_a_repo_processor(native, tiny_models, shapes, tmp_path):
    """A processor that needs repo code is refused, even with "y" on stdin (left unset,
    transformers asks on the terminal and runs the code on a yes)."""
    import json

    repo = tmp_path / "repo"
    shutil.copytree(tiny_models("qwen2_vl"), repo)
    marker = tmp_path / "ran"
    (repo / "processing_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass EvilProcessor: pass\n")
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        if (repo / name).is_file():
            config = json.loads((repo / name).read_text())
            config["auto_map"] = {"AutoProcessor": "processing_evil.EvilProcessor"}
            (repo / name).write_text(json.dumps(config))
    if not native:  # no processor files transformers knows: only the repo's code could load one
        for file in repo.iterdir():
            if file.name != "processing_evil.py":
                file.unlink()
        (repo / "config.json").write_text(
            json.dumps({"model_type": "evil_vlm", "auto_map": {"AutoProcessor": "processing_evil.EvilProcessor"}})
        )
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "vlmsurgeon"), "data", "check", str(shapes), "--model", str(repo)],
        input="y\ny\ny\n",
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert not marker.exists()
    if native:  # transformers' own processor class is used, the repo's file is never imported
        assert done.returncode == 0 and done.stderr == "", done.stderr
        return
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"vlmsurgeon: error: model '{repo}': its processor needs code from the model repo")
    assert done.stderr.count("\n") == 1 and "Do you wish" not in done.stdout


def test_a_name_too_long_for_the_file_system_is_bad_input(tiny_models, shapes, tmp_path, cli):
    """Python 3.11's Path.exists() raises on a name over 255 bytes instead of answering False: every
    command that looks at a path the user typed meets it."""
    long = tmp_path / ("x" * 300)
    for args in (
        ["tiny", "qwen2_vl", "-o", long],
        ["data", "check", f"{long}.jsonl", "--model", tiny_models("qwen2_vl")],
    ):
        code, out, err = cli(*args)
        assert code == 2 and out == ""
        assert err.startswith("vlmsurgeon: error: '") and err.count("\n") == 1
        assert "is longer than the file system allows (255 bytes) (try: a shorter file or folder name)" in err


def test_budget_junit_path_is_checked_before_the_check_runs(tiny_models, tmp_path, cli):
    budget = tmp_path / "b.yaml"
    budget.write_text(
        f"models:\n  - model: {tiny_models('qwen2_vl')}\n    freeze: vision\n    limits:\n      total: 1B\n"
    )
    (tmp_path / "afile").write_text("")
    (tmp_path / "folder").mkdir()
    for junit, why in (
        (tmp_path / "afile" / "j.xml", f"'{tmp_path / 'afile'}' is a file, not a folder"),
        (tmp_path / "folder", "is a folder"),
    ):
        code, out, err = cli("budget", "check", budget, "--junit", junit)
        assert (code, out) == (2, "")  # no table before the refusal
        assert err.startswith(f"vlmsurgeon: error: --junit {junit}: {why} (try: ") and err.count("\n") == 1


def test_a_family_the_installed_transformers_breaks_is_refused_up_front(tmp_path, shapes, cli):
    """transformers 5.24's Llama 4 forward reads `image_outputs` from an output that has none:
    finetune and plan say so before any weight loads, naming the release that works."""
    from importlib.metadata import version

    from tests.conftest import save_config

    model = save_config("llama4", tmp_path / "llama4")
    code, out, err = cli("finetune", model, "--data", shapes, "--freeze", "vision", "-o", tmp_path / "run")
    if not version("transformers").startswith("5.24."):  # another release: its own word, not this one
        assert "image_outputs" not in err
        return
    assert code == 2 and not (tmp_path / "run").exists()
    assert "reads `image_outputs` from its language model's output" in err and err.count("\n") == 1
    assert "(try: pip install 'transformers==5.23.*'" in err
