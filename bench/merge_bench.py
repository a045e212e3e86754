"""Our streaming merge vs `PeftModel.from_pretrained(base).merge_and_unload().save_pretrained()`
on a >= 2 GB random-weight checkpoint (qwen2_vl-shaped, fp32, sharded), in one run, each in its
own process. Reports wall time and peak RSS ratios (goals: wall <= 1.0, RSS <= 0.5).
Usage: python bench/merge_bench.py [--hidden 2048] [--layers 12]"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Peak memory is read from /proc/self/status (VmHWM): ru_maxrss survives fork+exec and would
# count the parent's memory (which holds the model it just built).
HWM = "int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024"
OURS = """
import sys, json
from pathlib import Path
from vlmsurgeon.merge import merge, MergePlan
merge(Path(sys.argv[1]), Path(sys.argv[2]), plan=MergePlan(dtype="fp32", max_shard_bytes=200 * 10**6))
print(json.dumps({"peak_rss": HWM}))
""".replace("HWM", HWM)
PEFT = """
import sys, json, torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText
adapter = sys.argv[1]
base = json.load(open(adapter + "/adapter_config.json"))["base_model_name_or_path"]
model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32), adapter)
model.merge_and_unload().save_pretrained(sys.argv[2], max_shard_size="200MB")
print(json.dumps({"peak_rss": HWM}))
""".replace("HWM", HWM)


def build(work: Path, hidden: int, layers: int) -> tuple[Path, int]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmsurgeon.tiny.build import build_tiny

    small = build_tiny("qwen2_vl", work / "small")
    config = AutoModelForImageTextToText.from_pretrained(small).config
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = hidden, hidden * 11 // 4, layers
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = hidden // 64, hidden // 128, 64
    text.layer_types = ["full_attention"] * layers
    text.rope_parameters = {"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 1e6}
    config.vision_config.hidden_size = hidden
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    model = model.to_empty(device="cpu")
    torch.manual_seed(0)
    for param in model.parameters():
        param.data.normal_(0, 0.02)
    base = work / "base"
    model.save_pretrained(base, max_shard_size="200MB")
    AutoProcessor.from_pretrained(small).save_pretrained(base)
    targets = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "language_model" in n]
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False))
    adapter = work / "adapter"
    peft_model.save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    return adapter, sum(p.stat().st_size for p in base.glob("*.safetensors"))


def timed(code: str, adapter: Path, out: Path) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(adapter), str(out)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    wall = time.perf_counter() - start
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        work = Path(tmp)
        adapter, size = build(work, args.hidden, args.layers)
        results = {"ours": [], "peft": []}
        for round_ in range(2):  # interleaved
            for name, code in (("peft", PEFT), ("ours", OURS)):
                results[name].append(timed(code, adapter, work / f"{name}-{round_}"))
    (wo, ro), (wp, rp) = min(results["ours"]), min(results["peft"])
    ro, rp = max(r for _, r in results["ours"]), max(r for _, r in results["peft"])
    gib = 2**30
    print(f"base checkpoint: {size / gib:.2f} GiB fp32 in 200 MB shards; LoRA r=16 on every LM Linear\n")
    print("| measurement | vlmsurgeon merge | peft merge_and_unload + save_pretrained | ratio |")
    print("|---|---|---|---|")
    print(f"| wall time (best of 2) | {wo:.1f} s | {wp:.1f} s | {wo / wp:.2f} |")
    print(f"| peak RSS (worst of 2) | {ro / gib:.2f} GiB | {rp / gib:.2f} GiB | {ro / rp:.2f} |")
    print(
        f"\nwall ratio {wo / wp:.2f} (goal <= 1.0: {'met' if wo / wp <= 1.0 else 'MISSED'}); "
        f"RSS ratio {ro / rp:.2f} (goal <= 0.5: {'met' if ro / rp <= 0.5 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
