"""`finetune` and `data check`: the training command and the check of what it would train on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .options import GRPO, MEDIA, OBJECTIVE, PACKING_HELP, _default
from .use import TRUST_HELP
from .use import quiet_libraries as _quiet_libraries


def finetune(
    model: str | None = typer.Argument(None, help="Local model directory (or set model: in the config)."),
    data: str | None = typer.Option(None, "--data", help="JSONL (messages / conversations) or a datasets dir."),
    out: str | None = typer.Option(None, "--out", "-o", help="Run directory."),
    preset: str | None = typer.Option(None, "--preset", "-p", help="Built-in name or YAML file."),
    freeze: str | None = typer.Option(None, "--freeze", help="Components to freeze, e.g. vision."),
    config: Path | None = typer.Option(None, "--config", "-c", help="RUN.yaml with any of these options."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (overrides --epochs)."),
    epochs: float | None = typer.Option(None, "--epochs", help="Passes over the data." + _default(1)),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate where the preset sets none." + _default("2e-4")),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Samples per device and step." + _default(1)),
    grad_accum: int | None = typer.Option(None, "--grad-accum", help="Gradient accumulation steps." + _default(1)),
    seq_len: int | None = typer.Option(None, "--seq-len", help="Max tokens per sample." + _default(2048)),
    seed: int | None = typer.Option(None, "--seed", help="Random seed." + _default(0)),
    eval_data: str | None = typer.Option(None, "--eval-data", help="Evaluation data, evaluated each epoch."),
    save_every: int | None = typer.Option(None, "--save-every", help="Checkpoint every N steps."),
    quantize: str | None = typer.Option(None, "--quantize", help="4bit (NF4) or none (plain LoRA)." + _default("4bit")),
    dtype: str | None = typer.Option(
        None, "--dtype", help="auto (bf16 on GPU, fp32 on CPU), bf16 or fp32." + _default("auto")
    ),
    no_ckpt: bool = typer.Option(False, "--no-gradient-checkpointing", help="Turn gradient checkpointing off."),
    no_chunked_loss: bool = typer.Option(
        False,
        "--no-chunked-loss",
        help="Compute the loss from the full batch × seq × vocab logits "
        "(without it: a few rows at a time, recomputed in backward).",
    ),
    offload_activations: bool = typer.Option(
        False, "--offload-activations", help="GPU only: keep checkpointed layer inputs in pinned CPU memory."
    ),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help="Train without the rows that fail validation."),
    packing: bool = typer.Option(False, "--packing", help=PACKING_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint."),
    resume_changed: str | None = typer.Option(
        None,
        "--resume-changed",
        help="With --resume: inputs you mean to change, e.g. lr,data (else a "
        "changed input stops the resume); recorded in vlmsurgeon.json.",
    ),
    strict_grads: bool = typer.Option(
        False,
        "--strict-grads",
        help="Stop (exit 1) before the first optimizer step if a trainable "
        "parameter got no gradient, instead of warning.",
    ),
    report_to: str | None = typer.Option(
        None, "--report-to", help="tensorboard, wandb or none (the Trainer's own integrations)." + _default("none")
    ),
    eval_generate: int | None = typer.Option(
        None,
        "--eval-generate",
        help="At each evaluation, generate for N --eval-data rows and log exact match, F1, ROUGE-L.",
    ),
    image_root: str | None = MEDIA["image_root"],
    max_pixels: int | None = MEDIA["max_pixels"],
    min_pixels: int | None = MEDIA["min_pixels"],
    image_size: int | None = MEDIA["image_size"],
    video_frames: int | None = MEDIA["video_frames"],
    video_fps: float | None = MEDIA["video_fps"],
    objective: str | None = OBJECTIVE["objective"],
    beta: float | None = OBJECTIVE["beta"],
    simpo_gamma: float | None = OBJECTIVE["simpo_gamma"],
    desirable_weight: float | None = OBJECTIVE["desirable_weight"],
    undesirable_weight: float | None = OBJECTIVE["undesirable_weight"],
    from_run: str | None = OBJECTIVE["from_run"],
    precompute_ref: bool = OBJECTIVE["precompute_ref"],
    num_generations: int | None = GRPO["num_generations"],
    max_completion_length: int | None = GRPO["max_completion_length"],
    temperature: float | None = GRPO["temperature"],
    epsilon: float | None = GRPO["epsilon"],
    loss_type: str | None = GRPO["loss_type"],
    importance_sampling: str | None = GRPO["importance_sampling"],
    reward: list[str] | None = GRPO["reward"],
    completions_every: int | None = GRPO["completions_every"],
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
) -> None:
    """QLoRA fine-tuning: 4-bit NF4 base, LoRA and full components from the preset, checkpoints, resume."""
    import time

    started = time.monotonic()  # the whole command: checks, data pre-pass, loading, training
    _quiet_libraries()
    from vlmsurgeon.train.loop import finetune as run
    from vlmsurgeon.train.runconfig import merge_options

    opts = merge_options(
        config,
        model=model,
        data=data,
        output=out,
        preset=preset,
        freeze=freeze,
        steps=steps,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        grad_accum=grad_accum,
        seq_len=seq_len,
        seed=seed,
        eval_data=eval_data,
        save_every=save_every,
        quantize=quantize,
        dtype=dtype,
        skip_bad_rows=skip_bad_rows or None,
        gradient_checkpointing=False if no_ckpt else None,
        chunked_loss=False if no_chunked_loss else None,
        offload_activations=offload_activations or None,
        packing=packing or None,
        strict_grads=strict_grads or None,
        image_root=image_root,
        max_pixels=max_pixels,
        min_pixels=min_pixels,
        image_size=image_size,
        video_frames=video_frames,
        video_fps=video_fps,
        report_to=report_to,
        eval_generate=eval_generate,
        objective=objective,
        beta=beta,
        simpo_gamma=simpo_gamma,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
        from_run=from_run,
        precompute_ref=precompute_ref or None,
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        temperature=temperature,
        epsilon=epsilon,
        loss_type=loss_type,
        importance_sampling=importance_sampling,
        reward=reward or None,
        completions_every=completions_every,
    )
    result = run(opts, resume=resume, resume_changed=resume_changed, trust_remote_code=trust_remote_code)
    if not result.main_process:
        return
    loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
    skipped = f", skipped {result.skipped_rows} bad row(s)" if result.skipped_rows else ""
    print(f"{result.run_dir}: {result.global_step} steps{loss}{skipped}")
    from vlmsurgeon.train.telemetry import done_line, say

    say(done_line(time.monotonic() - started, result.run_dir))


def data_check(
    data: str = typer.Argument(..., help="Data file, datasets folder, or dataset_info.json[:NAME]."),
    model: str = typer.Option(..., "--model", "-m", help="The model whose processor and template to use."),
    seq_len: int = typer.Option(2048, "--seq-len", help="Max tokens per sample."),
    image_root: str | None = MEDIA["image_root"],
    max_pixels: int | None = MEDIA["max_pixels"],
    min_pixels: int | None = MEDIA["min_pixels"],
    image_size: int | None = MEDIA["image_size"],
    video_frames: int | None = MEDIA["video_frames"],
    video_fps: float | None = MEDIA["video_fps"],
    objective: str | None = OBJECTIVE["objective"],
    max_completion_length: int | None = GRPO["max_completion_length"],
    reward: list[str] | None = GRPO["reward"],
    packing: bool = typer.Option(False, "--packing", help=PACKING_HELP),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="With --packing: the run's batch size, for the padding share." + _default(1)
    ),
    seed: int | None = typer.Option(None, "--seed", help="With --packing: the run's seed." + _default(0)),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """What finetune's validation finds, without training: rows per format, media, token lengths, bad rows."""
    _quiet_libraries()
    from pydantic import ValidationError

    from vlmsurgeon.data.check import check_rows
    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.errors import BadInput
    from vlmsurgeon.model.sources import load_source, resolve
    from vlmsurgeon.train.loop import ROW_KIND, load_processor, make_collator
    from vlmsurgeon.train.runconfig import RunOptions

    from .render import print_data_report, print_json

    grpo = objective == "grpo"
    if not grpo and (reward or max_completion_length is not None):
        raise BadInput(
            "data check: --max-completion-length and --reward apply to --objective grpo",
            "pass --objective grpo, or leave them out",
        )
    if packing and objective not in (None, "sft"):
        raise BadInput(
            f"data check: --packing applies to objective sft only for now, not {objective}",
            "drop --packing, or check the rows as sft",
        )
    if not packing and (batch_size is not None or seed is not None):
        raise BadInput(
            "data check: --batch-size and --seed size the padding figures of --packing",
            "add --packing, or leave them out",
        )
    if max_completion_length is not None and max_completion_length < 1:
        raise BadInput(
            f"data check: --max-completion-length {max_completion_length}: must be at least 1",
            "see vlmsurgeon data check --help",
        )
    try:
        # grpo's own knobs are checked here, not by RunOptions: a data check runs without --reward
        opts = RunOptions(
            model=model,
            seq_len=seq_len,
            image_root=image_root,
            max_pixels=max_pixels,
            min_pixels=min_pixels,
            image_size=image_size,
            video_frames=video_frames,
            video_fps=video_fps,
            **({"objective": objective} if objective and not grpo else {}),
            **({"packing": True} if packing else {}),
            **{k: v for k, v in (("batch_size", batch_size), ("seed", seed)) if v is not None},
        )
    except ValidationError as exc:
        raise BadInput(
            "data check: "
            + "; ".join(f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()),
            "see vlmsurgeon data check --help",
        ) from exc
    prompts: dict[str, Any] = {}
    if grpo:  # each prompt leaves room for the longest answer; each row holds what its rewards read
        from vlmsurgeon.train.objectives import GrpoKnobs
        from vlmsurgeon.use.rewards import parse_rewards

        prompts["completion_tokens"] = max_completion_length or GrpoKnobs().max_completion_length
        prompts["required_columns"] = {r.name: r.columns for r in parse_rewards(reward or [])}
    rows = load_dataset_rows(data, image_root=image_root, kind=ROW_KIND["grpo" if grpo else opts.objective])
    source = load_source(resolve(model))  # a missing or uncached model is named here, not by the processor loader
    if packing:  # a family that cannot pack is said before its processor runs on every row
        from vlmsurgeon.data.packing import check_packing

        check_packing(source.model_type)
    processor, pixels = load_processor(model, opts)
    report, _ = check_rows(rows, make_collator(processor, opts), **prompts)
    if packing:
        from vlmsurgeon.data.packing import padding

        report.packing = padding(report.tokens["total"], opts.seq_len, opts.batch_size, opts.seed)
    report.processor = pixels
    if as_json:
        print_json(report.to_json())
    else:
        print_data_report(report)
    if report.skipped:  # like a budget violation: the report is out, the check failed
        from vlmsurgeon.errors import CheckFailed

        first = sorted([*report.over_limit, *report.bad], key=lambda b: b.line)[0]
        raise CheckFailed(
            f"data check: {report.skipped} row(s) of {report.skipped + report.rows} would not train, first: {first}",
            "fix those rows, or finetune with --skip-bad-rows",
        )


def register(app: Any, data_app: Any) -> None:
    app.command()(finetune)
    data_app.command("check")(data_check)
