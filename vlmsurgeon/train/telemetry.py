"""What a run shows while it trains, beyond the progress bar: a one-screen summary before the first
step, generation scores on a few eval rows at each evaluation (`--eval-generate N`), and the
Trainer's own integrations (`--report-to tensorboard|wandb`), which are checked up front."""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from vlmsurgeon.errors import BadInput
from vlmsurgeon.model.report import percent

# --report-to value -> the package transformers' integration needs
REPORTERS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_reporting(opts: Any) -> None:
    """Refuse, before any weight loads, a --report-to whose package is missing and an
    --eval-generate with no --eval-data to generate on."""
    package = REPORTERS.get(opts.report_to)
    if package and importlib.util.find_spec(package) is None:
        raise BadInput(
            f"--report-to {opts.report_to}: the '{package}' package is not installed",
            f"pip install {package}, or --report-to none",
        )
    if opts.eval_generate and not opts.eval_data:
        raise BadInput("--eval-generate needs rows to generate on", "pass --eval-data DATA as well")


def summary_lines(
    applied: Any, opts: Any, quantized: bool, max_steps: int, reference: str, model_type: str | None
) -> list[str]:
    """The run on one screen (after the data summary): model, what trains by component, 4-bit or
    not, steps."""
    total = sum(c.total for c in applied.components.values())
    trainable = applied.trainable
    lines = [
        f"model: {reference} ({model_type}) · " + ("LM in 4-bit NF4 (double quant)" if quantized else "not quantized"),
        f"trains: {trainable:,} of {total:,} parameters ({percent(trainable, total)})",
    ]
    for name, state in applied.components.items():
        lines.append(
            f"  {name:<9} {state.total:>14,}  {state.describe}"
            + (f" · {state.trainable:,} trainable" if state.trainable else "")
        )
    lines.append(
        f"steps: {max_steps} × batch {opts.batch_size}"
        + (f" packed sequence(s) of up to {opts.seq_len} tokens" if getattr(opts, "packing", False) else "")
        + (f" × {opts.grad_accum} accumulated" if opts.grad_accum > 1 else "")
        + (f" · eval-generate {opts.eval_generate} row(s)" if opts.eval_generate else "")
        + (f" · report to {opts.report_to}" if opts.report_to != "none" else "")
    )
    return lines


def loading_line(reference: str, four_bit: Sequence[str], dtype: str) -> str:
    """Said before the weights load, the longest silent phase of a run."""
    how = f"{', '.join(four_bit)} in 4-bit NF4, the rest in {dtype}" if four_bit else f"{dtype}, nothing in 4-bit"
    return f"loading weights of {reference} ({how}) …"


def preparing_line(preset: Any, present: Sequence[str]) -> str:
    """Said before the preset is applied: LoRA injection and what trains in full."""
    lora = [f"{c} r={preset.spec(c).rank}" for c in present if preset.spec(c).mode.value == "lora"]
    full = [c for c in present if preset.spec(c).mode.value == "full"]
    parts = ([f"LoRA on {', '.join(lora)}"] if lora else []) + ([f"full training of {', '.join(full)}"] if full else [])
    return f"preparing {' and '.join(parts) or 'the model'} …"


def starting_line(checkpoint: Path | None) -> str:
    """Said before the Trainer starts; a resume first reads the checkpoint's optimizer state."""
    if checkpoint is None:
        return "starting training (the first step also checks which parameters get a gradient) …"
    return f"resuming from {checkpoint.name} (weights, optimizer and scheduler state) …"


def elapsed(seconds: float) -> str:
    """`42 s`, `1 min 12 s`, `2 h 05 min`: as precise as a person reads a run's length."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{seconds:.1f} s" if seconds < 9.95 else f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def done_line(seconds: float, run_dir: Path) -> str:
    """The last line of a finished run: how long it took and the command that ships it."""
    merged = run_dir.with_name(run_dir.name + "-merged")
    return (
        f"done in {elapsed(seconds)}; next: vlmsurgeon merge {shlex.quote(str(run_dir))} "
        f"-o {shlex.quote(str(merged))} --verify"
    )


def say(line: str) -> None:
    """A status line on stderr, from the main process only (under torchrun every rank runs)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


class Summary(TrainerCallback):
    """Prints the summary once the Trainer knows the step count (main process, stderr)."""

    def __init__(self, lines: Any) -> None:
        self.lines = lines  # a callable taking max_steps

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            for line in self.lines(state.max_steps):
                print(line, file=sys.stderr)


class EvalGenerate(TrainerCallback):
    """At each evaluation: greedy answers for the first N eval rows from the model as it is now,
    scored against their last assistant turn (exact match, token F1, ROUGE-L), logged beside the
    loss (`eval_gen_*` in log.jsonl)."""

    def __init__(
        self,
        rows: list[Any],
        processor: Any,
        count: int,
        max_new_tokens: int = 64,
        sampling: dict[str, Any] | None = None,
    ) -> None:
        self.rows, self.processor, self.count, self.max_new_tokens = rows[:count], processor, count, max_new_tokens
        self.sampling = dict(sampling or {})  # the run's video sampling, as its rows were collated
        self.trainer: Any = None

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        scores = self.scores(kwargs["model"])
        if scores:
            self.trainer.log({f"eval_gen_{k}": v for k, v in scores.items()})

    def scores(self, model: Any) -> dict[str, float]:
        from vlmsurgeon.use.answer import Loaded, answer
        from vlmsurgeon.use.evaluate import score, split_sample

        from . import heap

        loaded = Loaded(model, self.processor, "run", "training", False, self.sampling)
        was_training = model.training
        model.eval()
        totals: dict[str, float] = {}
        try:
            with heap.sampling():
                scored = 0
                for sample in self.rows:
                    messages, reference = split_sample(sample)
                    try:
                        reply = answer(
                            loaded, messages, sample.images, sample.videos, max_new_tokens=self.max_new_tokens
                        )
                    except BadInput:  # e.g. a last answer that follows a tool result: not a question
                        continue
                    scored += 1
                    for key, value in score(reply.text, reference).items():
                        totals[key] = totals.get(key, 0.0) + value
        finally:
            model.train(was_training)
        out = {k: round(v / scored, 4) for k, v in totals.items()} if scored else {}
        return {**out, "rows": scored} if out else {}
