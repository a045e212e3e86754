"""Peak memory and step time of `finetune --objective grpo` vs TRL's GRPOTrainer (issue 24, acceptance 5).

TRL's GRPOTrainer + peft + bitsandbytes is the baseline: the same prompts on the same full-width
random-weight architecture, the same group size, completion length, sampling and loss, each side
in its own process.

    python bench/grpo_bench.py [--arch qwen2_vl] [--lm-layers N] [--vision-layers N] [--prompt-len 300]
                               [--num-generations 4] [--max-completion-length 64] [--steps 2] [--warmup 1]
                               [--prompts 4] [--dtype auto] [--heap glibc] [--trl-trained-dtype auto|trl|fp32]
                               [--lr 2e-4] [--first trl] [--json OUT.json]

The model directory is bench/memory_bench.py's (its published widths laid over the tiny family's
config, tokenizer and processor, random weights as safetensors, cached in --cache), as in
bench/dpo_bench.py. The prompts are TRL's conversational prompt-only rows (prompt / images): one
448 px image (256 image tokens for Qwen2-VL) and a text long enough that each prompt is exactly
--prompt-len tokens as vlmsurgeon renders it (with the generation prompt); vlmsurgeon reads them
as JSONL, TRL gets the same rows as a `datasets.Dataset` with the image as a PIL image.

The reward is `toy_reward` below (this file is the reward file of both sides: vlmsurgeon gets
`--reward bench/grpo_bench.py:toy_reward`, TRL the same function): a number from the answer's
token ids, never None, never raising, with no term for the length.

Each side runs in its own process (this script with --side), one prompt per step and G answers
sampled for it, the same seed, lr, AdamW, linear schedule, grad clip 1.0 and number of steps:
- vlmsurgeon: `finetune(RunOptions(objective="grpo", freeze="vision", num_generations=G,
  max_completion_length=L, temperature=1.0, beta=0.0, loss_type="dapo", reward=[this file's
  toy_reward], batch_size=1, ...))`, what `vlmsurgeon finetune DIR --data PROMPTS --objective grpo
  --freeze vision --num-generations G --max-completion-length L --reward bench/grpo_bench.py:toy_reward`
  runs (the library call).
- TRL: `GRPOTrainer(MODEL_DIR, reward_funcs=toy_reward, args=GRPOConfig(num_generations=G,
  per_device_train_batch_size=G (TRL counts completions: one prompt per step), steps_per_generation=1,
  num_iterations=1, max_completion_length=L, temperature=1.0, top_p 1, top_k 0, beta=0.0,
  loss_type="dapo", gradient_checkpointing=True, ...), quantization_config=BitsAndBytesConfig(nf4,
  double quant, compute dtype = vlmsurgeon's), peft_config=LoraConfig(...))`. The 4-bit skip list,
  the LoRA targets and the module trained in full (peft `modules_to_save`) are vlmsurgeon's
  `--freeze vision` rule's, read from vlmsurgeon and printed, as dpo_bench does. TRL's dropout
  disabling is off (vlmsurgeon keeps LoRA dropout 0.05), its optimizer plain `adamw_torch`;
  `--trl-trained-dtype` as in dpo_bench (fp32 with fp32 compute: TRL's QLoRA bf16 cast of what
  trains is undone before the optimizer exists).

Measured per step, as in dpo_bench: the interval between logged steps (median over --steps after
--warmup), the in-step time and its CPU seconds (all threads), peak RSS (VmHWM; loading's and
training's own apart). Phases of each step (seconds and peak): "generation" (sampling the G
answers with the KV cache, decoding and scoring them: vlmsurgeon's `GrpoObjective.rollout`, TRL's
`_generate_and_score_completions`), "policy forward" (the training forward over G prompt+answer
sequences: TRL's fused log-prob head runs inside the model's forward, vlmsurgeon's after it, as
"policy log-probs"), "backward", "optimizer". Both sides' prompt tokens, answer
lengths and image patches per step are recorded and compared: a random-weight model rarely samples
an end token, so every answer should run to L tokens on both sides; a step where they do not is
said (the work per step then differs). The last line reads
`peak memory ratio R (vlmsurgeon/TRL), step time ratio S`.

--heap glibc (the default) runs each side as a user runs it: TRL with glibc's own allocator
settings, `finetune` with the 1 MiB mmap threshold it sets itself on a CPU (since 2026-12-02,
vlmsurgeon/train/heap.py); --heap live gives both sides that threshold."""

from __future__ import annotations

import argparse
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

PROMPT = "Describe the picture in detail. "


def toy_reward(prompts: Any, completions: Any, completion_ids: Any, **kwargs: Any) -> list[float]:
    """The bench's reward, both sides: from the answer's token ids, in [0, 1], no length term."""
    return [float(sum(int(t) for t in ids) % 101) / 100.0 for ids in completion_ids]


# ---------------------------------------------------------------- data


def prompt_row(k: int, text_chars: int) -> dict[str, Any]:
    """Prompt k: the image and a text of `text_chars` characters (the tiny family's byte-level
    tokenizer: one token per character), different per prompt."""
    text = (f"Prompt {k:03d}: " + PROMPT * (text_chars // len(PROMPT) + 2))[:text_chars]
    return {
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
        "images": ["img.png"],
    }


def build_prompts(model: Path, out: Path, arch: mb.Arch, prompt_len: int, prompts: int) -> Path:
    """prompts.jsonl beside img.png, each prompt exactly prompt_len tokens as vlmsurgeon renders it
    (its collator's prompt encoding, with the generation prompt)."""
    from PIL import Image

    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.train.loop import load_processor, make_collator
    from vlmsurgeon.train.runconfig import RunOptions

    path = out / "prompts.jsonl"
    if path.is_file():
        return path
    out.mkdir(parents=True, exist_ok=True)
    pixels = bytes((i * 7 + (i // arch.image) * 13) % 256 for i in range(arch.image * arch.image * 3))
    Image.frombytes("RGB", (arch.image, arch.image), pixels).save(out / "img.png")
    opts = RunOptions(model=str(model), seq_len=1 << 20)
    collator = make_collator(load_processor(str(model), opts)[0], opts)
    probe = out / "probe.jsonl"

    def lengths(rows: list[dict[str, Any]]) -> list[int]:
        probe.write_text("".join(json.dumps(r) + "\n" for r in rows))
        data = load_dataset_rows(probe, kind="prompt")
        if data.bad or len(data.samples) != len(rows):
            raise SystemExit(f"prompts: vlmsurgeon refused rows: {data.bad}")
        return [int(collator.prompt_encoding(s)["input_ids"].shape[1]) for s in data.samples]

    short = lengths([prompt_row(0, 20)])[0]
    rows = [prompt_row(k, 20 + prompt_len - short) for k in range(prompts)]
    got = lengths(rows)
    probe.unlink()
    if set(got) != {prompt_len}:
        raise SystemExit(f"prompts: {sorted(set(got))} tokens, wanted {prompt_len}")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ensure(args: argparse.Namespace) -> tuple[Path, Path]:
    model, _ = mb.ensure(args.cache, args.arch, args.lm_layers, args.vision_layers, 1024)
    arch = mb._sized(mb.ARCHS[args.arch], args.lm_layers, args.vision_layers)
    out = model.parent / f"grpo-{args.prompt_len}-{args.prompts}"
    return model, build_prompts(model, out, arch, args.prompt_len, args.prompts)


# ---------------------------------------------------------------- what both sides record


def recorder(marks: dict[str, Any]) -> Any:
    """A Trainer callback: the step clock (in-step and log-to-log), and per phase of each step its
    peak (memory_bench's PhasePeaks) and seconds (from the mark before it). The generation phase is
    marked by each side's wrapper; the policy forward by a forward hook (forwards without grad are
    generation's and are not marked)."""
    import torch
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.step_s: list[float] = []
            self.step_cpu_s: list[float] = []
            self.log_at: list[float] = []
            self.logs: list[dict[str, Any]] = []
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
                model.register_forward_hook(lambda *_: self.mark("policy forward") if torch.is_grad_enabled() else None)

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.mark("between")
            self.phases.begin_step()
            self.phase_s.append({})
            self.start = self.last = time.perf_counter()
            self.cpu = time.process_time()

        def on_pre_optimizer_step(self, *a: Any, **k: Any) -> None:
            self.mark("backward")

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.step_s.append(time.perf_counter() - self.start)
            self.step_cpu_s.append(time.process_time() - self.cpu)
            self.mark("optimizer")

        def on_log(self, *a: Any, logs: dict[str, Any] | None = None, **k: Any) -> None:
            if logs and "loss" in logs:
                self.log_at.append(time.perf_counter())
                self.logs.append({k: v for k, v in logs.items() if isinstance(v, (int, float))})
                marks.setdefault("losses", []).append(logs["loss"])

    return Recorder()


# ---------------------------------------------------------------- the two sides


def run_vlmsurgeon(model: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    import vlmsurgeon.train.grpo as grpo
    import vlmsurgeon.train.trainer as parts
    from vlmsurgeon.train.loop import finetune
    from vlmsurgeon.train.runconfig import RunOptions

    marks: dict[str, Any] = {}
    rollouts: list[dict[str, Any]] = []
    clock = recorder(marks)
    original = parts.make_trainer
    rollout = grpo.GrpoObjective.rollout

    def make_trainer(*a: Any, **k: Any) -> Any:
        import inspect

        bound = inspect.signature(original).bind(*a, **k)
        bound.arguments["callbacks"] = [*bound.arguments["callbacks"], clock]
        return original(*bound.args, **bound.kwargs)

    def recorded_rollout(self: Any, model_: Any, samples: list[Any]) -> Any:
        out = rollout(self, model_, samples)
        clock.mark("generation")
        batch, labels = out.batch, out.batch["labels"]
        rollouts.append(
            {
                "prompt_tokens": [
                    int(m.sum()) - int((marked != -100).sum())
                    for m, marked in zip(batch["attention_mask"], labels, strict=True)
                ],
                "answer_tokens": [int(r["tokens"]) for r in out.records],
                "patches": int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0,
                "shape": list(batch["input_ids"].shape),
            }
        )
        return out

    logps = grpo.completion_logps

    def completion_logps(*a: Any, **k: Any) -> Any:  # its head runs after the model's forward: marked apart
        out = logps(*a, **k)
        clock.mark("policy log-probs")
        return out

    parts.make_trainer = make_trainer
    grpo.GrpoObjective.rollout = recorded_rollout
    grpo.completion_logps = completion_logps
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        run = Path(tmp) / "run"
        finetune(
            RunOptions(
                model=str(model),
                data=str(data),
                output=str(run),
                objective="grpo",
                freeze="vision",
                steps=args.warmup + args.steps,
                seq_len=args.prompt_len + args.max_completion_length,
                batch_size=1,
                lr=args.lr,
                dtype=args.dtype,
                seed=0,
                num_generations=args.num_generations,
                max_completion_length=args.max_completion_length,
                temperature=1.0,
                beta=0.0,
                loss_type="dapo",
                importance_sampling="token",
                reward=[f"{Path(__file__).resolve()}:toy_reward"],
            )
        )
        logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r]
    elapsed = [r["elapsed_s"] for r in steps]
    return {
        **marks,
        "step_s": clock.step_s,
        "step_cpu_s": clock.step_cpu_s,
        "log_interval_s": [b - a for a, b in zip(elapsed, elapsed[1:], strict=False)],
        "rollouts": rollouts,
        "logged_lengths": [r.get("completions/mean_length") for r in steps],
        "time_source": "log.jsonl elapsed_s",
    }


def trl_selection(model: Path) -> tuple[list[str], list[str], list[str], Any]:
    """vlmsurgeon's `--freeze vision` rule, as dpo_bench reads it."""
    import dpo_bench

    return dpo_bench.trl_selection(model)


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
    from trl import GRPOConfig, GRPOTrainer

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    skip, targets, full, spec = trl_selection(model)
    print(
        f"TRL side: 4-bit skips {skip}; LoRA r={spec.rank} alpha={spec.lora_alpha:g} dropout={spec.dropout} on "
        f"{len(targets)} LM Linear layers; modules_to_save {full}",
        file=sys.stderr,
        flush=True,
    )
    marks: dict[str, Any] = {}
    rollouts: list[dict[str, Any]] = []
    clock = recorder(marks)
    g = args.num_generations
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        config = GRPOConfig(
            output_dir=str(Path(tmp) / "run"),
            num_generations=g,
            per_device_train_batch_size=g,  # TRL counts completions: G of them = one prompt per step
            steps_per_generation=1,
            num_iterations=1,
            max_completion_length=args.max_completion_length,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            beta=0.0,
            epsilon=0.2,
            loss_type="dapo",
            importance_sampling_level="token",
            max_steps=args.warmup + args.steps,
            learning_rate=args.lr,
            optim="adamw_torch",
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
        trainer = GRPOTrainer(
            model=str(model),
            reward_funcs=toy_reward,
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
        generate = trainer._generate_and_score_completions

        def recorded(inputs: Any) -> Any:
            out = generate(inputs)
            clock.mark("generation")
            rollouts.append(
                {
                    "prompt_tokens": out["prompt_mask"].sum(1).tolist(),
                    "answer_tokens": out["completion_mask"].sum(1).tolist(),
                    "patches": int(out["pixel_values"].shape[0]) if "pixel_values" in out else 0,
                    "shape": [
                        int(out["prompt_ids"].shape[0]),
                        int(out["prompt_ids"].shape[1] + out["completion_ids"].shape[1]),
                    ],
                }
            )
            return out

        trainer._generate_and_score_completions = recorded
        trainer.train()
    return {
        **marks,
        "step_s": clock.step_s,
        "step_cpu_s": clock.step_cpu_s,
        "log_interval_s": [b - a for a, b in zip(clock.log_at, clock.log_at[1:], strict=False)],
        "rollouts": rollouts,
        "logged_lengths": [r.get("completions/mean_length") for r in clock.logs],
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
        versions={m.__name__: m.__version__ for m in (torch, transformers, peft, bitsandbytes)},
    )
    if args.side == "trl":
        result["versions"]["trl"] = trl.__version__
    if torch.cuda.is_available():
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result))


def measure(side: str, model: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One side in its own process; its stderr (progress) passes through."""
    cmd = [sys.executable, __file__, "--side", side, "--model", str(model), "--data", str(data)]
    for flag in ("arch", "lm_layers", "vision_layers", "prompt_len", "num_generations", "max_completion_length",
                 "steps", "warmup", "prompts", "dtype", "cache", "lr"):  # fmt: skip
        cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    cmd += ["--trl-trained-dtype", args.trl_trained_dtype]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    if args.heap == "live":
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{side}: start {time.strftime('%H:%M:%S', time.gmtime())} UTC, load {load}", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"{side}: end {time.strftime('%H:%M:%S', time.gmtime())} UTC, load {load}", flush=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{side} side failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][7:])


def same_work(sides: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """Both sides' rollouts, step by step: prompt tokens and image patches must match (else the
    bench stops); answer lengths are compared and every step where they differ, or fall short of
    --max-completion-length, is said. And the trained parameter counts."""
    ours, theirs = sides["vlmsurgeon"]["rollouts"], sides["trl"]["rollouts"]
    steps = args.warmup + args.steps
    if len(ours) < steps or len(theirs) < steps:
        raise SystemExit(f"work check: {len(ours)} / {len(theirs)} rollouts recorded, wanted {steps}")
    notes = []
    for k, (a, b) in enumerate(zip(ours[:steps], theirs[:steps], strict=True)):
        if sorted(a["prompt_tokens"]) != sorted(b["prompt_tokens"]) or a["patches"] != b["patches"]:
            raise SystemExit(
                f"work check, step {k + 1}: prompts {a['prompt_tokens']} / {b['prompt_tokens']} tokens, "
                f"{a['patches']} / {b['patches']} image patches (vlmsurgeon / TRL)"
            )
        full = args.max_completion_length
        if any(n != full for n in a["answer_tokens"] + b["answer_tokens"]):
            notes.append(
                f"NOT THE SAME WORK, step {k + 1}: answer lengths {a['answer_tokens']} (vlmsurgeon) / "
                f"{b['answer_tokens']} (TRL), wanted all {full}"
            )
    a, b = ours[0], theirs[0]
    notes.insert(
        0,
        f"same work: every step {len(a['prompt_tokens'])} sequences, prompts of {a['prompt_tokens']} (vlmsurgeon) / "
        f"{b['prompt_tokens']} (TRL) tokens, {a['patches']} / {b['patches']} image patches in the training batch; "
        f"answer lengths per step: vlmsurgeon {[r['answer_tokens'] for r in ours]}, "
        f"TRL {[r['answer_tokens'] for r in theirs]}; "
        f"logged completions/mean_length: vlmsurgeon {sides['vlmsurgeon']['logged_lengths']}, "
        f"TRL {sides['trl']['logged_lengths']}",
    )
    t_ours, t_trl = sides["vlmsurgeon"]["trainable"], sides["trl"]["trainable"]
    notes.append(
        f"trainable parameters: vlmsurgeon {t_ours:,}, TRL {t_trl:,}"
        + (" (the same)" if t_ours == t_trl else "  NOT THE SAME")
    )
    return notes


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(mb.ARCHS), default="qwen2_vl")
    parser.add_argument("--lm-layers", type=int, help="default: the published count")
    parser.add_argument("--vision-layers", type=int, help="default: the published count")
    parser.add_argument("--prompt-len", type=int, default=300, help="tokens of each prompt (image tokens included)")
    parser.add_argument("--num-generations", type=int, default=4, help="G: answers per prompt")
    parser.add_argument("--max-completion-length", type=int, default=64, help="L: tokens per answer at most")
    parser.add_argument("--steps", type=int, default=2, help="timed steps, after --warmup")
    parser.add_argument("--warmup", type=int, default=1, help="steps not timed (at least 1)")
    parser.add_argument("--prompts", type=int, default=4, help="rows in the data (one prompt per step)")
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
        help="as in dpo_bench.py: auto = trl with bf16 compute, fp32 with fp32 compute",
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/vlms-bench"))
    parser.add_argument("--heap", choices=("live", "glibc"), default="glibc", help="as in memory_bench.py")
    parser.add_argument("--json", type=Path, help="also write both sides' raw results here")
    parser.add_argument("--first", choices=("trl", "vlmsurgeon"), default="trl", help="which side runs first")
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
        f"vision {args.vision_layers} of {arch.vision_layers} layers, --freeze vision, GRPO (G {args.num_generations}, "
        f"up to {args.max_completion_length} answer tokens, temperature 1, beta 0, dapo, token ratios), 1 prompt of "
        f"{args.prompt_len} tokens with one {arch.image}px image per step; dtype {args.dtype}; TRL trained params "
        f"{args.trl_trained_dtype}; {args.warmup} warm-up + {args.steps} timed step(s); heap {args.heap}; "
        f"{args.first} first; load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
        flush=True,
    )
    order = ("trl", "vlmsurgeon") if args.first == "trl" else ("vlmsurgeon", "trl")
    measured = {side: measure(side, model, data, args) for side in order}
    sides = {side: measured[side] for side in ("trl", "vlmsurgeon")}
    print(f"versions: {sides['trl']['versions']}")
    for line in same_work(sides, args):
        print(line)
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
        print(f"{'':10s} last step's phase peaks (MiB): {phases}; losses {r.get('losses')}")
        for k, times in enumerate(r.get("step_phase_s") or []):
            seconds = ", ".join(f"{p} {v:.1f}" for p, v in times.items())
            print(f"{'':10s} step {k + 1} phase times (s, each since the mark before): {seconds}")
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
