"""The pieces we add to transformers' Trainer: per-component learning rates, a rich progress
bar on stderr, a JSONL log, checkpoints marked complete, and a clean stop on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from vlmsurgeon.data.packing import REAL_TOKENS
from vlmsurgeon.errors import CheckFailed, RuntimeFailure

from .prepare import drop_input_grad_hooks
from .resume import reading_checkpoint
from .runlock import COMPLETE


def _import_trainer() -> tuple[Any, Any]:
    """transformers' Trainer imports `datasets` (pyarrow and pandas: ~90 MiB resident, measured)
    only to recognise `datasets.Dataset` objects; ours are plain lists of validated rows, so it is
    imported with that check off. With `datasets` already loaded, nothing is changed."""
    import transformers.utils as utils
    import transformers.utils.import_utils as import_utils

    saved = utils.is_datasets_available, import_utils.is_datasets_available
    if "transformers.trainer" not in sys.modules and "datasets" not in sys.modules:
        utils.is_datasets_available = import_utils.is_datasets_available = lambda: False
    try:
        from transformers import Trainer, TrainingArguments
    finally:
        utils.is_datasets_available, import_utils.is_datasets_available = saved
    return Trainer, TrainingArguments


Trainer, TrainingArguments = _import_trainer()


class ComponentTrainer(Trainer):
    """Trainer with AdamW parameter groups per component learning rate (from the preset),
    counting the tokens it trains on for tokens/s, and the chunked cross-entropy in training."""

    def __init__(self, *args: Any, applied: Any, chunked: Any = None, objective: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.applied = applied
        self.chunked = chunked  # loss.ChunkedLoss, or None for the model's own loss
        self.objective = objective  # preference.Objective, or None for SFT
        self.metrics: dict[str, dict[str, list[float]]] = {"train": {}, "eval": {}}
        if objective is not None:  # a mean over pairs: Trainer divides it by the accumulation steps
            self.model_accepts_loss_kwargs = False
        self.tokens_seen = 0
        self.saw_image = False
        self.saving: str | None = None  # what a failed write was doing (a full disk names it)
        self.group_lrs: list[float] = []

    def create_optimizer(self, model: Any = None) -> Any:
        import torch

        if self.optimizer is None:
            groups: dict[float, list[Any]] = {}
            for name, param in self.model.named_parameters():
                if param.requires_grad:
                    lr = self.applied.preset.spec(self.applied.component(name)).lr or self.args.learning_rate
                    groups.setdefault(lr, []).append(param)
            self.optimizer = torch.optim.AdamW(
                [{"params": params, "lr": lr} for lr, params in groups.items()],
                lr=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
            )
            self.group_lrs = list(groups)
        return self.optimizer

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        labels = inputs.get("labels")
        # labels are shifted by one inside the loss: position 0 never counts. A batch with no
        # trained token would log loss 0 and take an optimizer step on nothing; the data pre-pass
        # refuses such rows, so reaching this is a bug worth stopping for.
        if labels is not None and not bool((labels[..., 1:] != -100).any()):
            raise EmptyBatch(
                f"step {self.state.global_step + 1}: a batch with no trained token (every label "
                "is -100), stopped before it counted",
                "run `vlmsurgeon data check` on the data; report it if the check passes",
            )
        mask = inputs.get("attention_mask")
        if mask is not None:
            self.tokens_seen += int(mask.sum())
        if REAL_TOKENS in inputs:  # a packed batch has no attention mask: its collator counts them
            self.tokens_seen += int(inputs.pop(REAL_TOKENS))
        self.saw_image = self.saw_image or any(k.startswith("pixel_values") for k in inputs)
        return super().training_step(model, inputs, *args, **kwargs)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        inputs.pop(REAL_TOKENS, None)  # evaluation of packed batches: a count, not an input
        if self.objective is not None:
            if hasattr(self.objective, "begin_step"):  # grpo: which step's answers it samples
                self.objective.begin_step(self.state.global_step + 1)
            loss, metrics = self.objective.loss(model, inputs)
            if hasattr(self.objective, "tokens"):  # grpo's sequences exist only inside the loss
                self.tokens_seen += self.objective.tokens
                self.objective.tokens = 0
                self.saw_image = self.saw_image or self.objective.saw_image
            mode = self.metrics["train" if model.training else "eval"]
            for key, value in metrics.items():
                mode.setdefault(key, []).append(float(value))
            return (loss, {}) if return_outputs else loss
        # evaluation keeps the model's own loss: it returns the logits, and holds no graph
        if self.chunked is None or return_outputs or not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with self.chunked.installed(self.model):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """A preference run's metrics beside the loss, each the mean over the steps since the last
        log, under TRL's names (`eval_` before them in an evaluation's log)."""
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self.metrics[mode].items():
            if values:
                logs[prefix + key] = round(sum(values) / len(values), 6)
        self.metrics[mode] = {}
        super().log(logs, start_time)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        self.saving = f"saving checkpoint-{self.state.global_step}"
        super()._save_checkpoint(model, trial)
        self.saving = None

    # Trainer's own checkpoint loading, with a damaged or mismatched state said as such (exit 2)
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        with reading_checkpoint(resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            adapter = Path(resume_from_checkpoint) / "adapter_model.safetensors"
            if adapter.is_file():  # peft's loader may skip keys it renames wrongly: by exact name
                from vlmsurgeon.ship.trained import exact_adapter_state

                exact_adapter_state(model or self.model, adapter)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        with reading_checkpoint(checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._restore_lrs()

    def _restore_lrs(self) -> None:
        """The saved optimizer and scheduler bring back the saved learning rates: a resume with
        `--resume-changed lr` would train on at the old rate while recording the new one. Put back
        the rates this run asks for, at the point of the schedule the checkpoint reached (unchanged
        rates come out as they were saved)."""
        sched = getattr(self.lr_scheduler, "scheduler", self.lr_scheduler)  # accelerate may wrap it
        lambdas = getattr(sched, "lr_lambdas", None)
        groups = self.optimizer.param_groups
        if lambdas is None or not len(lambdas) == len(groups) == len(self.group_lrs):
            return
        sched.base_lrs = list(self.group_lrs)
        for group, lr, factor in zip(groups, self.group_lrs, lambdas, strict=False):
            group["initial_lr"] = lr
            group["lr"] = lr * factor(sched.last_epoch)
        sched._last_lr = [group["lr"] for group in groups]

    def _load_rng_state(self, checkpoint: str | None) -> None:
        with reading_checkpoint(checkpoint):
            super()._load_rng_state(checkpoint)


class EmptyBatch(RuntimeFailure):
    """A training batch held no label to train on (exit 3)."""


def make_trainer(
    applied: Any,
    opts: Any,
    output_dir: Path,
    train: list[Any],
    evaluation: list[Any] | None,
    collator: Any,
    callbacks: list[Any],
    objective: Any = None,
) -> ComponentTrainer:
    import torch

    save = {"save_strategy": "steps", "save_steps": opts.save_every} if opts.save_every else {"save_strategy": "no"}
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        learning_rate=opts.lr,
        max_steps=opts.steps or -1,
        num_train_epochs=opts.epochs,
        warmup_steps=opts.warmup_ratio,
        lr_scheduler_type="linear",
        logging_steps=1,
        seed=opts.seed,
        data_seed=opts.seed,
        disable_tqdm=True,
        report_to=[] if opts.report_to == "none" else [opts.report_to],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        save_total_limit=None,
        eval_strategy="epoch" if evaluation else "no",
        use_cpu=not torch.cuda.is_available(),
        # autocast whenever weights are bf16: trained parameters are fp32 beside frozen bf16 ones
        bf16=opts.dtype == "bf16" or (torch.cuda.is_available() and opts.dtype == "auto"),
        ddp_find_unused_parameters=False,
        prediction_loss_only=objective is not None,  # a preference evaluation has a loss, no logits
        **save,  # checkpointing: ours, set on the model (prepare.py)
    )
    drop_input_grad_hooks(applied.model)  # peft puts them back on an unquantized model
    trainer = ComponentTrainer(
        model=applied.model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collator,
        callbacks=callbacks,
        applied=applied,
        chunked=None if objective is not None else _chunked_loss(applied.model, opts),
        objective=objective,
    )
    trainer.remove_callback(PrinterCallback)  # it prints logs to stdout; results go there
    for callback in callbacks:
        if hasattr(callback, "trainer"):
            callback.trainer = trainer
    return trainer


def _chunked_loss(model: Any, opts: Any) -> Any:
    """The chunked loss unless --no-chunked-loss; a family it cannot reproduce says so, once."""
    if not opts.chunked_loss:
        return None
    from .loss import chunked_loss_for

    chunked, reason = chunked_loss_for(model)
    if reason and os.environ.get("RANK", "0") == "0":
        print(f"vlmsurgeon: note: plain cross-entropy (full logits) for this model: {reason}", file=sys.stderr)
    return chunked


class DeadGradients(CheckFailed):
    """--strict-grads: a trainable parameter got no gradient (exit 1)."""


class GradCheck(TrainerCallback):
    """Before the first optimizer step whose batch held an image: which trainable tensors got no
    gradient. Warns (main process), or with --strict-grads stops before the step is taken."""

    def __init__(self, applied: Any, strict: bool) -> None:
        self.applied, self.strict = applied, strict
        self.report: Any = None
        self.trainer: Any = None

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.report is not None or not self.trainer.saw_image:
            return
        from vlmsurgeon.plan.probe import gradient_report

        self.report = gradient_report(self.trainer.model, self.applied.component)
        if not self.report.dead_count:
            return
        line = f"first backward step: {self.report.summary()}"
        if self.strict:
            raise DeadGradients(
                line + "; stopped before the first optimizer step",
                "freeze those parameters (a preset / --freeze), or drop --strict-grads",
            )
        if state.is_world_process_zero:
            print(f"vlmsurgeon: warning: {line} (they will not train; `plan --probe` shows the same)", file=sys.stderr)


class Progress(TrainerCallback):
    """step, loss, lr, tokens/s and ETA on stderr (rich), main process only."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.task: Any = None
        self.started = 0.0
        self.trainer: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.bar = Bar(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.task = self.bar.add_task("train", total=state.max_steps, completed=state.global_step, info="")
        self.started = time.perf_counter()
        self.bar.start()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.bar is None or not logs or "loss" not in logs:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        info = f"loss {logs['loss']:.4f} · lr {logs.get('learning_rate', 0):.2e}"
        if "rewards/margins" in logs:  # a preference run: is the chosen answer pulling ahead?
            info += f" · margin {logs['rewards/margins']:+.3f}"
        if "rewards/accuracies" in logs:
            info += f" · acc {logs['rewards/accuracies']:.2f}"
        if "reward" in logs:  # grpo: the sampled answers' mean reward
            info += f" · reward {logs['reward']:.3f}"
        if self.trainer is not None:
            info += f" · {self.trainer.tokens_seen / elapsed:,.0f} tok/s"
        self.bar.update(self.task, completed=state.global_step, info=info)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class JsonlLog(TrainerCallback):
    """One JSON object per logged step in RUN/log.jsonl (main process only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.perf_counter()
        self.trainer: Any = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        elapsed = time.perf_counter() - self.started
        record = {"step": state.global_step, "epoch": state.epoch, "elapsed_s": round(elapsed, 3), **logs}
        if self.trainer is not None:
            record["tokens"] = self.trainer.tokens_seen
            record["tokens_per_s"] = round(self.trainer.tokens_seen / max(elapsed, 1e-9), 1)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


class MarkComplete(TrainerCallback):
    """Trainer writes checkpoints in place; a checkpoint counts only once this marker is on
    disk (written and fsynced after every other file), so resume never takes a torn one."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            from vlmsurgeon.fsutil import honour_umask

            honour_umask(folder.parent)  # torch and safetensors write some files 0600
            for file in folder.iterdir():
                if file.is_file():
                    with file.open("rb") as fh:
                        os.fsync(fh.fileno())
            marker = folder / COMPLETE
            with marker.open("w") as fh:
                fh.write(json.dumps({"step": state.global_step}))
                fh.flush()
                os.fsync(fh.fileno())


class StopOnSignal(TrainerCallback):
    """First Ctrl-C (or SIGTERM): save a checkpoint at the end of this step, then stop.
    A second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
