"""`plan` vs `inspect` on a >=100B-parameter MoE VLM config (Qwen3-VL-235B-A22B), in one run:
plan builds the same meta model, applies the preset (peft LoRA injection on meta) and
estimates memory. Goal: within 1.5x of inspect. Usage: python bench/plan_bench.py [N]"""

from __future__ import annotations

import sys

from inspect_bench import BIN, CONFIG, compare


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(f"median of {runs}, interleaved\n")
    print("| measurement | plan | inspect | ratio |")
    print("|---|---|---|---|")
    results = {}
    for preset in ("lm-lora", "per-modality-lora"):
        results[preset] = compare(
            f"`plan --preset {preset} --json` vs `inspect --json`, 235B MoE",
            [str(BIN), "plan", str(CONFIG), "--preset", preset, "--json"],
            [str(BIN), "inspect", str(CONFIG), "--json"],
            runs,
        )
    worst = max(p / i for p, i in results.values())
    print(f"\nworst ratio {worst:.2f}x (goal <= 1.5x: {'met' if worst <= 1.5 else 'MISSED'})")


if __name__ == "__main__":
    main()
