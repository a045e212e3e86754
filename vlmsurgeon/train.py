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


def _data(path: str, opts: RunOptions, run_dir: Path, label: str) -> Dataset:
    data = load_dataset_rows(Path(path))
    if data.bad and not opts.skip_bad_rows:
        run_dir.mkdir(parents=True, exist_ok=True)
        report = run_dir / REPORT
        report.write_text("".join(f"{path}: {row}\n" for row in data.bad))
        raise BadInput(f"{label} '{path}': {len(data.bad)} bad row(s) of "
                       f"{len(data.bad) + len(data.samples)}, first: {data.bad[0]}; all in {report}",
                       "fix those rows, or pass --skip-bad-rows to train without them")
    if not data.samples:
        raise BadInput(f"{label} '{path}': no usable rows", "check the file's format (see README)")
    return data


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
    from transformers import AutoProcessor, set_seed

    from .collate import Collator
    from .freeze import apply_preset, classified_tree, present_components
    from .inspection import meta_model
    from .plan import resolve_preset
    from .provenance import write_run_outputs

    reference = opts.require_model()
    run_dir = Path(opts.require("output", "-o RUN_DIR"))
    data = _data(opts.require("data", "--data DATA"), opts, run_dir, "data")
    eval_data = _data(opts.eval_data, opts, run_dir, "eval data") if opts.eval_data else None
    checkpoint = _check_run_dir(run_dir, resume)
    source, meta = meta_model(reference, trust_remote_code=trust_remote_code)
    blocker = training_blocker(meta.config)
    if blocker:
        raise BadInput(f"finetune: cannot train '{reference}': {blocker}",
                       "`vlmsurgeon tiny --list` and the README's family table show what trains")
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
    processor = AutoProcessor.from_pretrained(reference)
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
    trainer = make_trainer(applied, opts, run_dir / CHECKPOINTS, data.samples,
                           eval_data.samples if eval_data else None, Collator(processor, opts.seq_len),
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
                          quantized=bool(quantized), global_step=trainer.state.global_step,
                          final_loss=final_loss, train_loss=output.training_loss,
                          world_size=trainer.args.world_size,
                          gradients=grads.report.to_json() if grads.report is not None else None,
                          compute_dtype="bf16" if str(_dtype(opts)) == "torch.bfloat16" else "fp32")
    return FinetuneResult(run_dir, trainer.state.global_step, final_loss, applied, len(data.bad))


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "vlmsurgeon.json"
    if not path.is_file():
        raise BadInput(f"'{run_dir}' is not a finished run (no vlmsurgeon.json)",
                       "point at the -o directory of a finished `vlmsurgeon finetune`")
    return json.loads(path.read_text())


def _last_loss(history: list[dict[str, Any]]) -> float | None:
    losses = [h["loss"] for h in history if "loss" in h]
    return losses[-1] if losses else None
