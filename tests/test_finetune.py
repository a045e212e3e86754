"""`finetune` on tiny models, on the CPU: QLoRA learns, the 4-bit layers are where the preset
says, --freeze vision leaves vision untouched, resume is exact, labels cover assistant turns."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT
from vlmsurgeon.train.loop import finetune
from vlmsurgeon.train.runconfig import RunOptions


def options(model: Path, data: Path, out: Path, **extra) -> RunOptions:
    base = dict(
        model=str(model),
        data=str(data),
        output=str(out),
        freeze="vision",
        steps=30,
        lr=5e-3,
        batch_size=2,
        seq_len=512,
        seed=0,
    )
    return RunOptions(**{**base, **extra})


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "mllama"])
def test_qlora_overfits_and_quantizes_only_the_lm(tiny_models, shapes, tmp_path, family):
    import bitsandbytes as bnb

    result = finetune(options(tiny_models(family), shapes, tmp_path / "run"))
    history = losses(tmp_path / "run")
    assert len(history) == 30 and result.global_step == 30
    first, last = sum(history[:3]) / 3, sum(history[-3:]) / 3
    assert last <= first / 2, (first, last)
    applied = result.applied
    kinds = {}
    for name, module in applied.model.named_modules():
        base = getattr(module, "base_layer", None)
        if ".lora_" in name or ".base_layer" in name:
            continue  # the adapters themselves, and the layer already seen through its wrapper
        if isinstance(module, torch.nn.Linear) or base is not None:
            layer = base if base is not None else module
            comp = applied.component(name)
            kinds.setdefault(comp, set()).add(isinstance(layer, bnb.nn.Linear4bit))
    assert kinds["lm"] == {True}, kinds  # every LM Linear is 4-bit ...
    for comp in ("vision", "merger", "head"):
        if comp in kinds:
            assert kinds[comp] == {False}, (comp, kinds)  # ... and nothing else is
    record = json.loads((tmp_path / "run" / "vlmsurgeon.json").read_text())
    assert record["quantize"] == "4bit-nf4-double-quant"
    assert record["report"]["vision"]["trainable"] == 0
    assert record["data"]["rows"] == 12 and len(record["data"]["sha256"]) == 64
    assert {"torch", "transformers", "peft", "bitsandbytes"} <= set(record["versions"])


def test_freeze_vision_leaves_vision_bit_identical(tiny_models, shapes, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base_dir = tiny_models("qwen2_vl")
    # in-memory names (the file may store legacy names that transformers converts on load)
    base = {n: p.detach() for n, p in AutoModelForImageTextToText.from_pretrained(base_dir).named_parameters()}
    result = finetune(options(base_dir, shapes, tmp_path / "run", steps=10))
    trained = {result.applied.component(n): None for n, _ in result.applied.model.named_parameters()}
    assert "vision" in trained
    for name, param in result.applied.model.named_parameters():
        base_name = name.removeprefix("base_model.model.")
        if result.applied.component(name) == "vision" and ".lora_" not in name:
            assert torch.equal(param.detach().cpu(), base[base_name]), name
    adapter = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and all("visual.blocks" not in k for k in adapter)
    assert all(t.abs().sum() > 0 for t in lora_b)  # initialised to zero, so they moved
    merger = {k.replace("base_model.model.", ""): t for k, t in adapter.items() if "visual.merger" in k}
    assert merger and all(k in base for k in merger)
    assert all(not torch.equal(t, base[k]) for k, t in merger.items() if k.endswith("weight"))
    # the adapter loads on the base with plain peft
    model = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(base_dir), tmp_path / "run" / "adapter"
    )
    assert sum(1 for n, _ in model.named_parameters() if "lora_A" in n) == 14


def test_resume_is_exact(tiny_models, shapes, tmp_path):
    model = tiny_models("qwen2_vl")
    finetune(options(model, shapes, tmp_path / "straight", steps=6, save_every=3, quantize="none"))
    split = tmp_path / "split"
    finetune(options(model, shapes, split, steps=6, save_every=3, quantize="none"))
    # keep only the step-3 checkpoint and resume from it: 3 steps, then 3 more
    shutil.rmtree(split / "checkpoints" / "checkpoint-6")
    for entry in ("adapter", "vlmsurgeon.json"):
        path = split / entry
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    result = finetune(options(model, shapes, split, steps=6, save_every=3, quantize="none"), resume=True)
    assert result.global_step == 6
    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(split / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_incomplete_checkpoint_is_not_resumed(tiny_models, shapes, tmp_path):
    from vlmsurgeon.train.loop import latest_checkpoint

    run = tmp_path / "run"
    finetune(options(tiny_models("qwen2_vl"), shapes, run, steps=4, save_every=2, quantize="none"))
    (run / "checkpoints" / "checkpoint-4" / ".vlmsurgeon-complete").unlink()  # torn write
    assert latest_checkpoint(run).name == "checkpoint-2"


def test_interrupt_saves_a_checkpoint_then_resume_finishes(tiny_models, shapes, tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "vlmsurgeon.cli",
        "finetune",
        str(tiny_models("qwen2_vl")),
        "--data",
        str(shapes),
        "-o",
        str(run),
        "--freeze",
        "vision",
        "--steps",
        "400",
        "--quantize",
        "none",
        "--lr",
        "1e-3",
        "--save-every",
        "1000",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    log = run / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    checkpoints = list((run / "checkpoints").glob("checkpoint-*/.vlmsurgeon-complete"))
    assert len(checkpoints) == 1
    assert not (run / "vlmsurgeon.json").exists()
    step = int(checkpoints[0].parent.name.split("-")[1])
    resume = [a for a in cmd if a not in ("--steps", "400")] + ["--steps", str(step + 2), "--resume"]  # same inputs
    done = subprocess.run(resume, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "vlmsurgeon.json").read_text())["training"]["global_step"] == step + 2


def test_cpu_ddp_smoke_two_processes(tiny_models, shapes, tmp_path):
    """torchrun, 2 processes, gloo on the CPU, 2 steps: one run directory, one adapter."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            "-m",
            "vlmsurgeon.cli",
            "finetune",
            str(tiny_models("qwen2_vl")),
            "--data",
            str(shapes),
            "-o",
            str(run),
            "--freeze",
            "vision",
            "--steps",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((run / "vlmsurgeon.json").read_text())
    assert record["training"]["world_size"] == 2 and record["training"]["global_step"] == 2
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert len(losses(run)) == 2  # logged once, by rank 0
