"""Peak memory of `extract` on a ~2 GiB checkpoint (issue 25; goal: peak RSS <= 0.5 x checkpoint size).

    python bench/extract_bench.py [--lm-layers 12] [--vision-layers 6] [--dtype bf16]

A random checkpoint at Qwen2-VL-2B's widths (Qwen/Qwen2-VL-2B-Instruct config.json: LM hidden 1536,
MLP 8960, 12 heads / 2 KV heads of 128, vocabulary 151,936 tied to the head; vision 1280 wide), with
fewer layers so that it is ~2 GiB, built from the tiny family's config, tokenizer and processor
(no hub). `extract` runs in its own process; its peak is that process's VmHWM (not ru_maxrss, which
survives fork+exec and would count the parent that built the model). Tensors written as stored are
copied in 16 MiB chunks, so the largest one (the embedding, 445 MiB in bf16) is never whole in
memory; what remains is the libraries and the model built on meta. The last line reads
`peak RSS / checkpoint size X.XX`."""

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

STATUS = "dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if ':' in l)"
EXTRACT = f"""
import json, sys
from pathlib import Path
status = lambda key: int({STATUS}[key].split()[0]) * 1024
import torch, transformers  # what every command that loads weights imports, counted apart
from vlmsurgeon.ship.extract import extract
imported = status("VmRSS")
summary = extract(Path(sys.argv[1]), Path(sys.argv[2]))
print(json.dumps({{"imported": imported, "peak_rss": status("VmHWM"), "tensors": summary["tensors"]}}))
"""


def build(work: Path, lm_layers: int, vision_layers: int, dtype: str) -> Path:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmsurgeon.tiny.build import build_tiny

    small = build_tiny("qwen2_vl", work / "small")
    config = AutoModelForImageTextToText.from_pretrained(small).config
    text = config.text_config
    for key, value in {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "vocab_size": 151936,
        "num_hidden_layers": lm_layers,
        "layer_types": ["full_attention"] * lm_layers,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
    }.items():
        setattr(text, key, value)
    config.tie_word_embeddings = True
    vision = config.vision_config
    vision.embed_dim, vision.depth, vision.num_heads, vision.hidden_size = 1280, vision_layers, 16, 1536
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    model = model.to_empty(device="cpu").to(getattr(torch, {"bf16": "bfloat16", "fp32": "float32"}[dtype]))
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.02)
    base = work / "base"
    model.save_pretrained(base, max_shard_size="500MB")
    AutoProcessor.from_pretrained(small).save_pretrained(base)
    return base


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lm-layers", type=int, default=12)
    parser.add_argument("--vision-layers", type=int, default=6)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # built in a child too: the parent stays small while extract's child runs
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {str(ROOT)!r}); from bench.extract_bench import "
                f"build; build(__import__('pathlib').Path({tmp!r}), {args.lm_layers}, {args.vision_layers}, "
                f"{args.dtype!r})",
            ],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        base = work / "base"
        size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", EXTRACT, str(base), str(work / "lm")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        wall = time.perf_counter() - start
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        out = sum(p.stat().st_size for p in (work / "lm").glob("*.safetensors"))
    mib, gib = 2**20, 2**30
    print(
        f"checkpoint: {size / gib:.2f} GiB {args.dtype} ({args.lm_layers} LM layers at Qwen2-VL-2B widths, "
        f"{args.vision_layers} vision layers); extracted LM: {out / gib:.2f} GiB, {result['tensors']} tensors"
    )
    print(
        f"extract: {wall:.1f} s; RSS after importing torch + transformers + vlmsurgeon {result['imported'] / mib:,.0f} "
        f"MiB; peak RSS {result['peak_rss'] / mib:,.0f} MiB"
    )
    ratio = result["peak_rss"] / size
    print(f"peak RSS / checkpoint size {ratio:.2f}")


if __name__ == "__main__":
    main()
