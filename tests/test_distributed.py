"""`finetune` under `accelerate launch` with the configs in examples/accelerate/: a 2-process CPU
run (DDP over gloo: accelerate runs FSDP on GPUs only) writes one adapter that plain peft loads;
the shipped FSDP / ZeRO-3 configs name what peft's guides require; under FSDP / ZeRO-3 the 4-bit
weights are stored in the compute dtype; FSDP that needs a GPU is refused without one."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.conftest import ROOT

CONFIGS = ROOT / "examples" / "accelerate"
LAUNCH_ENV = (
    "ACCELERATE_USE_FSDP",
    "FSDP_SYNC_MODULE_STATES",
    "ACCELERATE_USE_DEEPSPEED",
    "ACCELERATE_DEEPSPEED_ZERO_STAGE",
)


@pytest.fixture(autouse=True)
def _no_launch_env(monkeypatch):
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_run_under_accelerate_launch_saves_one_adapter(tiny_models, shapes, tmp_path, cli):
    """The shipped ddp.yaml, 2 CPU processes, QLoRA, 2 steps: rank 0 alone writes, once."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    base, run = tiny_models("qwen2_vl"), tmp_path / "run"
    accelerate = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--config_file",
            str(CONFIGS / "ddp.yaml"),
            "--main_process_port",
            str(_free_port()),
            "-m",
            "vlmsurgeon.cli",
            "finetune",
            str(base),
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
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"{run}: 2 steps") == 1, proc.stdout  # the result line: rank 0 only
    assert {p.name for p in run.iterdir()} == {
        "adapter",
        "processor",
        "checkpoints",
        "log.jsonl",
        "run.json",
        "vlmsurgeon.json",
    }
    steps = [r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == [1, 2]  # logged by rank 0, not twice
    record = json.loads((run / "vlmsurgeon.json").read_text())
    assert record["training"]["world_size"] == 2 and record["training"]["global_step"] == 2
    assert record["quantize"] == "4bit-nf4-double-quant"
    assert json.loads((run / "run.json").read_text())["inputs"]["world_size"] == 2
    # the figures `plan` gives for the same preset are what trained
    code, out, _ = cli("plan", base, "--freeze", "vision", "--json")
    assert code == 0
    planned = json.loads(out)
    assert {c: s["trainable"] for c, s in record["report"].items()} == {
        c: s["trainable"] for c, s in planned["components"].items()
    }
    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert sum(t.numel() for t in saved.values()) == record["trainable_params"] == planned["trainable_params"]
    assert all(bool(torch.isfinite(t).all()) for t in saved.values())
    lora_b = [t for k, t in saved.items() if "lora_B" in k]
    assert lora_b and all(bool(t.any()) for t in lora_b)  # initialised to zero: they trained
    # plain peft on the plain base: every saved tensor lands where it was trained
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), run / "adapter")
    state = model.state_dict()
    for key, tensor in saved.items():
        loaded = (
            key.replace("lora_A.weight", "lora_A.default.weight")
            .replace("lora_B.weight", "lora_B.default.weight")
            .replace(".merger.", ".merger.modules_to_save.default.")
        )
        assert torch.equal(state[loaded], tensor), key


def _config(name: str) -> tuple[str, dict]:
    text = (CONFIGS / name).read_text()
    return text, yaml.safe_load(text)


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml", "fsdp_qlora.yaml", "deepspeed_zero3.yaml"])
def test_every_shipped_config_says_how_to_run_it_and_accelerate_reads_it(name):
    from accelerate.commands.config.config_args import load_config_from_file

    text, _ = _config(name)
    assert text.startswith("# ")
    assert f"accelerate launch --config_file examples/accelerate/{name} -m vlmsurgeon.cli" in text
    config = load_config_from_file(str(CONFIGS / name))
    assert config.num_processes == 2 and config.use_cpu is False
    assert config.mixed_precision == ("bf16" if name == "deepspeed_zero3.yaml" else "no")


def test_fsdp_configs_set_what_peft_requires_for_qlora():
    """peft's FSDP guide: cpu_ram_efficient_loading true (so sync_module_states true),
    use_orig_params false; for QLoRA on small GPUs, offload_params true."""
    common = {
        "fsdp_version": 1,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_sync_module_states": True,
        "fsdp_use_orig_params": False,
        "fsdp_sharding_strategy": "FULL_SHARD",
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        "fsdp_backward_prefetch": "BACKWARD_PRE",
        "fsdp_forward_prefetch": False,
    }
    for name, offload in (("fsdp.yaml", False), ("fsdp_qlora.yaml", True)):
        text, config = _config(name)
        assert config["distributed_type"] == "FSDP"
        assert config["fsdp_config"] == {**common, "fsdp_offload_params": offload}, name
        assert "bnb_4bit_quant_storage" in text


def test_zero3_config_gathers_16bit_weights_and_leaves_accumulation_to_finetune():
    text, config = _config("deepspeed_zero3.yaml")
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"] == {
        "deepspeed_multinode_launcher": "standard",
        "offload_optimizer_device": "none",
        "offload_param_device": "none",
        "zero3_init_flag": True,
        "zero3_save_16bit_model": True,
        "zero_stage": 3,
    }
    assert "bnb_4bit_quant_storage" in text and "pip install deepspeed" in text


@pytest.mark.parametrize(
    "env, storage",
    [
        ({}, "uint8"),
        ({"ACCELERATE_USE_FSDP": "true"}, "float32"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "float32"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "uint8"),
    ],
)
def test_4bit_weights_are_stored_in_the_compute_dtype_when_sharded(tiny_models, monkeypatch, env, storage):
    import bitsandbytes as bnb
    import torch

    from vlmsurgeon.train.loop import _model_plan, load_for_training
    from vlmsurgeon.train.runconfig import RunOptions

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    base = tiny_models("qwen2_vl")
    opts = RunOptions(model=str(base), freeze="vision", dtype="fp32")
    source, tree, preset, opts = _model_plan(str(base), opts, False)
    model = load_for_training(str(base), opts, preset, tree, source.model_type)
    kinds = {m.weight.dtype for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert kinds == {getattr(torch, storage)}
    assert str(model.config.quantization_config.bnb_4bit_quant_storage).endswith(storage)


def test_fsdp_that_syncs_on_a_gpu_is_refused_without_one(tiny_models, shapes, tmp_path, cli, monkeypatch):
    import torch

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "true")
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    run = tmp_path / "run"
    code, out, err = cli(
        "finetune", tiny_models("qwen2_vl"), "--data", shapes, "-o", run, "--freeze", "vision", "--steps", "2"
    )
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == (
        "vlmsurgeon: error: accelerate config: FSDP with fsdp_sync_module_states (which "
        "fsdp_cpu_ram_efficient_loading needs) syncs on a GPU, and this machine has none (try: on the CPU "
        "launch with examples/accelerate/ddp.yaml (DDP over gloo); FSDP needs GPUs)"
    )
    assert "Traceback" not in err and not run.exists()  # refused before the first weight, nothing left


def _trainer(kind: str, callbacks: list, rank0: bool = True) -> SimpleNamespace:
    from accelerate.utils import DistributedType

    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(distributed_type=DistributedType(kind)),
        callback_handler=SimpleNamespace(callbacks=list(callbacks)),
        is_world_process_zero=lambda: rank0,
    )
    trainer.remove_callback = trainer.callback_handler.callbacks.remove
    return trainer


def test_fsdp_asked_on_the_cpu_is_said_to_run_as_ddp(monkeypatch):
    from vlmsurgeon.train.distributed import fit_engine

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    opts = SimpleNamespace(strict_grads=False)
    assert fit_engine(_trainer("MULTI_CPU", []), opts) == [
        "the accelerate config asks for FSDP, but accelerate runs this as MULTI_CPU (its FSDP needs GPUs): "
        "every process holds the whole model"
    ]
    assert fit_engine(_trainer("MULTI_CPU", [], rank0=False), opts) == []  # said once, by rank 0
    assert fit_engine(_trainer("FSDP", []), opts) == []


def test_sharded_runs_leave_out_what_reads_whole_tensors(monkeypatch):
    from vlmsurgeon.train.distributed import fit_engine
    from vlmsurgeon.train.telemetry import EvalGenerate
    from vlmsurgeon.train.trainer import GradCheck, JsonlLog

    grads, log = GradCheck(applied=None, strict=True), JsonlLog(Path("log.jsonl"))
    evals = EvalGenerate.__new__(EvalGenerate)
    trainer = _trainer("DEEPSPEED", [grads, log, evals])
    notes = fit_engine(trainer, SimpleNamespace(strict_grads=True))
    assert trainer.callback_handler.callbacks == [log]
    assert notes == [
        "the first-step gradient check (--strict-grads) is off under DEEPSPEED, whose tensors are sharded; "
        "`vlmsurgeon plan --probe` runs it on one process",
        "--eval-generate is off under DEEPSPEED, whose tensors are sharded; "
        "`vlmsurgeon eval RUN --data …` runs it afterwards",
    ]
    ddp = _trainer("MULTI_GPU", [grads, log])
    assert fit_engine(ddp, SimpleNamespace(strict_grads=True)) == [] and ddp.callback_handler.callbacks == [grads, log]
