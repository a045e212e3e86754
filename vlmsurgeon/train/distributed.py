"""`finetune` under `accelerate launch`: which engine shards the weights (FSDP, DeepSpeed ZeRO-3),
the trained tensors gathered from every process before rank 0 writes them, and what a
sharded run cannot do as a single process does."""

from __future__ import annotations

import os
from typing import Any

from vlmsurgeon.errors import BadInput


def sharded_engine() -> str | None:
    """ "fsdp" or "zero3" when `accelerate launch` was asked to shard the weights across processes
    (read from the variables it sets: the model loads before any Accelerator exists)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
    if (
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
        and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    ):
        return "zero3"
    return None


def check_engine() -> None:
    """Refuse, before any weight loads, a launch that accelerate would stop once loaded: FSDP
    syncing module states (which cpu_ram_efficient_loading needs) syncs them on a GPU."""
    import torch

    if sharded_engine() != "fsdp" or os.environ.get("FSDP_SYNC_MODULE_STATES", "").lower() != "true":
        return
    has = getattr(torch, "accelerator", None)
    if has.is_available() if has is not None else torch.cuda.is_available():
        return
    raise BadInput(
        "accelerate config: FSDP with fsdp_sync_module_states (which fsdp_cpu_ram_efficient_loading "
        "needs) syncs on a GPU, and this machine has none",
        "on the CPU launch with examples/accelerate/ddp.yaml (DDP over gloo); FSDP needs GPUs",
    )


def trained_names(model: Any) -> set[str]:
    """Names of the tensors that train, read before the Trainer wraps the model (FSDP with
    `use_orig_params: false` replaces them with flat shards)."""
    return {name for name, param in model.named_parameters() if param.requires_grad}


def trained_state(trainer: Any, names: set[str]) -> dict[str, Any] | None:
    """With more than one process: the trained tensors as full tensors, under their peft names.
    Under FSDP / ZeRO-3 each process holds a shard and gathering is collective, so every process
    calls this; FSDP returns them on rank 0 only. None for a single process (read the model)."""
    if trainer.args.world_size <= 1:
        return None
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    return {name: tensor for name, tensor in state.items() if name in names}


def fit_engine(trainer: Any, opts: Any) -> list[str]:
    """Under FSDP or DeepSpeed no process holds a whole tensor or its `.grad`: the first-step
    gradient check and --eval-generate (one process generating) are left out. Returns what to
    say (rank 0 only), including a launch that asked for FSDP and got something else."""
    from accelerate.utils import DistributedType

    from .telemetry import EvalGenerate
    from .trainer import GradCheck

    kind = trainer.accelerator.distributed_type
    notes = []
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and kind != DistributedType.FSDP:
        # accelerate turns FSDP on for GPU-like devices only; on the CPU it trains with DDP (gloo)
        notes.append(
            f"the accelerate config asks for FSDP, but accelerate runs this as {kind.value} "
            "(its FSDP needs GPUs): every process holds the whole model"
        )
    if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        for callback in list(trainer.callback_handler.callbacks):
            if isinstance(callback, (GradCheck, EvalGenerate)):
                trainer.remove_callback(callback)
                if isinstance(callback, GradCheck):
                    what = "the first-step gradient check" + (" (--strict-grads)" if opts.strict_grads else "")
                    where = "`vlmsurgeon plan --probe` runs it on one process"
                else:
                    what, where = "--eval-generate", "`vlmsurgeon eval RUN --data …` runs it afterwards"
                notes.append(f"{what} is off under {kind.value}, whose tensors are sharded; {where}")
    return notes if trainer.is_world_process_zero() else []


def end_process_group() -> None:
    """Destroy the process group `accelerate launch` started, once the run is over: left to the
    interpreter's exit, gloo's threads can abort a finished rank (SIGABRT, "terminate called
    without an active exception") and the launcher reports the run as failed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
