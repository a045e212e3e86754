"""Useful tokens per second of `finetune --packing` vs the padded default (issue 26, acceptance 3).

    python bench/packing_bench.py [--rows 40] [--batch-size 4] [--seq-len 2048] [--hidden 256]
                                  [--ffn 4096] [--lm-layers 2] [--quantize none] [--first padded]
                                  [--cache /tmp/vlms-bench] [--json OUT.json]

The rows are shaped like LLaVA's mix665k: many short image questions with a short answer (55 %),
multi-turn conversations about one image (25 %), text-only conversations (10 %, ShareGPT-like)
and rows with two or three images (10 %); the images are drawn here (coloured shapes, sides of
224–448 px, 64–256 image tokens for Qwen2-VL), the words drawn from a fixed list, all from one
seed. The model is a small random Qwen2-VL laid over the tiny family's tokenizer and processor
(bench/memory_bench.py's builder; its real 14 px patches and 2×2 merge, the widths given here).
Its MLP is wide for its hidden size so that attention weighs in a step about as it does in a
full-size model at 2,048 tokens (attention over MLP and projections, 2L / (3·hidden + 3·ffn): 0.31
here, 0.13 for Qwen2-VL-2B, 0.09 for LLaVA-1.5-7B): a packed sequence's attention runs over its
whole length (the mask hides the other rows, sdpa does not skip them), so a narrow model would
understate what packing saves, a wide one overstate it. `--quantize none` by default: bitsandbytes'
4-bit matmuls on a CPU cost per step, not per token, which would favour the side with fewer steps.

Each side runs one epoch over the same rows in its own process (this script with --side), the
same seed, batch size and --seq-len, `--freeze vision`: the padded side as finetune's default
(rows batched in a seeded shuffle, each batch padded to its longest), the packed side with
`--packing`. Both train on the same useful tokens (every row's, cut at --seq-len), so the ratio of
useful tokens per second is the ratio of their training times (the Trainer's `train_runtime`:
loading and the data pre-pass are not in it). The padding share is what `data check --packing`
reports for these rows. The last line reads
`useful tokens/s ratio P (packed/padded) X.XX, padding share A → B`."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import memory_bench as mb  # noqa: E402

WORDS = (
    "the a red blue green yellow square circle triangle picture shows small large left right above below "
    "near far colour shape object scene image person table window light dark bright soft edge corner side "
    "middle top bottom background front behind two three several many some each other next while because "
    "answer question describe explain count where which what how why looks appears seems stands lies"
).split()
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 200, 30)}
SIDES = (224, 280, 336, 392, 448)  # pixels; 28 px a token after Qwen2-VL's 2×2 merge
KINDS = (("caption", 0.55), ("conversation", 0.25), ("text", 0.10), ("multi", 0.10))


def arch(args: argparse.Namespace) -> mb.Arch:
    """A small Qwen2-VL: the published patching (14 px, 2×2 merge), the widths asked for."""
    heads = max(1, args.hidden // 64)
    text = {
        "hidden_size": args.hidden,
        "intermediate_size": args.ffn,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "head_dim": 64,
        "max_position_embeddings": 4 * args.seq_len,
        "initializer_range": 0.02,
        "rope_parameters": {"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 1e6},
    }
    vision = {
        "depth": 2,
        "embed_dim": 128,
        "hidden_size": args.hidden,
        "num_heads": 4,
        "mlp_ratio": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    pixels = {**mb._QWEN_PIXELS, "size": {"shortest_edge": 224 * 224, "longest_edge": 448 * 448}}
    return mb._sized(
        mb.Arch("qwen2_vl", args.lm_layers, 2, 448, text, vision, {}, pixels, {"video_processor_kwargs": pixels}),
        args.lm_layers,
        2,
    )


def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def _image(rng: random.Random, folder: Path, n: int) -> str:
    from PIL import Image, ImageDraw

    width, height = rng.choice(SIDES), rng.choice(SIDES)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    box = [width // 6, height // 6, width - width // 6, height - height // 6]
    ImageDraw.Draw(image).ellipse(box, fill=rng.choice(list(COLOURS.values())))
    name = f"img/{n}.png"
    image.save(folder / name)
    return name


def _turns(rng: random.Random, count: int, user: tuple[int, int], answer: tuple[int, int]) -> list[dict[str, str]]:
    out = []
    for _ in range(count):
        out += [{"role": "user", "content": _words(rng, *user)}, {"role": "assistant", "content": _words(rng, *answer)}]
    return out


def build_rows(folder: Path, rows: int, seed: int = 0) -> Path:
    """mix665k-shaped rows (see the module docstring), written once."""
    path = folder / "train.jsonl"
    if path.is_file():
        return path
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines, images = [], 0
    for _ in range(rows):
        kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
        if kind == "caption":
            messages, count = _turns(rng, 1, (4, 10), (3, 20)), 1
        elif kind == "conversation":
            messages, count = _turns(rng, rng.randint(2, 5), (6, 16), (20, 60)), 1
        elif kind == "text":
            messages, count = _turns(rng, rng.randint(1, 3), (8, 30), (40, 120)), 0
        else:
            messages, count = _turns(rng, 1, (6, 12), (5, 25)), rng.randint(2, 3)
        if count:
            messages[0]["content"] = "<image>" * count + messages[0]["content"]
        names = [_image(rng, folder, images + i) for i in range(count)]
        images += count
        lines.append(json.dumps({"messages": messages, **({"images": names} if names else {})}))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_side(args: argparse.Namespace) -> None:
    """One side's epoch: finetune as the CLI runs it; prints its Trainer's figures as JSON."""
    import tempfile

    from vlmsurgeon.train.loop import finetune
    from vlmsurgeon.train.runconfig import RunOptions

    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        run = Path(tmp) / "run"
        result = finetune(
            RunOptions(
                model=args.model,
                data=args.data,
                output=str(run),
                freeze="vision",
                epochs=1,
                seq_len=args.seq_len,
                batch_size=args.batch_size,
                quantize=args.quantize,
                lr=2e-4,
                seed=0,
                packing=args.side == "packed",
            )
        )
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    end = next(r for r in reversed(log) if "train_runtime" in r)
    trained = [r for r in log if "loss" in r]
    print(
        json.dumps(
            {"steps": result.global_step, "train_runtime": end["train_runtime"], "tokens": trained[-1]["tokens"]}
        )
    )


def measure(model: Path, data: Path, args: argparse.Namespace) -> tuple[list[int], Any]:
    """Every row's tokens (as the pre-pass measures them) and the padding figures of both sides."""
    from vlmsurgeon.data.packing import padding
    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.train.loop import load_processor, make_collator
    from vlmsurgeon.train.runconfig import RunOptions

    opts = RunOptions(model=str(model), seq_len=args.seq_len)
    collator = make_collator(load_processor(str(model), opts)[0], opts)
    lengths = [collator.measure(s).tokens for s in load_dataset_rows(str(data)).samples]
    return lengths, padding(lengths, args.seq_len, args.batch_size, 0)


def _side(name: str, model: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--side", name, "--model", str(model), "--data", str(data)]
    cmd += ["--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size), "--quantize", args.quantize]
    cmd += ["--cache", str(args.cache)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--ffn", type=int, default=4096)
    parser.add_argument("--lm-layers", type=int, default=2)
    parser.add_argument("--quantize", choices=("none", "4bit"), default="none")
    parser.add_argument("--first", choices=("padded", "packed"), default="padded")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/vlms-bench"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--side", choices=("padded", "packed"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_side(args)
        return
    root = args.cache / f"packing-h{args.hidden}-f{args.ffn}-l{args.lm_layers}"
    model = root / "model"
    if not (model / "config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        mb.build_model(arch(args), model)
    data = build_rows(root / f"rows-{args.rows}", args.rows)
    lengths, figures = measure(model, data, args)
    useful = sum(min(n, args.seq_len) for n in lengths)
    ordered = sorted(lengths)
    print(
        f"{len(lengths)} rows, tokens p50 {ordered[len(ordered) // 2]}, p95 {ordered[int(0.95 * (len(ordered) - 1))]}, "
        f"max {ordered[-1]}; {useful:,} useful tokens; {figures.line()}",
        flush=True,
    )
    sides: dict[str, dict[str, Any]] = {}
    for name in (args.first, "packed" if args.first == "padded" else "padded"):
        started = time.time()
        sides[name] = _side(name, model, data, args)
        rate = useful / sides[name]["train_runtime"]
        print(
            f"{name}: {sides[name]['steps']} steps, {sides[name]['train_runtime']:.1f} s training "
            f"({time.time() - started:.0f} s with loading and pre-pass), {rate:,.0f} useful tokens/s, "
            f"tokens counted {sides[name]['tokens']:,}",
            flush=True,
        )
    ratio = sides["padded"]["train_runtime"] / sides["packed"]["train_runtime"]
    if args.json:
        args.json.write_text(json.dumps({"useful": useful, "padding": figures.to_json(), "sides": sides}, indent=2))
    print(
        f"useful tokens/s ratio P (packed/padded) {ratio:.2f}, padding share {figures.before:.1%} → {figures.after:.1%}"
    )


if __name__ == "__main__":
    main()
