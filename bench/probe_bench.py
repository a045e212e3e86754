"""`plan --probe` vs `plan` on a >=100B-parameter MoE VLM config (Qwen3-VL-235B-A22B: 94 layers,
128 experts), in one run. The probe builds the narrow replica (same names, widths shrunk), applies
the preset and runs one forward + backward pass on the CPU. Goal: the probe itself under 60 s.
Usage: python bench/probe_bench.py [N]"""

from __future__ import annotations

import sys

from inspect_bench import BIN, CONFIG, compare


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    print(f"median of {runs}, interleaved\n")
    print("| measurement | with --probe | plan | ratio |")
    print("|---|---|---|---|")
    worst = 0.0
    for preset in ("lm-lora", "per-modality-lora", "full"):
        probe, plan = compare(
            f"`plan --preset {preset} --probe --json` vs `plan --json`, 235B MoE",
            [str(BIN), "plan", str(CONFIG), "--preset", preset, "--probe", "--json"],
            [str(BIN), "plan", str(CONFIG), "--preset", preset, "--json"],
            runs,
        )
        worst = max(worst, probe - plan)
    print(
        f"\nlongest probe (difference of the medians) {worst:.1f} s "
        f"(goal < 60 s on the CPU: {'met' if worst < 60 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
