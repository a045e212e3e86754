"""Start-up and inspect speed, each against its baseline, measured in one run.

1. `vlmsurgeon --help` vs `python -c pass` (goal: --help under 0.5 s).
2. `vlmsurgeon inspect` of a >=100B-parameter MoE VLM config (Qwen3-VL-235B-A22B) vs a bare
   script that imports transformers, builds the model on meta and counts its parameters
   (goal: within 1.2x).
Runs are interleaved and the median of N is reported. Usage: python bench/inspect_bench.py [N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "qwen3-vl-235b-a22b"
BIN = Path(sys.executable).parent / "vlmsurgeon"
BARE = f"""
import torch, transformers
from transformers import AutoConfig
config = AutoConfig.from_pretrained({str(CONFIG)!r})
with torch.device("meta"):
    model = getattr(transformers, config.architectures[0])._from_config(config)
print(sum(p.numel() for p in model.parameters()))
"""


def timed(cmd: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def compare(name: str, ours: list[str], base: list[str], runs: int) -> tuple[float, float]:
    timed(ours), timed(base)  # warm the page cache
    a, b = [], []
    for _ in range(runs):
        a.append(timed(ours))
        b.append(timed(base))
    mo, mb = statistics.median(a), statistics.median(b)
    print(f"| {name} | {mo:.3f} s | {mb:.3f} s | {mo / mb:.2f}x |")
    return mo, mb


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, median of {runs}\n")
    print("| measurement | vlmsurgeon | baseline | ratio |")
    print("|---|---|---|---|")
    helped, _ = compare("`--help` vs `python -c pass`", [str(BIN), "--help"], [sys.executable, "-c", "pass"], runs)
    ours, bare = compare(
        "`inspect --json` 235B MoE vs bare build+count",
        [str(BIN), "inspect", str(CONFIG), "--json"],
        [sys.executable, "-c", BARE],
        runs,
    )
    tree, _ = compare(
        "`inspect` (tree + table) 235B MoE vs bare build+count",
        [str(BIN), "inspect", str(CONFIG)],
        [sys.executable, "-c", BARE],
        runs,
    )
    print(
        f"\n--help: {helped:.3f} s (goal < 0.5 s: {'met' if helped < 0.5 else 'MISSED'}); "
        f"inspect: {ours / bare:.2f}x bare (goal <= 1.2x: {'met' if ours / bare <= 1.2 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
