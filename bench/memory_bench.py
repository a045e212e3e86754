"""Peak memory and step time of `finetune`'s training step vs the hand-written transformers + peft
+ bitsandbytes loop, on a full-size architecture with random weights (issue 16).

    python bench/memory_bench.py [--arch qwen2_vl] [--lm-layers N] [--vision-layers N]
                                 [--seq-len 2048] [--steps 2] [--warmup 1] [--dtype auto] [--heap glibc]

Default: Qwen2-VL-2B's published sizes, the LM in NF4, `--freeze vision`, batch 1, one 448×448
image, text filling --seq-len. The random checkpoint and data are written once to --cache and
reused. Each side runs in its own process (this script with --side); the vlmsurgeon side calls
`finetune(RunOptions(...))` itself, so library changes are measured without editing this file.
Peak memory: VmHWM of the side's process on the CPU (not ru_maxrss, which survives fork+exec and
would count the parent), with glibc's defaults unless `--heap live` (MALLOC_MMAP_THRESHOLD_=1MiB:
a freed tensor leaves RSS at once instead of staying in glibc's heap, but the page faults slow
a CPU step); torch.cuda.max_memory_allocated on a GPU. Under the defaults each side runs as a user
runs it: the hand-written loop with glibc's own settings, `finetune` with what it sets itself on
a CPU (the same 1 MiB threshold, since 2026-12-02: vlmsurgeon/train/heap.py). The last line reads
`peak memory ratio R (vlmsurgeon/baseline), step time ratio S`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Arch:
    """A published architecture's sizes, laid over the tiny family's config, tokenizer and processor."""

    family: str
    lm_layers: int
    vision_layers: int
    image: int  # the side of the square test image, in pixels
    text: dict[str, Any]
    vision: dict[str, Any]
    top: dict[str, Any] = field(default_factory=dict)
    image_processor: dict[str, Any] = field(default_factory=dict)
    processor: dict[str, Any] = field(default_factory=dict)
    skip: tuple[str, ...] = ()  # what the hand-written loop keeps out of 4-bit
    merger: str = ""  # trained in full by --freeze vision (peft modules_to_save)
    lm_root: str = "model.language_model."


_QWEN_PIXELS = {
    "patch_size": 14,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280},
}
ARCHS: dict[str, Arch] = {
    # Qwen/Qwen2-VL-2B-Instruct config.json
    "qwen2_vl": Arch(
        "qwen2_vl",
        28,
        32,
        448,
        {
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "head_dim": 128,
            "vocab_size": 151936,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": True,
            "initializer_range": 0.02,
            "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
        },
        {
            "depth": 32,
            "embed_dim": 1280,
            "hidden_size": 1536,
            "num_heads": 16,
            "mlp_ratio": 4,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        {"tie_word_embeddings": True},
        _QWEN_PIXELS,
        {"video_processor_kwargs": _QWEN_PIXELS},
        skip=("model.visual", "lm_head"),
        merger="model.visual.merger",
    ),
    # llava-hf/llava-1.5-7b-hf: Vicuna-7B + CLIP ViT-L/14 at 336 px (transformers' LlavaConfig defaults)
    "llava": Arch(
        "llava",
        32,
        24,
        336,
        {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "head_dim": 128,
            "vocab_size": 32064,
            "rms_norm_eps": 1e-5,
            "max_position_embeddings": 4096,
            "initializer_range": 0.02,
        },
        {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 336,
            "patch_size": 14,
            "projection_dim": 768,
        },
        {"image_seq_length": 576},
        {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}},
        {"patch_size": 14},
        skip=("model.vision_tower", "model.multi_modal_projector", "lm_head"),
        merger="model.multi_modal_projector",
    ),
    # google/gemma-3-4b-it: Gemma 3 4B text + SigLIP so400m at 896 px, 256 tokens per image
    "gemma3": Arch(
        "gemma3",
        34,
        27,
        896,
        {
            "hidden_size": 2560,
            "intermediate_size": 10240,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "vocab_size": 262208,
            "sliding_window": 1024,
            "query_pre_attn_scalar": 256,
            "max_position_embeddings": 131072,
            "initializer_range": 0.02,
        },
        {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 896,
            "patch_size": 14,
        },
        {"mm_tokens_per_image": 256},
        {"size": {"height": 896, "width": 896}},
        {"image_seq_length": 256},
        skip=("model.vision_tower", "model.multi_modal_projector", "lm_head"),
        merger="model.multi_modal_projector",
    ),
}


def _sized(arch: Arch, lm_layers: int, vision_layers: int) -> Arch:
    """The architecture with its layer counts cut to the ones measured."""
    text = {**arch.text, "num_hidden_layers": lm_layers}
    if arch.family == "gemma3":  # five sliding-window layers to one global, as released
        text["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(lm_layers)]
    elif arch.family == "qwen2_vl":
        text["layer_types"] = ["full_attention"] * lm_layers
    depth = "depth" if "depth" in arch.vision else "num_hidden_layers"
    return replace(arch, text=text, vision={**arch.vision, depth: vision_layers})


def model_dir(cache: Path, arch: str, lm_layers: int, vision_layers: int) -> Path:
    return cache / f"{arch}-lm{lm_layers}-vision{vision_layers}"


def build_model(arch: Arch, out: Path) -> None:
    """Random bf16 weights + the tiny family's offline tokenizer, with the real image processor."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmsurgeon.tiny.build import _no_zero_matrices, build_config, build_processor, build_tokenizer
    from vlmsurgeon.tiny.families import FAMILIES

    tiny = FAMILIES[arch.family]

    def config(tid: Any, vocab: int) -> dict[str, Any]:
        base = tiny.config(tid, vocab)
        return {
            **base,
            **arch.top,
            "text_config": {**base["text_config"], **arch.text},
            "vision_config": {**base["vision_config"], **arch.vision},
        }

    extra = {k: v for k, v in arch.processor.items() if k != "video_processor_kwargs"}
    family = replace(
        tiny,
        config=config,
        image_processor_kwargs=arch.image_processor,
        processor_kwargs={**tiny.processor_kwargs, **extra},
        video_processor_kwargs=arch.processor.get("video_processor_kwargs", tiny.video_processor_kwargs),
    )
    tokenizer = build_tokenizer(family)
    tokenizer.model_max_length = 1 << 20  # byte-level: one token per character of a long answer
    processor = build_processor(family, tokenizer)
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(build_config(family, tokenizer), dtype=torch.bfloat16)
    _no_zero_matrices(model)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.rename(out)


def build_data(model: Path, data: Path, arch: Arch, seq_len: int) -> None:
    """One image and an answer long enough that the row is exactly seq_len tokens."""
    from PIL import Image

    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.train.loop import load_processor, make_collator
    from vlmsurgeon.train.runconfig import RunOptions

    data.mkdir(parents=True, exist_ok=True)
    pixels = bytes((i * 7 + (i // arch.image) * 13) % 256 for i in range(arch.image * arch.image * 3))
    Image.frombytes("RGB", (arch.image, arch.image), pixels).save(data / "img.png")
    opts = RunOptions(model=str(model), seq_len=1 << 20)
    collator = make_collator(load_processor(str(model), opts)[0], opts)

    def write(answer: str) -> int:
        row = {
            "messages": [
                {"role": "user", "content": "<image>Describe the picture."},
                {"role": "assistant", "content": answer},
            ],
            "images": ["img.png"],
        }
        (data / "train.jsonl").write_text(json.dumps(row) + "\n")
        return collator.measure(load_dataset_rows(data / "train.jsonl").samples[0]).tokens

    probe = write("x")
    words = ("a red square on a white ground " * (seq_len // 8 + 1))[: seq_len - probe + 1]
    got = write(words)
    if got != seq_len:
        raise SystemExit(f"data: row has {got} tokens, wanted {seq_len}")


def ensure(cache: Path, arch_name: str, lm_layers: int, vision_layers: int, seq_len: int) -> tuple[Path, Path]:
    """(model dir, data file), built in a child process the first time (its memory is freed)."""
    root = model_dir(cache, arch_name, lm_layers, vision_layers)
    data = root / f"data-{seq_len}"
    if not (root / "model" / "config.json").is_file() or not (data / "train.jsonl").is_file():
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--side",
                "build",
                "--arch",
                arch_name,
                "--cache",
                str(cache),
                "--lm-layers",
                str(lm_layers),
                "--vision-layers",
                str(vision_layers),
                "--seq-len",
                str(seq_len),
            ],
            check=True,
        )
    return root / "model", data / "train.jsonl"


def _build_side(args: argparse.Namespace) -> None:
    arch = _sized(ARCHS[args.arch], args.lm_layers, args.vision_layers)
    root = model_dir(Path(args.cache), args.arch, args.lm_layers, args.vision_layers)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "model" / "config.json").is_file():
        build_model(arch, root / "model")
    build_data(root / "model", root / f"data-{args.seq_len}", arch, args.seq_len)


def status_kib(key: str) -> int:
    return int(Path("/proc/self/status").read_text().split(key + ":")[1].split()[0])


def reset_peak() -> bool:
    """Start VmHWM again from the current RSS (Linux: "5" to clear_refs), so that training's own
    peak is read apart from loading's. False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PhasePeaks:
    """Peak RSS of each phase of a step: forward (loss included), backward (through clip),
    optimizer step. Each mark reads VmHWM and starts it again; `train` keeps the highest since
    training began. `steps` holds each step's phases; `peaks` the last step's (the first step has
    no AdamW states until its optimizer step, so from the second on a step is in steady state)."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self.train = 0.0
        self.ok = reset_peak()
        self.seconds: list[dict[str, float]] = []  # each step's phases' wall time, as the peaks
        self.last = time.perf_counter()

    def begin_step(self) -> None:
        self.steps.append({})
        self.seconds.append({})
        self.last = time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        if self.seconds:
            self.seconds[-1][phase] = self.seconds[-1].get(phase, 0.0) + now - self.last
        self.last = now
        if not self.ok:
            return
        peak = status_kib("VmHWM") / 1024
        self.train = max(self.train, peak)
        if self.steps:
            step = self.steps[-1]
            step[phase] = max(step.get(phase, 0.0), peak)
            self.peaks.clear()
            self.peaks.update(step)
        self.peaks["train"] = self.train
        reset_peak()


def run_vlmsurgeon(model: Path, data: Path, args: argparse.Namespace) -> tuple[list[float], dict[str, float]]:
    """`finetune` as the CLI runs it, with a step timer added to its Trainer's callbacks."""
    import torch
    from transformers import TrainerCallback

    import vlmsurgeon.train.trainer as parts
    from vlmsurgeon.train.loop import finetune
    from vlmsurgeon.train.runconfig import RunOptions

    times: list[float] = []
    marks: dict[str, Any] = {}

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *a: Any, model: Any = None, **k: Any) -> None:
            # what loading and preparing left resident, and its transient high-water mark
            marks.update(
                rss_train_begin_mib=status_kib("VmRSS") / 1024, peak_before_train_mib=status_kib("VmHWM") / 1024
            )
            self.phases = PhasePeaks()
            marks["phase_peaks_mib"] = self.phases.peaks
            marks["step_phase_peaks_mib"] = self.phases.steps
            marks["step_phase_s"] = self.phases.seconds
            if model is not None:
                model.register_forward_hook(lambda *_: self.phases.mark("forward"))

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.phases.mark("between")  # whatever ran since the last step ended
            self.phases.begin_step()
            self.start = time.perf_counter()
            self.cpu = time.process_time()

        def on_pre_optimizer_step(self, *a: Any, **k: Any) -> None:
            self.phases.mark("backward")

        def on_step_end(self, *a: Any, **k: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)
            marks.setdefault("cpu_step_s", []).append(time.process_time() - self.cpu)
            self.phases.mark("optimizer")

    original = parts.make_trainer

    def make_trainer(*a: Any, **k: Any) -> Any:
        k["callbacks"] = [*k.get("callbacks", []), StepTimer()]
        return original(*a, **k)

    parts.make_trainer = make_trainer
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        finetune(
            RunOptions(
                model=str(model),
                data=str(data),
                output=str(Path(tmp) / "run"),
                freeze="vision",
                steps=args.warmup + args.steps,
                seq_len=args.seq_len,
                batch_size=1,
                lr=2e-4,
                dtype=args.dtype,
                seed=0,
            )
        )
    return times, marks


def run_baseline(model: Path, data: Path, args: argparse.Namespace) -> tuple[list[float], dict[str, float]]:
    """The recipe of the peft / transformers docs, written by hand with the same libraries."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig, set_seed

    from vlmsurgeon.data.collate import Collator
    from vlmsurgeon.data.rows import load_dataset_rows

    arch = ARCHS[args.arch]
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=list(arch.skip),
    )
    net = AutoModelForImageTextToText.from_pretrained(model, quantization_config=quant, dtype=dtype)
    net = prepare_model_for_kbit_training(
        net, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    targets = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(arch.lm_root)]
    set_seed(0)
    net = get_peft_model(
        net, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets, modules_to_save=[arch.merger])
    )
    batch = Collator(AutoProcessor.from_pretrained(model), args.seq_len)(load_dataset_rows(data).samples)
    device = "cuda" if cuda else "cpu"
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    labels = batch.pop("labels")
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    net.train()
    times = []
    marks: dict[str, Any] = {
        "rss_train_begin_mib": status_kib("VmRSS") / 1024,
        "peak_before_train_mib": status_kib("VmHWM") / 1024,
    }
    phases = PhasePeaks()
    marks["phase_peaks_mib"] = phases.peaks
    marks["step_phase_peaks_mib"] = phases.steps
    marks["step_phase_s"] = phases.seconds
    for _ in range(args.warmup + args.steps):
        phases.begin_step()
        start, cpu = time.perf_counter(), time.process_time()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda and args.dtype == "bf16"):
            loss = net(**batch, labels=labels).loss
        phases.mark("forward")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # Trainer's default max_grad_norm
        phases.mark("backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        marks.setdefault("cpu_step_s", []).append(time.process_time() - cpu)
        phases.mark("optimizer")
    return times, marks


def _side(args: argparse.Namespace) -> None:
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401  (imports first: the RSS after them is the baseline)
    import transformers  # noqa: F401

    model, data = Path(args.model), Path(args.data)
    if args.side == "vlmsurgeon":
        import vlmsurgeon.train.loop  # noqa: F401
        import vlmsurgeon.train.trainer  # noqa: F401
    after_imports = status_kib("VmRSS")
    times, marks = (run_vlmsurgeon if args.side == "vlmsurgeon" else run_baseline)(model, data, args)
    # the phases restart VmHWM: the process's peak is the highest of loading's and theirs
    peaks = [
        status_kib("VmHWM") / 1024,
        marks.get("peak_before_train_mib", 0.0),
        *marks.get("phase_peaks_mib", {}).values(),
    ]
    result = {
        "side": args.side,
        "step_s": times[args.warmup :],
        "all_steps_s": times,
        **marks,
        "peak_rss_mib": max(peaks),
        "rss_after_imports_mib": after_imports / 1024,
    }
    if torch.cuda.is_available():
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result))


def measure(side: str, model: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One side in its own process; its stderr (progress) passes through."""
    cmd = [
        sys.executable,
        __file__,
        "--side",
        side,
        "--model",
        str(model),
        "--data",
        str(data),
        "--arch",
        args.arch,
        "--seq-len",
        str(args.seq_len),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--dtype",
        args.dtype,
        "--cache",
        str(args.cache),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.heap == "live":  # every allocation over 1 MiB mapped apart and returned when freed
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{side} side failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][7:])


def resolve_dtype(requested: str) -> tuple[str, str]:
    """(dtype, why). bf16 on a GPU; on a CPU only with native bf16 (AVX512-BF16 / AMX), else
    fp32: without it bf16 matmuls are emulated and several times slower than fp32 (measured)."""
    import torch

    if requested != "auto":
        return requested, "as asked"
    if torch.cuda.is_available():
        return "bf16", "GPU"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return "bf16", "CPU with native bf16"
    return "fp32", "CPU without native bf16 (no avx512_bf16/amx_bf16): bf16 would be emulated"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="qwen2_vl")
    parser.add_argument("--lm-layers", type=int, help="default: the published count")
    parser.add_argument("--vision-layers", type=int, help="default: the published count")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=2, help="timed steps, after --warmup")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/vlms-bench"))
    parser.add_argument(
        "--heap",
        choices=("live", "glibc"),
        default="glibc",
        help="glibc (default): each side's allocator as a user's run has it (finetune sets a "
        "1 MiB mmap threshold itself on a CPU); the loop's RSS then "
        "also keeps freed heap. live: each side runs with MALLOC_MMAP_THRESHOLD_=1MiB, so "
        "that its RSS follows the tensors alive (every large freed block goes back at "
        "once), at the cost of page faults that slow a CPU step",
    )
    parser.add_argument("--side", choices=("vlmsurgeon", "baseline", "build"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    arch = ARCHS[args.arch]
    args.lm_layers = args.lm_layers or arch.lm_layers
    args.vision_layers = args.vision_layers or arch.vision_layers
    return args


def main() -> None:
    args = parse()
    if args.side == "build":
        return _build_side(args)
    if args.side:
        return _side(args)
    args.dtype, why = resolve_dtype(args.dtype)
    model, data = ensure(args.cache, args.arch, args.lm_layers, args.vision_layers, args.seq_len)
    print(
        f"{args.arch} (published sizes, random weights), LM {args.lm_layers} of {ARCHS[args.arch].lm_layers} "
        f"layers in NF4, vision {args.vision_layers} of {ARCHS[args.arch].vision_layers} layers, --freeze vision, "
        f"seq {args.seq_len}, batch 1, one {ARCHS[args.arch].image}px image; dtype {args.dtype} ({why}); "
        f"{args.warmup} warm-up + {args.steps} timed step(s); heap {args.heap}; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    sides = {side: measure(side, model, data, args) for side in ("baseline", "vlmsurgeon")}
    key = "peak_cuda_mib" if "peak_cuda_mib" in sides["baseline"] else "peak_rss_mib"
    for side, r in sides.items():
        mean = sum(r["step_s"]) / len(r["step_s"])
        r["mean_step_s"] = mean
        print(
            f"{side:10s} peak {r[key]:8.0f} MiB ({key}; RSS after imports {r['rss_after_imports_mib']:.0f} MiB)"
            f"  mean step {mean:8.2f} s  steps {[round(s, 2) for s in r['all_steps_s']]}"
        )
        phases = ", ".join(f"{k} {v:.0f}" for k, v in r.get("phase_peaks_mib", {}).items())
        print(
            f"{'':10s} RSS at train begin {r.get('rss_train_begin_mib', 0):.0f} MiB, loading's peak "
            f"{r.get('peak_before_train_mib', 0):.0f} MiB; last step's phase peaks (MiB): {phases}"
        )
        if r.get("cpu_step_s"):
            print(f"{'':10s} CPU seconds per step (all threads): {[round(s, 1) for s in r['cpu_step_s']]}")
        if r.get("step_phase_s"):
            seconds = ", ".join(f"{k} {v:.1f}" for k, v in r["step_phase_s"][-1].items())
            print(f"{'':10s} last step's phases (s): {seconds}")
    ratio = sides["vlmsurgeon"][key] / sides["baseline"][key]
    step = sides["vlmsurgeon"]["mean_step_s"] / sides["baseline"]["mean_step_s"]
    cpu = [sum(r.get("cpu_step_s", [0])[args.warmup :]) for r in (sides["vlmsurgeon"], sides["baseline"])]
    if all(cpu):
        print(f"CPU-second ratio {cpu[0] / cpu[1]:.2f} (timed steps; steadier than wall time on a shared machine)")
    print(f"peak memory ratio {ratio:.2f} (vlmsurgeon/baseline), step time ratio {step:.2f}")


if __name__ == "__main__":
    main()
