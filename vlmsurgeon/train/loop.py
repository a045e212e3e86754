"""`finetune`: QLoRA with transformers' Trainer. The LM (or what the preset quantizes) loads in
bitsandbytes 4-bit NF4, peft LoRA and full components train, checkpoints are marked complete
only when on disk, `--resume` continues from the newest complete one (its inputs checked against
RUN/run.json), Ctrl-C saves first; the run directory is locked while a run trains in it."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmsurgeon.data.rows import Dataset, load_dataset_rows
from vlmsurgeon.errors import BadInput, VlmSurgeonError
from vlmsurgeon.model.support import training_blocker

from .runconfig import RunOptions
from .runlock import CHECKPOINTS, LOCK, REPORT, claimed, disk_errors, latest_checkpoint, warn


class Interrupted(VlmSurgeonError):
    exit_code = 130


@dataclass
class FinetuneResult:
    run_dir: Path
    global_step: int
    final_loss: float | None
    applied: Any
    skipped_rows: int
    main_process: bool = True  # under accelerate launch / torchrun, rank 0 reports for all


# what each objective's rows are: a conversation, a preference pair, a completion with a label
ROW_KIND = {
    "sft": "sft",
    "dpo": "pair",
    "ipo": "pair",
    "orpo": "pair",
    "simpo": "pair",
    "kto": "label",
    "grpo": "prompt",
}


def _rows(path: str, opts: RunOptions, label: str) -> Dataset:
    data = load_dataset_rows(path, image_root=opts.image_root, kind=ROW_KIND[opts.objective])
    if not data.samples and not data.bad:
        raise BadInput(f"{label} '{path}': no rows", "check the file's format (see docs/data.md)")
    return data


def checked_rows(
    data: Dataset, collator: Any, opts: RunOptions, run_dir: Path | None, label: str
) -> tuple[Any, list[Any]]:
    """The pre-pass: every row through the processor; bad and over-limit rows stop the run
    (exit 2, before any weight is loaded) unless --skip-bad-rows."""
    from vlmsurgeon.data.check import check_rows

    extra: dict[str, Any] = {}
    if opts.objective == "grpo":  # prompt + the longest answer must fit; every reward's columns there
        from vlmsurgeon.use.rewards import parse_rewards

        from .grpo import grpo_knobs

        extra["completion_tokens"] = grpo_knobs(opts).max_completion_length
        extra["required_columns"] = {r.name: r.columns for r in parse_rewards(opts.reward or [])}
    report, usable = check_rows(data, collator, **extra)
    problems = report.bad + report.over_limit
    if problems and not opts.skip_bad_rows:
        where = ""
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / REPORT).write_text("".join(f"{data.path}: {row}\n" for row in problems))
            where = f"; all in {run_dir / REPORT}"
        first = sorted(problems, key=lambda b: b.line)[0]
        raise BadInput(
            f"{label} '{data.path}': {len(problems)} bad row(s) of {len(problems) + len(usable)}, "
            f"first: {first}{where}",
            "fix those rows, or pass --skip-bad-rows to train without them",
        )
    if not usable:
        raise BadInput(f"{label} '{data.path}': no usable rows", "check the file's format (see docs/data.md)")
    return report, usable


def load_processor(reference: str, opts: RunOptions, trust_remote_code: bool = False) -> tuple[Any, dict[str, Any]]:
    """The model's processor with the run's pixel settings. Repo code runs only when trusted: left
    unset, transformers would ask on the terminal (and run it on a "y" from stdin)."""
    from transformers import AutoProcessor

    from vlmsurgeon.data.check import apply_overrides, processor_overrides
    from vlmsurgeon.model.sources import remote_code_hint

    try:
        processor = AutoProcessor.from_pretrained(reference, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:  # no processor files, or an unknown processor class
        if "trust_remote_code" in str(exc) or (not trust_remote_code and _repo_code(reference)):
            raise BadInput(
                f"model '{reference}': its processor needs code from the model repo", remote_code_hint()
            ) from exc
        raise _no_processor(reference, exc) from exc
    video = getattr(processor, "video_processor", None)
    if video is not None and getattr(video, "cap_pixels_per_frame", False) is None:
        video.cap_pixels_per_frame = True  # the reference (qwen-vl-utils) budget, future default
    return processor, apply_overrides(processor, processor_overrides(opts))


def _repo_code(reference: str) -> bool:
    """Whether the model's own files map a class to code in the repo (`auto_map`)."""
    import json

    folder = Path(reference)
    for name in ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        try:
            if isinstance(json.loads((folder / name).read_text()).get("auto_map"), dict):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def _no_processor(reference: str, exc: Exception) -> BadInput:
    first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return BadInput(
        f"model '{reference}': cannot load its processor ({first})",
        "point at a model directory that holds its processor and tokenizer files",
    )


def make_collator(processor: Any, opts: RunOptions) -> Any:
    from vlmsurgeon.data.collate import Collator

    return Collator(processor, opts.seq_len, **sampling(opts))


def sampling(opts: RunOptions) -> dict[str, Any]:
    """How this run samples videos: the options of collate.SAMPLING_OPTIONS it sets."""
    from vlmsurgeon.data.collate import SAMPLING_OPTIONS

    return {k: getattr(opts, k) for k in SAMPLING_OPTIONS if getattr(opts, k) is not None}


def _check_run_dir(run_dir: Path, resume: bool) -> Path | None:
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise BadInput(
                f"--resume: no complete checkpoint in {run_dir / CHECKPOINTS}",
                "start without --resume, or point -o at the run to continue",
            )
        return checkpoint
    leftovers = [p.name for p in run_dir.iterdir() if p.name not in (REPORT, LOCK)] if run_dir.is_dir() else []
    if leftovers and _main_process():  # under torchrun, rank 0 checks for all
        raise BadInput(f"run directory '{run_dir}' is not empty", "pass --resume to continue it, or choose another -o")
    return None


def _main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _dtype(opts: RunOptions) -> Any:
    import torch

    if opts.dtype == "bf16" or (opts.dtype == "auto" and torch.cuda.is_available()):
        return torch.bfloat16
    return torch.float32


def _dtype_name(opts: RunOptions) -> str:
    return "bf16" if str(_dtype(opts)) == "torch.bfloat16" else "fp32"


def load_for_training(reference: str, opts: RunOptions, preset: Any, tree: Any, model_type: str) -> Any:
    """The real model: 4-bit NF4 (double quant) for the preset's quantized components,
    everything else in the compute dtype."""
    import torch
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    from vlmsurgeon.recipe.freeze import unquantized_roots

    from .distributed import check_engine, sharded_engine
    from .prepare import check_offload

    check_offload(opts)
    check_engine()
    dtype = _dtype(opts)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if opts.quantize == "4bit" and preset.quantize:
        keep = unquantized_roots(tree, preset.quantize)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            # FSDP and ZeRO-3 shard only float tensors, and flatten a layer's tensors into one of a
            # single dtype: the packed 4-bit weights are then stored in the compute dtype
            bnb_4bit_quant_storage=dtype if sharded_engine() else torch.uint8,
            llm_int8_skip_modules=[re.escape(p) for p in keep] or None,
        )
    from vlmsurgeon.recipe.freeze import training_numerics

    try:
        return training_numerics(
            AutoModelForImageTextToText.from_pretrained(reference, trust_remote_code=False, **kwargs)
        )
    except (OSError, ValueError) as exc:
        raise BadInput(
            f"model '{reference}': cannot load weights ({str(exc).splitlines()[0][:200]})",
            "point at a local directory with the model's safetensors",
        ) from exc


@dataclass
class _Run:
    """What the checks before loading settled: the run as it will train."""

    opts: RunOptions
    reference: str
    run_dir: Path
    source: Any
    tree: Any
    preset: Any
    data: Dataset
    report: Any
    rows: list[Any]
    eval_rows: list[Any] | None
    processor: Any
    collator: Any
    checkpoint: Path | None
    resumed: list[dict[str, Any]]


def finetune(
    opts: RunOptions, *, resume: bool = False, resume_changed: str | None = None, trust_remote_code: bool = False
) -> FinetuneResult:
    """Check everything, then load and train. The run directory is locked meanwhile, and a run
    that fails before its first checkpoint leaves nothing behind that blocks the retry."""
    from .resume import allowed_changes

    reference = opts.require_model()
    run_dir = Path(opts.require("output", "-o RUN_DIR"))
    allowed = allowed_changes(resume_changed, resume)
    from .distributed import end_process_group

    try:
        with claimed(run_dir, main=_main_process()):
            return _train(_prepare(opts, reference, run_dir, resume, allowed, trust_remote_code))
    finally:
        end_process_group()


def _model_plan(reference: str, opts: RunOptions, trust_remote_code: bool) -> tuple[Any, Any, Any, RunOptions]:
    """Source, component tree and resolved preset, from the config alone (no weights)."""
    from vlmsurgeon.model.inspection import meta_model
    from vlmsurgeon.plan.plan import resolve_preset
    from vlmsurgeon.recipe.freeze import classified_tree, present_components
    from vlmsurgeon.recipe.preset import loaded_4bit

    source, meta = meta_model(reference, trust_remote_code=trust_remote_code)
    tree = classified_tree(meta, source.model_type)
    present = present_components(tree)
    preset = resolve_preset(opts.preset, opts.freeze, present)
    if not any(preset.spec(c).mode.value != "frozen" for c in present):
        raise BadInput(
            f"preset '{preset.name}' freezes every component of '{reference}' "
            f"({', '.join(present)}): nothing would train",
            "leave at least one component to train, e.g. --freeze vision",
        )
    loading = loaded_4bit(preset, present, opts.quantize)
    if loading.reason:  # plan prices the same loading: preset.loaded_4bit is the one rule
        opts = opts.model_copy(update={"quantize": "none"})
    # after the 4-bit rule: a blocker that needs 4-bit does not apply to a run that loads none
    blocker = training_blocker(meta.config, opts)
    if blocker:
        raise BadInput(f"finetune: cannot train '{reference}': {blocker[0]}", blocker[1])
    if opts.packing:  # a family whose forward cannot keep packed rows apart, before any weight loads
        from vlmsurgeon.data.packing import check_packing

        check_packing(source.model_type)
    if loading.reason:
        print(f"vlmsurgeon: warning: {loading.reason}", file=sys.stderr)
    return source, tree, preset, opts


def _prepare(
    opts: RunOptions, reference: str, run_dir: Path, resume: bool, allowed: set[str], trust_remote_code: bool
) -> _Run:
    """Everything that can be refused before a weight loads: data, preset, resume inputs and
    checkpoint files, every row through the processor; then RUN/run.json."""
    from .resume import check_checkpoint, check_resume, check_steps, run_inputs, write_inputs
    from .telemetry import check_reporting

    check_reporting(opts)
    if opts.objective == "kto" and opts.batch_size < 2:  # TRL's rule too
        raise BadInput(
            "--objective kto needs --batch-size 2 or more: its KL baseline pairs each prompt with "
            "another row's completion in the same batch",
            "pass --batch-size 2 (or more)",
        )
    if opts.objective == "grpo" and not opts.reward:  # plan prices grpo without one; training scores with them
        raise BadInput(
            "objective grpo needs at least one reward",
            "--reward exact (see docs/grpo.md), or --reward FILE.py:FUNCTION",
        )
    data = _rows(opts.require("data", "--data DATA"), opts, "data")
    eval_data = _rows(opts.eval_data, opts, "eval data") if opts.eval_data else None
    checkpoint = _check_run_dir(run_dir, resume)
    if checkpoint is not None:
        check_steps(run_dir, checkpoint, opts.steps)
    source, tree, preset, opts = _model_plan(reference, opts, trust_remote_code)
    if opts.from_run:
        from .preference import check_from

        check_from(opts.from_run, reference, preset)
    inputs = run_inputs(opts, source, preset, data, _dtype_name(opts))
    resumed: list[dict[str, Any]] = []
    if checkpoint is not None:
        resumed = check_resume(run_dir, inputs, allowed, int(checkpoint.name.split("-")[-1]))
        check_checkpoint(checkpoint)
    processor, pixels = load_processor(reference, opts, trust_remote_code)
    collator = make_collator(processor, opts)
    report, rows = checked_rows(data, collator, opts, run_dir, "data")
    eval_rows = checked_rows(eval_data, collator, opts, run_dir, "eval data")[1] if eval_data else None
    if opts.packing:  # the rows as packed sequences; evaluation rows stay one a sequence
        from vlmsurgeon.data.packing import pack_rows

        rows, collator = pack_rows(rows, report, collator, source.model_type, opts.batch_size, opts.seed)
    if opts.objective == "grpo":  # prompts: the answers are sampled at each step
        from .grpo import PromptCollator

        collator = PromptCollator(collator)
    elif ROW_KIND[opts.objective] != "sft":  # rows checked above; trained as pairs or with KL pairs
        from .preference import LabelCollator, PairCollator

        collator = PairCollator(collator) if ROW_KIND[opts.objective] == "pair" else LabelCollator(collator)
    report.processor = pixels
    if _main_process():
        print_data_summary(report)
        with disk_errors(run_dir, "writing run.json"):
            write_inputs(run_dir, inputs, resumed)
    return _Run(
        opts,
        reference,
        run_dir,
        source,
        tree,
        preset,
        data,
        report,
        rows,
        eval_rows,
        processor,
        collator,
        checkpoint,
        resumed,
    )


def _load_model(run: _Run) -> tuple[Any, bool]:
    opts = run.opts
    model = load_for_training(run.reference, opts, run.preset, run.tree, run.source.model_type)
    quantized = "quantization_config" in getattr(model.config, "__dict__", {}) or getattr(
        model, "is_loaded_in_4bit", False
    )
    from .prepare import enable_checkpointing, no_training_cache

    no_training_cache(model)
    if opts.gradient_checkpointing:
        enable_checkpointing(model, offload=opts.offload_activations)
    return model, bool(quantized)


def _train(run: _Run) -> FinetuneResult:
    from transformers import set_seed

    from vlmsurgeon.recipe.freeze import apply_preset, present_components
    from vlmsurgeon.recipe.preset import loaded_4bit
    from vlmsurgeon.ship.provenance import write_run_outputs

    from .distributed import fit_engine, sharded_engine, trained_names, trained_state
    from .prepare import cast_trained
    from .telemetry import EvalGenerate, Summary, loading_line, preparing_line, say, starting_line, summary_lines
    from .trainer import GradCheck, JsonlLog, MarkComplete, Progress, StopOnSignal, make_trainer

    opts, run_dir = run.opts, run.run_dir
    present = present_components(run.tree)
    from .heap import checkpoint_pages_line, give_back_checkpoint_pages, return_freed_blocks

    heap = return_freed_blocks(cuda=_cuda())
    if heap:
        say(heap)
    say(loading_line(run.reference, loaded_4bit(run.preset, present, opts.quantize).quantized, _dtype_name(opts)))
    model, quantized = _load_model(run)
    set_seed(opts.seed)  # LoRA initialisation draws from the RNG: same seed, same adapter
    say(preparing_line(run.preset, present))
    applied = apply_preset(model, run.preset, run.source.model_type)
    if opts.packing:  # M-RoPE families position packed rows with the model's own rope index
        run.collator.bind(applied.model)
    if quantized:  # what trains in full gets fp32 master weights; frozen parts keep their dtype
        cast_trained(applied.model)
    if opts.from_run:
        from .preference import start_from

        say(f"starting from {opts.from_run}: {start_from(applied, opts.from_run)} trained tensor(s) loaded")
    if _dtype_name(opts) == "fp32" and not sharded_engine():  # frozen blocks back in 16 bits, losslessly
        from .compact import compact_frozen, compacted_line

        line = compacted_line(compact_frozen(applied.model))
        if line:
            say(line)
    pages = checkpoint_pages_line(give_back_checkpoint_pages())  # loading and preparing are over
    if pages:
        say(pages)
    stop = StopOnSignal()
    grads = GradCheck(applied, opts.strict_grads)
    callbacks = [
        Summary(lambda steps: summary_lines(applied, opts, quantized, steps, run.reference, run.source.model_type)),
        Progress(),
        JsonlLog(run_dir / "log.jsonl"),
        MarkComplete(),
        stop,
        grads,
    ]
    if opts.eval_generate and run.eval_rows:
        callbacks.append(EvalGenerate(run.eval_rows, run.processor, opts.eval_generate, sampling=sampling(opts)))
    if opts.report_to == "tensorboard":  # beside the run, not inside checkpoints/
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    trainer = make_trainer(
        applied,
        opts,
        run_dir / CHECKPOINTS,
        run.rows,
        run.eval_rows,
        run.collator,
        callbacks=callbacks,
        objective=_objective(applied, opts, run),
    )
    for note in fit_engine(trainer, opts):
        warn(note)
    names = trained_names(applied.model)
    say(starting_line(run.checkpoint))
    with stop.installed(), disk_errors(run_dir, lambda: trainer.saving or "training (writing log.jsonl)"):
        output = trainer.train(resume_from_checkpoint=str(run.checkpoint) if run.checkpoint else None)
    if stop.requested:
        raise Interrupted(
            f"interrupted at step {trainer.state.global_step}; checkpoint saved in {run_dir / CHECKPOINTS}",
            f"vlmsurgeon finetune … -o {run_dir} --resume",
        )
    final_loss = _last_loss(trainer.state.log_history)
    trained = trained_state(trainer, names)  # every process: a sharded gather is collective
    if trainer.is_world_process_zero():
        with disk_errors(run_dir, "writing the run's outputs"):
            write_run_outputs(
                run_dir,
                applied,
                run.processor,
                opts=opts,
                source=run.source,
                data=run.data,
                data_report=run.report,
                quantized=quantized,
                global_step=trainer.state.global_step,
                final_loss=final_loss,
                train_loss=output.training_loss,
                world_size=trainer.args.world_size,
                compute_dtype=_dtype_name(opts),
                gradients=grads.report.to_json() if grads.report is not None else None,
                resumed=run.resumed,
                trained=trained,
            )
    return FinetuneResult(
        run_dir,
        trainer.state.global_step,
        final_loss,
        applied,
        run.report.skipped,
        main_process=trainer.is_world_process_zero(),
    )


def _objective(applied: Any, opts: RunOptions, run: _Run) -> Any:
    """A preference run's loss (None for SFT), with its reference, whose cost is said once."""
    if opts.objective == "sft":
        return None
    from .loss import chunked_loss_for
    from .objectives import REFERENCE
    from .preference import Objective, Reference, knobs_for, precompute, resolved_knobs
    from .telemetry import say

    chunked = chunked_loss_for(applied.model)[0] if opts.chunked_loss else None
    if opts.objective == "grpo":
        from .grpo import make_objective

        return make_objective(applied, opts, run.collator.collator, chunked, run.run_dir if _main_process() else None)
    reference = Reference(applied.model, whole=bool(opts.from_run)) if opts.objective in REFERENCE else None
    knobs = ", ".join(f"{k} {v:g}" for k, v in resolved_knobs(opts).items())
    objective = Objective(opts.objective, knobs_for(opts), chunked, reference)
    if reference is None:
        say(f"objective {opts.objective} ({knobs}): reference-free")
        return objective
    params, size = reference.copied
    what = f"{opts.from_run} as it starts" if opts.from_run else "the model with its adapter disabled"
    copies = f"; a start copy of {params:,} trained parameter(s) ({size / 2**20:.2f} MiB), not of the base"
    say(f"objective {opts.objective} ({knobs}): reference = {what}" + (copies if params else ", no copy of the base"))
    if opts.precompute_ref:
        precompute(objective, applied.model, run.rows, run.collator, opts.batch_size)
        say(f"reference log-probs of {len(run.rows)} pair(s) computed; the reference is not kept")
    return objective


def print_data_summary(report: Any) -> None:
    """The data summary on stderr before training (what `data check` prints in full)."""
    media = f", {report.images} image(s)" + (f", {report.videos} video(s)" if report.videos else "")
    formats = ", ".join(f"{n} {k}" for k, n in sorted(report.formats.items()))
    total = report.stats()["total"]
    print(
        f"data: {report.rows} row(s) ({formats}){media}; tokens p50 {total['p50']}, max {total['max']} "
        f"(--seq-len {report.seq_len}); {report.truncated} truncated, {report.skipped} skipped",
        file=sys.stderr,
    )
    if report.packing is not None:
        print(f"data: {report.packing.line()}", file=sys.stderr)
    for note in report.notes:
        print(f"data: note: {note}", file=sys.stderr)


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "vlmsurgeon.json"
    if not path.is_file():
        raise BadInput(
            f"'{run_dir}' is not a finished run (no vlmsurgeon.json)",
            "point at the -o directory of a finished `vlmsurgeon finetune`",
        )
    return json.loads(path.read_text())


def _last_loss(history: list[dict[str, Any]]) -> float | None:
    losses = [h["loss"] for h in history if "loss" in h]
    return losses[-1] if losses else None
