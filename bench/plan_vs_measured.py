"""`plan`'s memory estimate against the peak that `finetune` reaches, for three architectures at
their published widths (layer counts reduced): Qwen2-VL-2B, LLaVA-1.5-7B, Gemma 3 4B (issue 16);
and a preference step (issue 23): `--objective dpo` prices and measures `finetune --objective dpo`.

    python bench/plan_vs_measured.py [--lm-layers 1] [--vision-layers 1] [--seq-len 2048] [--heap live]
    python bench/plan_vs_measured.py --arch qwen2_vl --objective dpo   # one pair per step

For each: the random checkpoint from bench/memory_bench.py, `vlmsurgeon plan DIR --freeze vision
--seq-len S --batch-size 1 --image-tokens N --json` (N: what the processor really writes for the
image), and two `finetune` steps in their own process. Measured = the second step's peak RSS
(the first has no AdamW states until its optimizer step) minus the RSS after imports: the
estimate prices tensors, not the ~0.8 GiB of torch/transformers code every process holds before
it loads a weight. With `--heap live` (the default) the process runs with
MALLOC_MMAP_THRESHOLD_=1MiB, so that freed tensors leave RSS at once, as they leave
`torch.cuda.max_memory_allocated` on a GPU; glibc's default keeps freed heap and inflates the
peak (`--heap glibc`). Loading's own high-water mark is printed, not compared (on a CPU it counts
the checkpoint's mapped pages). `plan` prices bf16; on a CPU without native bf16 the run is fp32,
so the estimate is also recomputed with 4-byte halves (memory.HALF = 4) and that figure is the
one compared (on a GPU: bf16, torch.cuda.max_memory_allocated, as is).

With `--objective dpo` (or ipo, orpo, simpo) the row becomes a pair: the same prompt and image,
the SFT row's answer as chosen and a different answer of the same length as rejected (ms-swift's
`rejected_response`), each side checked to be exactly --seq-len tokens with finetune's own
collator; `plan ... --objective dpo` against two `finetune --objective dpo` steps (one pair each:
batch 1 = 2 sequences), measured by memory_bench's own side in a child of this script with the
objective set on the options it passes to `finetune`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import memory_bench as mb  # noqa: E402

ARCHS = ("qwen2_vl", "llava", "gemma3")


def image_tokens(model: Path, data: Path) -> int:
    from vlmsurgeon.data.collate import Collator
    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.train.loop import load_processor
    from vlmsurgeon.train.runconfig import RunOptions

    processor = load_processor(str(model), RunOptions(model=str(model)))[0]
    return Collator(processor, 1 << 20).measure(load_dataset_rows(data).samples[0]).image_tokens


def pair_data(model: Path, data: Path, seq_len: int) -> Path:
    """pairs.jsonl beside the SFT row: its answer chosen, another of the same length rejected
    (the tiny family's byte-level tokenizer: one token per character), both sides checked."""
    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.train.loop import load_processor, make_collator
    from vlmsurgeon.train.preference import pair_conversations
    from vlmsurgeon.train.runconfig import RunOptions

    path = data.with_name("pairs.jsonl")
    row = json.loads(data.read_text().splitlines()[0])
    answer = row["messages"][-1]["content"]
    rejected = ("a blue circle on a black ground " * (len(answer) // 8 + 1))[: len(answer)]
    path.write_text(json.dumps({**row, "rejected_response": rejected}) + "\n")
    opts = RunOptions(model=str(model), seq_len=1 << 20, objective="dpo")
    collator = make_collator(load_processor(str(model), opts)[0], opts)
    rows = load_dataset_rows(path, kind="pair")
    if rows.bad or len(rows.samples) != 1:
        raise SystemExit(f"pairs: the row was refused: {rows.bad}")
    got = [collator.measure(side).tokens for side in pair_conversations(rows.samples[0])]
    if got != [seq_len, seq_len]:
        raise SystemExit(f"pairs: chosen and rejected have {got} tokens, wanted {seq_len} each")
    return path


def plan_cli(model: Path, seq_len: int, tokens: int, objective: str = "sft") -> dict[str, Any]:
    cmd = [
        str(Path(sys.executable).with_name("vlmsurgeon")),
        "plan",
        str(model),
        "--freeze",
        "vision",
        "--seq-len",
        str(seq_len),
        "--batch-size",
        "1",
        "--image-tokens",
        str(tokens),
        "--objective",
        objective,
        "--json",
    ]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["memory"]


def plan_fp32(model: Path, seq_len: int, tokens: int, objective: str = "sft") -> dict[str, Any] | None:
    """The same estimate with every 2-byte (bf16) price at 4 bytes: what the formula says for an
    fp32 run. None when memory.py no longer has that constant."""
    import vlmsurgeon.plan.memory as memory
    from vlmsurgeon.plan.objective import objective as plan_objective
    from vlmsurgeon.plan.plan import PlanSettings, plan_model

    if not hasattr(memory, "HALF"):
        return None
    saved, memory.HALF = memory.HALF, 4
    try:
        settings = PlanSettings(seq_len=seq_len, batch_size=1, image_tokens=tokens, objective=plan_objective(objective))
        result = plan_model(str(model), freeze="vision", settings=settings)
        return result.memory.to_json()
    finally:
        memory.HALF = saved


def measure(model: Path, data: Path, side: argparse.Namespace, objective: str) -> dict[str, Any]:
    """memory_bench's vlmsurgeon side; for a preference objective the same side run as a child of
    this script (`--side-objective`), which sets the objective on the options given to finetune."""
    if objective == "sft":
        return mb.measure("vlmsurgeon", model, data, side)
    cmd = [
        sys.executable,
        __file__,
        "--side-objective",
        objective,
        "--side",
        "vlmsurgeon",
        "--model",
        str(model),
        "--data",
        str(data),
        "--arch",
        side.arch,
        "--seq-len",
        str(side.seq_len),
        "--steps",
        str(side.steps),
        "--warmup",
        str(side.warmup),
        "--dtype",
        side.dtype,
        "--cache",
        str(side.cache),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if side.heap == "live":  # as memory_bench.measure: freed tensors leave RSS at once
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{objective} side failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][7:])


def objective_side(objective: str, argv: list[str]) -> None:
    """memory_bench's vlmsurgeon side with `objective` on the options it gives finetune (the
    library call it makes is looked up when it runs, so wrapping it here is enough)."""
    import vlmsurgeon.train.loop as loop
    from vlmsurgeon.train.runconfig import RunOptions

    plain = loop.finetune

    def finetune(opts: Any, *args: Any, **kwargs: Any) -> Any:
        return plain(RunOptions.model_validate({**opts.model_dump(), "objective": objective}), *args, **kwargs)

    loop.finetune = finetune
    mb._side(mb.parse(argv))


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def one(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    vision = max(args.vision_layers, 2) if arch == "llava" else args.vision_layers  # feature layer -2
    model, data = mb.ensure(args.cache, arch, args.lm_layers, vision, args.seq_len)
    tokens = image_tokens(model, data)
    side = mb.parse(
        [
            "--arch",
            arch,
            "--seq-len",
            str(args.seq_len),
            "--steps",
            "1",
            "--warmup",
            "1",
            "--dtype",
            args.dtype,
            "--cache",
            str(args.cache),
            "--heap",
            args.heap,
        ]
    )
    if args.objective != "sft":
        data = pair_data(model, data, args.seq_len)
    measured = measure(model, data, side, args.objective)
    cuda = "peak_cuda_mib" in measured
    estimate = plan_cli(model, args.seq_len, tokens, args.objective)
    compared = estimate if cuda or args.dtype == "bf16" else plan_fp32(model, args.seq_len, tokens, args.objective)
    # the second step's peak: AdamW's states exist from the first step's optimizer step on
    # (without /proc/self/clear_refs no phase is read apart: the process's peak, loading included)
    steps = measured.get("step_phase_peaks_mib") or [{}]
    steady = max(steps[-1].values(), default=measured["peak_rss_mib"])
    peak = measured["peak_cuda_mib"] if cuda else steady - measured["rss_after_imports_mib"]
    peak_bytes = peak * 2**20
    row = {
        "arch": arch,
        "objective": args.objective,
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
        "lm_layers": args.lm_layers,
        "vision_layers": vision,
        "image_tokens": tokens,
        "plan_bf16": estimate,
        "plan_compared": compared,
        "measured": measured,
        "measured_bytes": peak_bytes,
    }
    if compared is not None:
        row["error_pct"] = 100 * (compared["total"] - peak_bytes) / peak_bytes
    return row


def report(row: dict[str, Any]) -> None:
    est, m = row["plan_compared"], row["measured"]
    print(
        f"\n{row['arch']} ({row['objective']}): LM {row['lm_layers']} layers, vision {row['vision_layers']}, "
        f"{row['image_tokens']} image tokens; load average at the end {' '.join(row['load_average'])}"
    )
    print(f"  plan (bf16, as the CLI prints) total {mib(row['plan_bf16']['total'])} MiB")
    if est is None:
        print("  no fp32 figure (memory.HALF is gone): compare by hand")
        return
    parts = ", ".join(
        f"{k} {mib(est[k])}"
        for k in (
            "weights",
            "adapters",
            "gradients",
            "optimizer",
            "reference_copies",
            "activations",
            "logits",
            "backward",
            "no_grad_forward",
        )
        if k in est
    )
    print(f"  plan as run: {parts}; total {mib(est['total'])} MiB")
    loaded = m.get("rss_train_begin_mib", 0) - m["rss_after_imports_mib"]
    base = m["rss_after_imports_mib"]
    for i, step in enumerate(m.get("step_phase_peaks_mib", [])):
        phases = "; ".join(f"{k} +{v - base:,.0f}" for k, v in step.items())
        print(f"  step {i + 1} phase peaks: {phases}")
    print(
        f"  measured: after imports {base:,.0f} MiB; loaded+prepared +{loaded:,.0f}; "
        f"loading's high-water +{m.get('peak_before_train_mib', 0) - base:,.0f} (not compared); "
        f"step 2's peak +{mib(row['measured_bytes'])} MiB"
    )
    print(f"  error {row['error_pct']:+.1f} % (plan vs measured; goal within ±15 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=ARCHS, help="default: all three")
    parser.add_argument("--lm-layers", type=int, default=1)
    parser.add_argument("--vision-layers", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/vlms-bench"))
    parser.add_argument("--heap", choices=("live", "glibc"), default="live", help="see memory_bench.py --heap")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--objective",
        choices=("sft", "dpo", "ipo", "orpo", "simpo"),
        default="sft",
        help="a preference step: one pair (2 sequences of --seq-len) per step",
    )
    args = parser.parse_args()
    args.dtype, why = mb.resolve_dtype(args.dtype)
    print(
        f"dtype {args.dtype} ({why}); seq {args.seq_len}, batch 1, --freeze vision, objective {args.objective}, "
        f"2 steps each; load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
        flush=True,
    )
    rows = []
    for arch in args.arch or ARCHS:
        rows.append(one(arch, args))
        report(rows[-1])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print("\n" + ", ".join(f"{r['arch']} {r['error_pct']:+.1f} %" for r in rows if "error_pct" in r))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--side-objective"]:
        objective_side(sys.argv[2], sys.argv[3:])
    else:
        main()
