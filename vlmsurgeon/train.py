"""`finetune`: QLoRA with transformers' Trainer. The LM (or what the preset quantizes) loads in
bitsandbytes 4-bit NF4, peft LoRA and full components train, checkpoints are marked complete
only when on disk, `--resume` continues from the newest complete one, Ctrl-C saves first."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import Dataset, load_dataset_rows
from .errors import BadInput, VlmSurgeonError
from .runconfig import RunOptions
from .support import training_blocker
from .trainer_parts import COMPLETE, DeadGradients, GradCheck, JsonlLog, MarkComplete, Progress, StopOnSignal, make_trainer

CHECKPOINTS = "checkpoints"
REPORT = "bad_rows.txt"


class Interrupted(VlmSurgeonError):
    exit_code = 130


@dataclass
class FinetuneResult:
    run_dir: Path
    global_step: int
    final_loss: float | None
    applied: Any
    skipped_rows: int


def _rows(path: str, opts: RunOptions, label: str) -> Dataset:
    data = load_dataset_rows(path, image_root=opts.image_root)
    if not data.samples and not data.bad:
        raise BadInput(f"{label} '{path}': no rows", "check the file's format (see README)")
    return data


def checked_rows(data: Dataset, collator: Any, opts: RunOptions, run_dir: Path | None, label: str) -> tuple[Any, list[Any]]:
    """The pre-pass: every row through the processor; bad and over-limit rows stop the run
    (exit 2, before any weight is loaded) unless --skip-bad-rows."""
    from .datacheck import check_rows

    report, usable = check_rows(data, collator)
    problems = report.bad + report.over_limit
    if problems and not opts.skip_bad_rows:
        where = ""
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / REPORT).write_text("".join(f"{data.path}: {row}\n" for row in problems))
            where = f"; all in {run_dir / REPORT}"
        first = sorted(problems, key=lambda b: b.line)[0]
        raise BadInput(f"{label} '{data.path}': {len(problems)} bad row(s) of {len(problems) + len(usable)}, "
                       f"first: {first}{where}", "fix those rows, or pass --skip-bad-rows to train without them")
    if not usable:
        raise BadInput(f"{label} '{data.path}': no usable rows", "check the file's format (see README)")
    return report, usable


def load_processor(reference: str, opts: RunOptions) -> tuple[Any, dict[str, Any]]:
    from transformers import AutoProcessor

    from .datacheck import apply_overrides, processor_overrides

    processor = AutoProcessor.from_pretrained(reference)
    video = getattr(processor, "video_processor", None)
    if video is not None and getattr(video, "cap_pixels_per_frame", False) is None:
        video.cap_pixels_per_frame = True  # the reference (qwen-vl-utils) budget, future default
    return processor, apply_overrides(processor, processor_overrides(opts))


def make_collator(processor: Any, opts: RunOptions) -> Any:
    from .collate import Collator

    return Collator(processor, opts.seq_len, video_frames=opts.video_frames, video_fps=opts.video_fps)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that was marked complete; incomplete ones are ignored."""
    folder = run_dir / CHECKPOINTS
    done = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE).is_file()] if folder.is_dir() else []
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def _check_run_dir(run_dir: Path, resume: bool) -> Path | None:
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise BadInput(f"--resume: no complete checkpoint in {run_dir / CHECKPOINTS}",
                           "start without --resume, or point -o at the run to continue")
        return checkpoint
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 checks for all
    leftovers = [p.name for p in run_dir.iterdir() if p.name != REPORT] if run_dir.is_dir() else []
    if leftovers and main_process:
        raise BadInput(f"run directory '{run_dir}' is not empty",
                       "pass --resume to continue it, or choose another -o")
    return None


def _dtype(opts: RunOptions) -> Any:
    import torch

    if opts.dtype == "bf16" or (opts.dtype == "auto" and torch.cuda.is_available()):
        return torch.bfloat16
    return torch.float32


def load_for_training(reference: str, opts: RunOptions, preset: Any, tree: Any, model_type: str) -> Any:
    """The real model: 4-bit NF4 (double quant) for the preset's quantized components,
    everything else in the compute dtype."""
    import torch
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    from .freeze import unquantized_roots

    dtype = _dtype(opts)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if opts.quantize == "4bit" and preset.quantize:
        keep = unquantized_roots(tree, preset.quantize)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=torch.uint8,
            llm_int8_skip_modules=[re.escape(p) for p in keep] or None)
    try:
        return AutoModelForImageTextToText.from_pretrained(reference, **kwargs)
    except (OSError, ValueError) as exc:
        raise BadInput(f"model '{reference}': cannot load weights ({str(exc).splitlines()[0][:200]})",
                       "point at a local directory with the model's safetensors") from exc


def finetune(opts: RunOptions, *, resume: bool = False, trust_remote_code: bool = False) -> FinetuneResult:
    from transformers import set_seed

    from .freeze import apply_preset, classified_tree, present_components
    from .inspection import meta_model
    from .plan import resolve_preset
    from .provenance import write_run_outputs

    reference = opts.require_model()
    run_dir = Path(opts.require("output", "-o RUN_DIR"))
    data = _rows(opts.require("data", "--data DATA"), opts, "data")
    eval_data = _rows(opts.eval_data, opts, "eval data") if opts.eval_data else None
    checkpoint = _check_run_dir(run_dir, resume)
    source, meta = meta_model(reference, trust_remote_code=trust_remote_code)
    blocker = training_blocker(meta.config, opts)
    if blocker:
        raise BadInput(f"finetune: cannot train '{reference}': {blocker[0]}", blocker[1])
    tree = classified_tree(meta, source.model_type)
    present = present_components(tree)
    preset = resolve_preset(opts.preset, opts.freeze, present)
    del meta
    if opts.quantize == "4bit" and preset.quantize and not any(
            preset.spec(c).mode.value == "lora" for c in present):
        # transformers' Trainer refuses a 4-bit model with no adapter attached
        print(f"vlmsurgeon: warning: preset '{preset.name}' trains no LoRA adapter, and a 4-bit model "
              "trains only through adapters: loading without 4-bit (--quantize none)", file=sys.stderr)
        opts = opts.model_copy(update={"quantize": "none"})
    processor, pixels = load_processor(reference, opts)
    collator = make_collator(processor, opts)
    report, rows = checked_rows(data, collator, opts, run_dir, "data")
    eval_rows = checked_rows(eval_data, collator, opts, run_dir, "eval data")[1] if eval_data else None
    report.processor = pixels
    if os.environ.get("RANK", "0") == "0":
        print_data_summary(report)
    model = load_for_training(reference, opts, preset, tree, source.model_type)
    quantized = "quantization_config" in getattr(model.config, "__dict__", {}) or getattr(
        model, "is_loaded_in_4bit", False)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=opts.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif opts.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    set_seed(opts.seed)  # LoRA initialisation draws from the RNG: same seed, same adapter
    applied = apply_preset(model, preset, source.model_type)
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = StopOnSignal()
    grads = GradCheck(applied, opts.strict_grads)
    trainer = make_trainer(applied, opts, run_dir / CHECKPOINTS, rows, eval_rows, collator,
                           callbacks=[Progress(), JsonlLog(run_dir / "log.jsonl"), MarkComplete(), stop, grads])
    with stop.installed():
        try:
            output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except DeadGradients:
            if checkpoint is None and trainer.is_world_process_zero():
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing trained: leave no run behind
            raise
    if stop.requested:
        raise Interrupted(f"interrupted at step {trainer.state.global_step}; checkpoint saved in "
                          f"{run_dir / CHECKPOINTS}", f"vlmsurgeon finetune … -o {run_dir} --resume")
    final_loss = _last_loss(trainer.state.log_history)
    if trainer.is_world_process_zero():
        write_run_outputs(run_dir, applied, processor, opts=opts, source=source, data=data,
                          data_report=report, quantized=bool(quantized), global_step=trainer.state.global_step,
                          final_loss=final_loss, train_loss=output.training_loss,
                          world_size=trainer.args.world_size,
                          gradients=grads.report.to_json() if grads.report is not None else None,
                          compute_dtype="bf16" if str(_dtype(opts)) == "torch.bfloat16" else "fp32")
    return FinetuneResult(run_dir, trainer.state.global_step, final_loss, applied, report.skipped)


def print_data_summary(report: Any) -> None:
    """The data summary on stderr before training (what `data check` prints in full)."""
    media = f", {report.images} image(s)" + (f", {report.videos} video(s)" if report.videos else "")
    formats = ", ".join(f"{n} {k}" for k, n in sorted(report.formats.items()))
    total = report.stats()["total"]
    print(f"data: {report.rows} row(s) ({formats}){media}; tokens p50 {total['p50']}, max {total['max']} "
          f"(--seq-len {report.seq_len}); {report.truncated} truncated, {report.skipped} skipped",
          file=sys.stderr)
    for note in report.notes:
        print(f"data: note: {note}", file=sys.stderr)


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "vlmsurgeon.json"
    if not path.is_file():
        raise BadInput(f"'{run_dir}' is not a finished run (no vlmsurgeon.json)",
                       "point at the -o directory of a finished `vlmsurgeon finetune`")
    return json.loads(path.read_text())


def _last_loss(history: list[dict[str, Any]]) -> float | None:
    losses = [h["loss"] for h in history if "loss" in h]
    return losses[-1] if losses else None
