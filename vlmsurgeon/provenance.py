"""What a run leaves behind, written atomically: the peft adapter, fully trained components,
processor files and `vlmsurgeon.json` (what produced it)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .fsutil import honour_umask

ADAPTER_DIR = "adapter"
PROCESSOR_DIR = "processor"
COMPONENTS_FILE = "trained_components.safetensors"
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors", "tokenizers")


def versions() -> dict[str, str]:
    out = {"vlmsurgeon": __version__}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def replace_into(staging: Path, target: Path) -> None:
    """Move every entry of `staging` into `target`, one rename each."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in staging.iterdir():
        dest = target / entry.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(entry, dest)


def _full_tensors(applied: Any) -> dict[str, Any]:
    """Trainable tensors that the peft adapter does not hold, under their base-model names:
    every trainable tensor when no adapter was injected, loose parameters otherwise."""
    from .freeze import base_name

    peft = hasattr(applied.model, "peft_config")
    loose = set(applied.loose_trainable)
    out = {}
    for name, param in applied.model.named_parameters():
        base = base_name(name)
        if param.requires_grad and (not peft or base in loose):
            out[base] = param.detach().to("cpu").contiguous()
    return out


def write_run_outputs(run_dir: Path, applied: Any, processor: Any, *, opts: Any, source: Any, data: Any,
                      data_report: Any,
                      quantized: bool, global_step: int, final_loss: float | None,
                      train_loss: float | None, world_size: int = 1, compute_dtype: str = "fp32",
                      gradients: dict[str, Any] | None = None,
                      resumed: list[dict[str, Any]] | None = None) -> None:
    from safetensors.torch import save_file

    run_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".final-", dir=run_dir) as tmp:
        staging = Path(tmp)
        artifacts: dict[str, str] = {"processor": PROCESSOR_DIR}
        if hasattr(applied.model, "peft_config"):
            applied.model.save_pretrained(staging / ADAPTER_DIR)
            artifacts["adapter"] = ADAPTER_DIR
        tensors = _full_tensors(applied)
        if tensors:
            save_file(tensors, str(staging / COMPONENTS_FILE), metadata={"format": "pt"})
            artifacts["trained_components"] = COMPONENTS_FILE
        processor.save_pretrained(staging / PROCESSOR_DIR)
        record = {
            "vlmsurgeon": __version__,
            "base": {"reference": source.ref.text, "revision": source.ref.revision,
                     "model_type": source.model_type},
            "preset": applied.preset.model_dump(mode="json"),
            "quantize": "4bit-nf4-double-quant" if quantized else "none",
            "report": {name: {"params": s.total, "trainable": s.trainable, "mode": s.mode, "how": s.describe,
                              "lora_modules": s.lora_modules, "full_roots": s.full_roots}
                       for name, s in applied.components.items()},
            "trainable_params": applied.trainable,
            "modules_to_save": applied.modules_to_save,
            "loose_trainable": applied.loose_trainable,
            "data": {"path": str(data.path), "sha256": data.sha256, **data_report.record(),
                     "skipped_bad_rows": data_report.skipped, "processor": data_report.processor},
            "training": {"global_step": global_step, "final_loss": final_loss, "train_loss": train_loss,
                         "world_size": world_size, "compute_dtype": compute_dtype,
                         **opts.model_dump(exclude={"model", "output", "data"})},
            "gradients_first_step": gradients,
            "resumed": resumed or [],
            "artifacts": artifacts,
            "versions": versions(),
        }
        (staging / "vlmsurgeon.json").write_text(json.dumps(record, indent=2) + "\n")
        honour_umask(staging)  # tempfile made it 0700, and some writers 0600: give the user's modes
        replace_into(staging, run_dir)
