"""`plan --gpus N --strategy ddp|fsdp|zero3 --gpu-memory M`: per-GPU memory recomputed by hand
from the plan's own single-GPU parts, fits / GPUs needed, and bad values refused in one line."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from vlmsurgeon.plan.memory import ScaleOut

BIG = ROOT / "examples" / "qwen3-vl-235b-a22b"
NF4 = 4 + 8 / 64 + 32 / (64 * 256)
GIB = 2**30


def test_fsdp_on_8_gpus_of_80gib_for_235b_lm_lora(cli):
    code, out, err = cli(
        "plan", BIG, "--preset", "lm-lora", "--gpus", "8", "--strategy", "fsdp", "--gpu-memory", "80GiB", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    m, s = data["memory"], data["scale_out"]
    text = json.loads((BIG / "config.json").read_text())["text_config"]
    h, moe, experts = text["hidden_size"], text["moe_intermediate_size"], text["num_experts"]
    heads, kv, hd = text["num_attention_heads"], text["num_key_value_heads"], text["head_dim"]
    # one decoder layer, whole: q/k/v/o in NF4; fused experts, router, 4 norms in bf16
    linear = 2 * (heads * hd * h + kv * hd * h)
    other = experts * h * 2 * moe + experts * moe * h + experts * h + 2 * hd + 2 * h
    block = int(linear * NF4 / 8) + 2 * other
    assert (s["gathered_unit"], s["gathered_bytes"]) == ("model.language_model.layers.0", block)
    state = m["weights"] + m["adapters"] + m["gradients"] + m["optimizer"]
    # one layer's backward at batch 1 × seq 2048: its bf16 activations recomputed and their
    # gradients (per token 2·(9h + 3·moe·top-k) each), the largest 4-bit weight, q_proj
    # (heads·head_dim × h), dequantized, and the head input's fp32 gradient
    per_token = 2 * (9 * h + 3 * moe * text["num_experts_per_tok"])
    assert m["backward"] == 2 * 2048 * per_token + 2 * heads * hd * h + 4 * 2048 * h
    assert m["activations"] == 2048 * text["num_hidden_layers"] * 2 * h  # each layer's input, bf16
    # checkpointing on (the default): the loss's logits and a layer's backward never overlap
    act = m["activations"] + max(m["logits"], m["backward"])
    per_gpu = -(-state // 8) + block + act
    assert s == {
        "strategy": "fsdp",
        "gpus": 8,
        "per_gpu_bytes": per_gpu,
        "gpu_memory_bytes": 80 * GIB,
        "fits": True,
        "gpus_needed": 6,
        "state_bytes": state,
        "gathered_bytes": block,
        "gathered_unit": "model.language_model.layers.0",
        "activation_bytes": act,
    }
    assert per_gpu <= 80 * GIB
    # 6 is the smallest N: 5 GPUs do not hold it, 6 do
    assert -(-state // 5) + block + act > 80 * GIB >= -(-state // 6) + block + act
    assert round(per_gpu / GIB, 2) == 60.47


def test_ddp_and_zero3_on_a_tiny_model(cli, tiny_models):
    model = tiny_models("llava")
    code, out, err = cli("plan", model, "--preset", "lm-lora", "--json")
    assert code == 0, err
    m = json.loads(out)["memory"]
    single = m["total"]
    code, out, err = cli("plan", model, "--preset", "lm-lora", "--gpus", "4", "--json")
    assert code == 0, err
    s = json.loads(out)["scale_out"]
    # ddp (the default strategy): every GPU holds the single-GPU estimate; 80GiB by default
    assert (s["strategy"], s["per_gpu_bytes"], s["gpu_memory_bytes"], s["fits"], s["gpus_needed"]) == (
        "ddp",
        single,
        80 * GIB,
        True,
        1,
    )
    code, out, _ = cli("plan", model, "--preset", "lm-lora", "--gpus", "4", "--gpu-memory", "64KiB")
    line = " ".join(out.split())
    assert code == 0 and f"scale-out: ddp on 4 GPU(s): {single / 2**20:.2f} MiB per GPU (everything on" in line
    assert (
        "does not fit in 64.00 KiB; does not fit at any N (ddp keeps everything on every GPU; try fsdp or zero3)"
    ) in line
    code, out, _ = cli("plan", model, "--preset", "lm-lora", "--strategy", "fsdp", "--gpu-memory", "64KiB")
    line = " ".join(out.split())
    assert code == 0 and "fsdp on 1 GPU(s)" in line and "does not fit at any N (the gathered unit" in line
    code, out, _ = cli(
        "plan", model, "--preset", "lm-lora", "--gpus", "2", "--strategy", "zero3", "--gpu-memory", "1GiB", "--json"
    )
    s = json.loads(out)["scale_out"]
    assert s["per_gpu_bytes"] == -(-s["state_bytes"] // 2) + s["gathered_bytes"] + s["activation_bytes"]
    assert s["state_bytes"] == m["weights"] + m["adapters"] + m["gradients"] + m["optimizer"]
    assert s["activation_bytes"] == m["activations"] + max(m["logits"], m["backward"])
    assert (s["fits"], s["gpus_needed"]) == (True, 1)


def test_gpus_needed_arithmetic():
    fsdp = ScaleOut("fsdp", 4, 100, state_bytes=1000, gathered_bytes=10, gathered_unit="b", activation_bytes=20)
    assert fsdp.per_gpu_bytes == 250 + 30 and not fsdp.fits
    assert fsdp.gpus_needed == 15  # ceil(1000 / 70)
    assert fsdp.per_gpu(15) == 67 + 30 <= 100 < fsdp.per_gpu(14) == 72 + 30
    assert ScaleOut("fsdp", 1, 30, 1000, 10, "b", 20).gpus_needed is None  # gathered + act fill it
    assert ScaleOut("zero3", 1, 30, 0, 10, "b", 20).gpus_needed == 1
    ddp = ScaleOut("ddp", 8, 100, 90, 0, "", 20)
    assert ddp.per_gpu_bytes == ddp.per_gpu(1) == 110 and ddp.gpus_needed is None


@pytest.mark.parametrize(
    "args,message",
    [
        (("--gpus", "0"), "--gpus 0: a run needs at least one GPU (try: e.g. --gpus 8)"),
        (("--strategy", "deepspeed"), "--strategy 'deepspeed': unknown strategy (try: one of ddp, fsdp, zero3)"),
        (("--gpu-memory", "lots"), "--gpu-memory 'lots': 'lots' is not a number with an optional unit"),
        (("--gpu-memory", "80"), "--gpu-memory '80': give a positive size with its unit"),
        (("--gpu-memory", "80XB"), "--gpu-memory '80XB': unknown byte unit 'XB'"),
    ],
)
def test_bad_values_exit_2_in_one_line(cli, tiny_models, args, message):
    code, out, err = cli("plan", tiny_models("llava"), "--preset", "lm-lora", *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vlmsurgeon: error: {message}")
    assert "Traceback" not in err
