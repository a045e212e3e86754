"""Peak memory and step time of `finetune --objective dpo` vs TRL's DPOTrainer (issue 23, acceptance 4).

TRL's DPOTrainer + peft + bitsandbytes is the baseline: the same pairs on the same full-width
random-weight architecture, each side in its own process.

    python bench/dpo_bench.py [--arch qwen2_vl] [--lm-layers N] [--vision-layers N] [--seq-len 1024]
                              [--steps 2] [--warmup 1] [--pairs 4] [--dtype auto] [--heap glibc]
                              [--trl-trained-dtype auto|trl|fp32] [--lr 2e-4] [--first trl]
                              [--json OUT.json]

The model directory is bench/memory_bench.py's (its published widths laid over the tiny family's
config, tokenizer and processor, random weights as safetensors, cached in --cache). The pairs are
TRL's conversational preference rows (prompt / chosen / rejected / images, as
examples/make_shapes.py's `pair()` writes them): one 448 px image in the prompt (256 image tokens
for Qwen2-VL), chosen and rejected answers of the same length, long enough that each of the two
sequences of a pair is exactly --seq-len tokens as vlmsurgeon renders it. vlmsurgeon reads them as
JSONL; TRL gets the same rows as a `datasets.Dataset` with the image as a PIL image.

Each side runs in its own process (this script with --side), one pair per step (batch 1 = two
sequences), the same seed, lr, AdamW, linear schedule, grad clip 1.0 and number of steps:
- vlmsurgeon: `finetune(RunOptions(objective="dpo", freeze="vision", ...))`, what
  `vlmsurgeon finetune DIR --data PAIRS --objective dpo --freeze vision` runs (the library call,
  so a change in the library is measured without editing this file).
- TRL: `DPOTrainer(MODEL_DIR, args=DPOConfig(beta=0.1, loss_type="sigmoid", max_length=--seq-len,
  gradient_checkpointing=True, ...), quantization_config=BitsAndBytesConfig(nf4, double quant,
  compute dtype = vlmsurgeon's), peft_config=LoraConfig(...))`: TRL's QLoRA recipe. The 4-bit skip
  list, the LoRA targets (r 16, alpha 32, dropout 0.05: all-linear on the LM) and the module
  trained in full (the merger, as peft `modules_to_save`) are the ones vlmsurgeon's `--freeze
  vision` selects, read from vlmsurgeon's own rule and printed. TRL's dropout disabling is turned
  off (vlmsurgeon keeps LoRA dropout 0.05) and its optimizer is plain `adamw_torch` (vlmsurgeon's
  torch.optim.AdamW). TRL casts what trains to bf16 on a quantized model (QLoRA paper);
  `--trl-trained-dtype fp32` casts it back to fp32 (vlmsurgeon's master weights) before the
  optimizer exists, for a like-for-like comparison; with fp32 compute (vlmsurgeon's on a CPU) that
  cast is needed, as TRL's bf16 merger fails there ("mixed dtype (CPU)" in its LayerNorm).
  Left as TRL does it: the policy forward before the reference's, its fused log-prob head (on a
  CPU over every position, with entropy and top-1 beside the log-probs), its input-grad hooks
  (the frozen vision tower records a graph) and gradient checkpointing off for the reference.

Step time: the interval between consecutive logged steps (logging every step; vlmsurgeon's from its
run's log.jsonl `elapsed_s`, TRL's from the same on_log clock), median over the --steps after
--warmup; the in-step time (on_step_begin to on_step_end) and its CPU time (all threads; steadier
than wall time on a shared machine) are printed beside it. Peak memory as memory_bench measures
it: VmHWM of the side's process on a CPU (the highest of loading's and each training phase's),
torch.cuda.max_memory_allocated on a GPU; training's own peak is printed apart (on a CPU loading's
high-water mark counts the checkpoint's mapped pages, and at 28 LM layers it is the process's peak
under --heap live). Under glibc's heap (the default, as a user's run has it) RSS also keeps freed
heap, which grows with the layer count (8 LM layers: +1.7 GiB over the live tensors); since
2026-12-02 `finetune` sets the 1 MiB mmap threshold itself on a CPU (vlmsurgeon/train/heap.py),
so this holds for TRL's side only; --heap live (MALLOC_MMAP_THRESHOLD_=1MiB) reads the live tensors, at the cost of page
faults that slow a CPU step. Per phase of each step (reference forward, policy forward,
vlmsurgeon's log-prob heads, which run after the model's forward, backward, optimizer) the peak
and the seconds are printed for the last step. Each side's sequence lengths and scored (answer)
tokens per step are recorded from its collator's batches and compared: the bench stops if the
sides do not process the same tokens (within 4). The last line reads
`peak memory ratio R (vlmsurgeon/TRL), step time ratio S`."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import memory_bench as mb  # noqa: E402

PROMPT = "Describe the picture in detail."
TOLERANCE = 4  # tokens: TRL's completion also counts the newline after the end-of-turn token
CHOSEN = "a red square on a white ground, its edges sharp and its corners square. "
REJECTED = "a blue circle on a black ground, its edge blurred and its centre bright. "


# ---------------------------------------------------------------- data


def _said(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def pair_row(k: int, answer_chars: int) -> dict[str, Any]:
    """Pair k: the same prompt and image, chosen and rejected of `answer_chars` characters each
    (the tiny family's byte-level tokenizer: one token per character), different per pair."""

    def answer(base: str) -> str:
        text = f"Pair {k:03d}: " + (base * (answer_chars // len(base) + 2))
        return text[:answer_chars]

    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    chosen, rejected = _said(answer(CHOSEN)), _said(answer(REJECTED))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "images": ["img.png"]}


def build_pairs(model: Path, out: Path, arch: mb.Arch, seq_len: int, pairs: int) -> Path:
    """pairs.jsonl beside img.png, each side of every pair exactly seq_len tokens as vlmsurgeon
    renders it (checked with its own collator)."""
    from PIL import Image

    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.train.loop import load_processor, make_collator
    from vlmsurgeon.train.preference import pair_conversations
    from vlmsurgeon.train.runconfig import RunOptions

    path = out / "pairs.jsonl"
    if path.is_file():
        return path
    out.mkdir(parents=True, exist_ok=True)
    pixels = bytes((i * 7 + (i // arch.image) * 13) % 256 for i in range(arch.image * arch.image * 3))
    Image.frombytes("RGB", (arch.image, arch.image), pixels).save(out / "img.png")
    opts = RunOptions(model=str(model), seq_len=1 << 20, objective="dpo")
    collator = make_collator(load_processor(str(model), opts)[0], opts)
    probe = out / "probe.jsonl"

    def lengths(rows: list[dict[str, Any]]) -> list[int]:
        probe.write_text("".join(json.dumps(r) + "\n" for r in rows))
        data = load_dataset_rows(probe, kind="pair")
        if data.bad or len(data.samples) != len(rows):
            raise SystemExit(f"pairs: vlmsurgeon refused rows: {data.bad}")
        return [collator.measure(side).tokens for s in data.samples for side in pair_conversations(s)]

    short = lengths([pair_row(0, 20)])[0]
    rows = [pair_row(k, 20 + seq_len - short) for k in range(pairs)]
    got = lengths(rows)
    probe.unlink()
    if set(got) != {seq_len}:
        raise SystemExit(f"pairs: sequences of {sorted(set(got))} tokens, wanted {seq_len}")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ensure(args: argparse.Namespace) -> tuple[Path, Path]:
    """(model dir, pairs.jsonl): memory_bench's random checkpoint (built in a child the first
    time), and the pairs beside it."""
    model, _ = mb.ensure(args.cache, args.arch, args.lm_layers, args.vision_layers, args.seq_len)
    arch = mb._sized(mb.ARCHS[args.arch], args.lm_layers, args.vision_layers)
    return model, build_pairs(model, model.parent / f"dpo-{args.seq_len}-{args.pairs}", arch, args.seq_len, args.pairs)


# ---------------------------------------------------------------- what both sides record


class Recording:
    """A collator that notes, per batch, each sequence's length (attention mask), its scored
    tokens (`scored`: vlmsurgeon's labels, TRL's completion mask) and the image patches."""

    def __init__(self, collator: Any, scored: str, log: list[dict[str, Any]]) -> None:
        self.collator, self.scored, self.log = collator, scored, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self.collator, name)

    def __call__(self, examples: list[Any]) -> Any:
        batch = self.collator(examples)
        marks = batch[self.scored]
        scored = (marks != -100) if self.scored == "labels" else marks.bool()
        self.log.append(
            {
                "shape": list(batch["input_ids"].shape),
                "tokens": batch["attention_mask"].sum(1).tolist(),
                "scored": scored.sum(1).tolist(),
                "patches": int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0,
            }
        )
        return batch


def recorder(marks: dict[str, Any]) -> Any:
    """A Trainer callback: the step clock (in-step and log-to-log), the phase peaks of
    memory_bench (a forward under no_grad is the reference's, with grad the policy's) and the
    seconds each phase took (from the mark before it)."""
    import torch
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.step_s: list[float] = []
            self.step_cpu_s: list[float] = []  # CPU time of all the process's threads: less sensitive to sharing
            self.log_at: list[float] = []
            self.phases: Any = None
            self.phase_s: list[dict[str, float]] = []
            self.last = time.perf_counter()

        def mark(self, phase: str) -> None:
            if self.phases is None:
                return
            now = time.perf_counter()
            if self.phase_s:
                self.phase_s[-1][phase] = self.phase_s[-1].get(phase, 0.0) + now - self.last
            self.last = now
            self.phases.mark(phase)

        def on_train_begin(self, *a: Any, model: Any = None, **k: Any) -> None:
            marks.update(
                rss_train_begin_mib=mb.status_kib("VmRSS") / 1024, peak_before_train_mib=mb.status_kib("VmHWM") / 1024
            )
            marks["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad) if model else 0
            marks["trainable_dtypes"] = sorted(
                {str(p.dtype) for p in model.parameters() if p.requires_grad} if model else set()
            )
            self.phases = mb.PhasePeaks()
            marks["phase_peaks_mib"] = self.phases.peaks
            marks["step_phase_peaks_mib"] = self.phases.steps
            marks["step_phase_s"] = self.phase_s
            if model is not None:
                model.register_forward_hook(
                    lambda *_: self.mark("policy forward" if torch.is_grad_enabled() else "reference forward")
                )

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.mark("between")
            self.phases.begin_step()
            self.phase_s.append({})
            self.start = self.last = time.perf_counter()
            self.cpu = time.process_time()

        def on_pre_optimizer_step(self, *a: Any, **k: Any) -> None:
            self.mark("backward")

        def on_step_end(self, *a: Any, **k: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.step_s.append(time.perf_counter() - self.start)
            self.step_cpu_s.append(time.process_time() - self.cpu)
            self.mark("optimizer")

        def on_log(self, *a: Any, logs: dict[str, Any] | None = None, **k: Any) -> None:
            if logs and "loss" in logs:
                self.log_at.append(time.perf_counter())
                marks.setdefault("losses", []).append(logs["loss"])

    return Recorder()


# ---------------------------------------------------------------- the two sides


def run_vlmsurgeon(model: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import vlmsurgeon.train.preference as preference
    import vlmsurgeon.train.trainer as parts
    from vlmsurgeon.train.loop import finetune
    from vlmsurgeon.train.runconfig import RunOptions

    marks: dict[str, Any] = {}
    batches: list[dict[str, Any]] = []
    clock = recorder(marks)
    original = parts.make_trainer

    def make_trainer(*a: Any, **k: Any) -> Any:
        bound = inspect.signature(original).bind(*a, **k)
        bound.arguments["collator"] = Recording(bound.arguments["collator"], "labels", batches)
        bound.arguments["callbacks"] = [*bound.arguments["callbacks"], clock]
        return original(*bound.args, **bound.kwargs)

    logps = preference.answer_logps

    def answer_logps(*a: Any, **k: Any) -> Any:  # its head runs after the model's forward: marked apart
        out = logps(*a, **k)
        clock.mark("policy log-probs" if torch.is_grad_enabled() else "reference log-probs")
        return out

    parts.make_trainer = make_trainer
    preference.answer_logps = answer_logps
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        run = Path(tmp) / "run"
        finetune(
            RunOptions(
                model=str(model),
                data=str(data),
                output=str(run),
                objective="dpo",
                freeze="vision",
                steps=args.warmup + args.steps,
                seq_len=args.seq_len,
                batch_size=1,
                lr=args.lr,
                dtype=args.dtype,
                seed=0,
            )
        )
        logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in logged if "loss" in r]
    return {
        **marks,
        "step_s": clock.step_s,
        "step_cpu_s": clock.step_cpu_s,
        "log_interval_s": [b - a for a, b in zip(elapsed, elapsed[1:], strict=False)],
        "batches": batches,
        "time_source": "log.jsonl elapsed_s",
    }


def trl_selection(model: Path) -> tuple[list[str], list[str], list[str], Any]:
    """What vlmsurgeon's `--freeze vision` keeps out of 4-bit, puts LoRA on and trains in full,
    by its own rule on the meta model (nothing of it runs in TRL's training), and the LM's spec."""
    from vlmsurgeon.model.inspection import meta_model
    from vlmsurgeon.plan.plan import resolve_preset
    from vlmsurgeon.recipe.freeze import classified_tree, present_components, select, unquantized_roots

    source, meta = meta_model(str(model))
    tree = classified_tree(meta, source.model_type)
    preset = resolve_preset(None, "vision", present_components(tree))
    chosen = select(meta, preset, source.model_type, tree)
    targets = sorted(p for paths in chosen.targets.values() for p in paths)
    lora = [c for c, paths in chosen.targets.items() if paths]
    if len(lora) != 1:
        raise SystemExit(f"TRL side: LoRA on {lora}: one LoraConfig here expects one LoRA component")
    return unquantized_roots(tree, preset.quantize), targets, chosen.modules_to_save, preset.spec(lora[0])


def trl_dataset(data: Path) -> Any:
    from datasets import Dataset
    from PIL import Image

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for row in rows:
        row["images"] = [Image.open(data.parent / name).convert("RGB") for name in row["images"]]
    return Dataset.from_list(rows)


def run_trl(model: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    import re

    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import DPOConfig, DPOTrainer

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    skip, targets, full, spec = trl_selection(model)
    print(
        f"TRL side: 4-bit skips {skip}; LoRA r={spec.rank} alpha={spec.lora_alpha:g} dropout={spec.dropout} on "
        f"{len(targets)} LM Linear layers; modules_to_save {full}",
        file=sys.stderr,
        flush=True,
    )
    marks: dict[str, Any] = {}
    batches: list[dict[str, Any]] = []
    clock = recorder(marks)
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        config = DPOConfig(
            output_dir=str(Path(tmp) / "run"),
            beta=0.1,
            loss_type=["sigmoid"],
            per_device_train_batch_size=1,
            max_length=args.seq_len,
            max_steps=args.warmup + args.steps,
            learning_rate=args.lr,
            optim="adamw_torch",  # vlmsurgeon's torch.optim.AdamW
            lr_scheduler_type="linear",
            weight_decay=0.0,
            max_grad_norm=1.0,
            gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            disable_dropout=False,  # vlmsurgeon trains with the LoRA dropout on
            bf16=args.dtype == "bf16",
            use_cpu=not torch.cuda.is_available(),
            model_init_kwargs={"dtype": dtype},
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=0,
            data_seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = DPOTrainer(
            model=str(model),
            args=config,
            train_dataset=trl_dataset(data),
            callbacks=[clock],
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
                llm_int8_skip_modules=[re.escape(k) for k in skip] or None,
            ),
            peft_config=LoraConfig(
                r=spec.rank,
                lora_alpha=spec.lora_alpha,
                lora_dropout=spec.dropout,
                bias="none",
                target_modules=targets,
                modules_to_save=full or None,
            ),
        )
        if args.trl_trained_dtype == "fp32":  # undo TRL's QLoRA bf16 cast; the optimizer does not exist yet
            for param in trainer.model.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
        trainer.data_collator = Recording(trainer.data_collator, "completion_mask", batches)
        trainer.train()
    return {
        **marks,
        "step_s": clock.step_s,
        "step_cpu_s": clock.step_cpu_s,
        "log_interval_s": [b - a for a, b in zip(clock.log_at, clock.log_at[1:], strict=False)],
        "batches": batches,
        "time_source": "on_log clock",
    }


def _side(args: argparse.Namespace) -> None:
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    if args.side == "vlmsurgeon":
        import vlmsurgeon.train.loop  # noqa: F401
        import vlmsurgeon.train.trainer  # noqa: F401
    else:
        import trl  # noqa: F401
    after_imports = mb.status_kib("VmRSS")
    result = (run_vlmsurgeon if args.side == "vlmsurgeon" else run_trl)(Path(args.model), Path(args.data), args)
    phases = result.get("phase_peaks_mib", {})
    result.update(
        side=args.side,
        peak_rss_mib=max(mb.status_kib("VmHWM") / 1024, result.get("peak_before_train_mib", 0.0), *phases.values()),
        rss_after_imports_mib=after_imports / 1024,
    )
    if torch.cuda.is_available():
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result))


def measure(side: str, model: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One side in its own process; its stderr (progress) passes through."""
    cmd = [sys.executable, __file__, "--side", side, "--model", str(model), "--data", str(data)]
    for flag in ("arch", "lm_layers", "vision_layers", "seq_len", "steps", "warmup", "pairs", "dtype", "cache", "lr"):
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    cmd += ["--trl-trained-dtype", args.trl_trained_dtype]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    if args.heap == "live":
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{side} side failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][7:])


def same_tokens(sides: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    """Both sides' batches, step by step: sequence lengths and scored tokens within TOLERANCE."""
    ours, theirs = sides["vlmsurgeon"]["batches"], sides["trl"]["batches"]
    steps = args.warmup + args.steps
    if len(ours) < steps or len(theirs) < steps:
        raise SystemExit(f"token check: {len(ours)} / {len(theirs)} batches recorded, wanted {steps}")
    worst = {"tokens": 0, "scored": 0}
    for a, b in zip(ours[:steps], theirs[:steps], strict=True):
        for key in worst:
            if len(a[key]) != len(b[key]):
                raise SystemExit(f"token check: {len(a[key])} vs {len(b[key])} sequences in a batch")
            gap = max(abs(x - y) for x, y in zip(a[key], b[key], strict=True))
            worst[key] = max(worst[key], gap)
        if a["patches"] != b["patches"]:
            raise SystemExit(f"token check: {a['patches']} vs {b['patches']} image patches in a batch")
    if max(worst.values()) > TOLERANCE:
        raise SystemExit(f"token check failed: the sides differ by up to {worst} tokens per sequence")
    return (
        f"same tokens: every step {len(ours[0]['tokens'])} sequences of {ours[0]['tokens']} (vlmsurgeon) / "
        f"{theirs[0]['tokens']} (TRL) tokens, scored {ours[0]['scored']} / {theirs[0]['scored']}, "
        f"{ours[0]['patches']} / {theirs[0]['patches']} image patches; largest gap per sequence over "
        f"{steps} steps: {worst['tokens']} tokens, {worst['scored']} scored (TRL's completion counts the newline "
        "after <|im_end|>)"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(mb.ARCHS), default="qwen2_vl")
    parser.add_argument("--lm-layers", type=int, help="default: the published count")
    parser.add_argument("--vision-layers", type=int, help="default: the published count")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens of each sequence (chosen, rejected)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps, after --warmup")
    parser.add_argument("--warmup", type=int, default=1, help="steps not timed (at least 1)")
    parser.add_argument("--pairs", type=int, default=4, help="rows in the data (one pair per step, cycled)")
    parser.add_argument("--lr", type=float, default=2e-4, help="both sides (vlmsurgeon's default)")
    parser.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="compute dtype of both sides; auto = vlmsurgeon's: bf16 on a GPU, fp32 on a CPU",
    )
    parser.add_argument(
        "--trl-trained-dtype",
        choices=("auto", "trl", "fp32"),
        default="auto",
        help="trl: what trains stays as TRL leaves it on a 4-bit model (bf16, AdamW states too); fp32: cast "
        "back to fp32 as vlmsurgeon keeps it; auto (default): trl with bf16 compute, fp32 with fp32 compute "
        "(where TRL's cast fails: the merger's bf16 LayerNorm meets the fp32 vision output)",
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/vlms-bench"))
    parser.add_argument("--heap", choices=("live", "glibc"), default="glibc", help="as in memory_bench.py")
    parser.add_argument("--json", type=Path, help="also write both sides' raw results here")
    parser.add_argument(
        "--first", choices=("trl", "vlmsurgeon"), default="trl", help="which side runs first (the other waits)"
    )
    parser.add_argument("--side", choices=("vlmsurgeon", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    arch = mb.ARCHS[args.arch]
    args.lm_layers = args.lm_layers or arch.lm_layers
    args.vision_layers = args.vision_layers or arch.vision_layers
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: the first logged step has no interval before it")
    if args.dtype == "auto":
        import torch

        args.dtype = "bf16" if torch.cuda.is_available() else "fp32"
    if args.trl_trained_dtype == "auto":
        args.trl_trained_dtype = "trl" if args.dtype == "bf16" else "fp32"
    return args


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    args = parse()
    if args.side:
        return _side(args)
    model, data = ensure(args)
    arch = mb.ARCHS[args.arch]
    print(
        f"{args.arch} (published widths, random weights), LM {args.lm_layers} of {arch.lm_layers} layers in NF4, "
        f"vision {args.vision_layers} of {arch.vision_layers} layers, --freeze vision, DPO (beta 0.1, sigmoid), "
        f"batch 1 pair = 2 sequences of {args.seq_len} tokens, one {arch.image}px image per pair; dtype {args.dtype}; "
        f"TRL trained params {args.trl_trained_dtype}; {args.warmup} warm-up + {args.steps} timed step(s); "
        f"heap {args.heap}; {args.first} first; load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
        flush=True,
    )
    order = ("trl", "vlmsurgeon") if args.first == "trl" else ("vlmsurgeon", "trl")
    measured = {side: measure(side, model, data, args) for side in order}
    sides = {side: measured[side] for side in ("trl", "vlmsurgeon")}
    print(same_tokens(sides, args))
    key = "peak_cuda_mib" if "peak_cuda_mib" in sides["trl"] else "peak_rss_mib"
    for side, r in sides.items():
        r["median_s"] = median(r["log_interval_s"][args.warmup - 1 :])
        r["median_step_s"] = median(r["step_s"][args.warmup :])
        r["median_cpu_s"] = median(r["step_cpu_s"][args.warmup :])
        train_peak = r.get("phase_peaks_mib", {}).get("train", float("nan"))
        phases = ", ".join(f"{k} {v:.0f}" for k, v in r.get("phase_peaks_mib", {}).items() if k != "train")
        print(
            f"{side:10s} peak {r[key]:7.0f} MiB ({key}; training's own {train_peak:.0f}, loading's "
            f"{r['peak_before_train_mib']:.0f}, at train begin {r['rss_train_begin_mib']:.0f}, after imports "
            f"{r['rss_after_imports_mib']:.0f})  median step "
            f"{r['median_s']:6.2f} s ({r['time_source']}; in-step {r['median_step_s']:.2f} s, CPU "
            f"{r['median_cpu_s']:.1f} s)  "
            f"steps {[round(s, 2) for s in r['step_s']]}  trainable {r['trainable']:,} {r['trainable_dtypes']}"
        )
        seconds = ", ".join(f"{k} {v:.1f}" for k, v in (r.get("step_phase_s") or [{}])[-1].items())
        print(f"{'':10s} last step's phase peaks (MiB): {phases}; losses {r.get('losses')}")
        print(f"{'':10s} last step's phase times (s, each since the mark before): {seconds}")
    print(f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "sides": sides}, indent=1))
    ratio = sides["vlmsurgeon"][key] / sides["trl"][key]
    step = sides["vlmsurgeon"]["median_s"] / sides["trl"]["median_s"]
    train = sides["vlmsurgeon"]["phase_peaks_mib"]["train"] / sides["trl"]["phase_peaks_mib"]["train"]
    if key == "peak_rss_mib":
        print(f"training's own peak ratio {train:.2f} (vlmsurgeon/TRL; without loading's high-water mark)")
    cpu = sides["vlmsurgeon"]["median_cpu_s"] / sides["trl"]["median_cpu_s"]
    print(f"in-step CPU time ratio {cpu:.2f} (vlmsurgeon/TRL; all threads' CPU seconds, for a shared machine)")
    print(f"peak memory ratio {ratio:.2f} (vlmsurgeon/TRL), step time ratio {step:.2f}")


if __name__ == "__main__":
    main()
