"""`vlmsurgeon finetune` vs a hand-written transformers + peft + bitsandbytes loop: the same
model, data, batches, preset (--freeze vision: LM in NF4 with LoRA, merger in full) and
optimizer, each in its own process, measured in one run.

Reports the median step time (first steps excluded) and the peak RSS of each process; goal on
the CPU: ratio <= 1.05. Usage: python bench/train_bench.py [--steps N] [--hidden H] [--layers L]
On a GPU it uses CUDA and reports peak allocated GPU memory as well."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(workdir: Path, hidden: int, layers: int) -> Path:
    """The tiny qwen2_vl processor with a wider, deeper random LM."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlmsurgeon.tiny.build import build_tiny

    path = build_tiny("qwen2_vl", workdir / "model")
    config = AutoConfig.from_pretrained(path)
    heads = hidden // 64
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = hidden, hidden * 8 // 3, layers
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = heads, max(1, heads // 2), 64
    text.layer_types = ["full_attention"] * layers
    text.rope_parameters = {"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 1e6}
    config.vision_config.hidden_size = hidden
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(config).save_pretrained(path)
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_shapes.py"), str(workdir / "data")],
        check=True,
        capture_output=True,
    )
    return path


def peak_rss_mib() -> float:
    # VmHWM, not ru_maxrss: the latter survives fork+exec and counts the parent's memory
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024


def run_ours(model: Path, data: Path, out: Path, steps: int) -> dict:
    from vlmsurgeon.train.loop import finetune
    from vlmsurgeon.train.runconfig import RunOptions

    opts = RunOptions(
        model=str(model),
        data=str(data),
        output=str(out),
        freeze="vision",
        steps=steps,
        lr=1e-4,
        batch_size=2,
        seq_len=512,
        seed=0,
    )
    finetune(opts)
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    stamps = [r["elapsed_s"] for r in logs if "loss" in r]
    return {"steps": [b - a for a, b in zip(stamps, stamps[1:], strict=False)]}


def run_baseline(model: Path, data: Path, steps: int) -> dict:
    """What a user would write by hand with the same libraries."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig, set_seed

    from vlmsurgeon.data.collate import Collator
    from vlmsurgeon.data.rows import load_dataset_rows

    set_seed(0)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=["model.visual", "lm_head"],
    )
    net = AutoModelForImageTextToText.from_pretrained(model, quantization_config=quant, dtype=dtype)
    net = prepare_model_for_kbit_training(
        net, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    targets = [
        n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.language_model.")
    ]
    net = get_peft_model(
        net,
        LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets, modules_to_save=["model.visual.merger"]
        ),
    )
    collate = Collator(AutoProcessor.from_pretrained(model), 512)
    samples = load_dataset_rows(data).samples
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    device = "cuda" if cuda else "cpu"
    net.train()
    times = []
    generator = torch.Generator().manual_seed(0)
    for _step in range(steps):
        start = time.perf_counter()
        order = torch.randperm(len(samples), generator=generator)[:2].tolist()
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in collate([samples[i] for i in order]).items()}
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            loss = net(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"steps": times[1:]}


def child(kind: str, model: Path, data: Path, out: Path, steps: int) -> None:
    import torch

    result = run_ours(model, data, out, steps) if kind == "ours" else run_baseline(model, data, steps)
    result["peak_rss_mib"] = peak_rss_mib()
    if torch.cuda.is_available():
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--child", nargs=4)
    args = parser.parse_args()
    if args.child:
        kind, model, data, out = args.child
        child(kind, Path(model), Path(data), Path(out), args.steps)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build(work, args.hidden, args.layers)
        results = {}
        for kind in ("baseline", "ours", "baseline", "ours"):  # interleaved, two rounds
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--steps",
                    str(args.steps),
                    "--child",
                    kind,
                    str(model),
                    str(work / "data" / "train.jsonl"),
                    str(work / f"run-{time.time_ns()}"),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            line = next(out for out in proc.stdout.splitlines() if out.startswith("RESULT "))
            data = json.loads(line[7:])
            entry = results.setdefault(kind, {"steps": [], "peak_rss_mib": [], "peak_gpu_mib": []})
            entry["steps"] += data["steps"][2:]
            entry["peak_rss_mib"].append(data["peak_rss_mib"])
            if "peak_gpu_mib" in data:
                entry["peak_gpu_mib"].append(data["peak_gpu_mib"])
    ours, base = results["ours"], results["baseline"]
    step_o, step_b = statistics.median(ours["steps"]), statistics.median(base["steps"])
    rss_o, rss_b = max(ours["peak_rss_mib"]), max(base["peak_rss_mib"])
    print(
        f"qwen2_vl-shaped random model, LM hidden {args.hidden} × {args.layers} layers, 4-bit NF4 LM, "
        f"--freeze vision, batch 2, {args.steps} steps × 2 rounds\n"
    )
    print("| measurement | vlmsurgeon finetune | hand-written loop | ratio |")
    print("|---|---|---|---|")
    print(f"| median step time | {step_o * 1000:.1f} ms | {step_b * 1000:.1f} ms | {step_o / step_b:.3f} |")
    print(f"| peak RSS | {rss_o:.0f} MiB | {rss_b:.0f} MiB | {rss_o / rss_b:.3f} |")
    if ours["peak_gpu_mib"]:
        g_o, g_b = max(ours["peak_gpu_mib"]), max(base["peak_gpu_mib"])
        print(f"| peak GPU memory | {g_o:.0f} MiB | {g_b:.0f} MiB | {g_o / g_b:.3f} |")
    print(f"\nstep-time ratio {step_o / step_b:.3f} (goal <= 1.05: {'met' if step_o / step_b <= 1.05 else 'MISSED'})")


if __name__ == "__main__":
    main()
