"""What a run leaves behind, written atomically: the peft adapter, fully trained components,
processor files and `vlmsurgeon.json` (what produced it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from vlmsurgeon import __version__
from vlmsurgeon.fsutil import honour_umask

ADAPTER_DIR = "adapter"
PROCESSOR_DIR = "processor"
COMPONENTS_FILE = "trained_components.safetensors"
# How peft's model card (README.md) lists the bitsandbytes config of a quantized training run.
_PEFT_BNB = "The following `bitsandbytes` quantization config was used during training:"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors", "tokenizers")


def versions() -> dict[str, str]:
    out = {"vlmsurgeon": __version__}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def base_record(source: Any) -> dict[str, Any]:
    """The base as a run records it, usable from any directory: a local path made absolute; a hub
    id with the commit it resolved to where known (the cache snapshot its config came from). What
    was typed, and where, are kept beside it."""
    ref = source.ref
    record = {
        "reference": ref.text,
        "revision": ref.revision,
        "model_type": source.model_type,
        "given": ref.text,
        "cwd": os.getcwd(),
    }
    if ref.path is not None:
        record["reference"] = str(ref.path.expanduser().resolve())
    else:
        snapshot = Path(source.config_path).parent if source.config_path else None
        if snapshot is not None and snapshot.parent.name == "snapshots" and _COMMIT.match(snapshot.name):
            record["revision"] = snapshot.name
    return record


def json_or_empty(path: Path) -> dict[str, Any]:
    """A side file that may be absent or damaged: only a hint is read from it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def adapter_origin(adapter: Path) -> dict[str, Any]:
    """What an adapter's own files say about the base it trained on: "4bit" (with the quantized
    components when recorded), "unquantized", or "unknown"; and which file said it."""
    from vlmsurgeon.model.sources import read_json

    own = adapter / "vlmsurgeon.json"
    record = read_json(own) if own.is_file() else {}
    for key in ("vlmsurgeon_adapter", "vlmsurgeon_adapter_subset"):
        entry = record.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("quantize"), str):
            return {
                **_origin(entry["quantize"], entry.get("quantized_components"), f"{own}"),
                "compute_dtype": entry.get("compute_dtype"),
            }
    run = adapter.parent / "vlmsurgeon.json"
    if adapter.name == ADAPTER_DIR and run.is_file():  # the adapter folder of a run
        record = read_json(run)
        if "base" in record:
            preset = record.get("preset") if isinstance(record.get("preset"), dict) else {}
            return _origin(record.get("quantize"), preset.get("quantize"), f"{run}")
    card = adapter / "README.md"
    text = card.read_text(errors="replace") if card.is_file() else ""
    if _PEFT_BNB in text and "load_in_4bit: True" in text.split(_PEFT_BNB, 1)[1]:
        return {"base": "4bit", "quantized": None, "from": f"{card} (peft's model card)"}
    return {"base": "unknown", "quantized": None, "from": None}


def _origin(quantize: Any, components: Any, where: str) -> dict[str, Any]:
    if str(quantize or "none").startswith("4bit"):
        return {"base": "4bit", "quantized": list(components) if isinstance(components, list) else None, "from": where}
    return {"base": "unquantized", "quantized": [], "from": where}


def replace_into(staging: Path, target: Path) -> None:
    """Move every entry of `staging` into `target`, one rename each."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in staging.iterdir():
        dest = target / entry.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(entry, dest)


def _full_tensors(applied: Any, trained: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trainable tensors that the peft adapter does not hold, under their base-model names:
    every trainable tensor when no adapter was injected, loose parameters otherwise. `trained`:
    the trained tensors gathered from every process (a distributed run), else the model's own."""
    from vlmsurgeon.recipe.freeze import base_name

    peft = hasattr(applied.model, "peft_config")
    loose = set(applied.loose_trainable)
    out = {}
    params = (
        trained.items()
        if trained is not None
        else ((n, p) for n, p in applied.model.named_parameters() if p.requires_grad)
    )
    for name, param in params:
        base = base_name(name)
        if not peft or base in loose:
            out[base] = param.detach().to("cpu").contiguous()
    return out


def write_run_outputs(
    run_dir: Path,
    applied: Any,
    processor: Any,
    *,
    opts: Any,
    source: Any,
    data: Any,
    data_report: Any,
    quantized: bool,
    global_step: int,
    final_loss: float | None,
    train_loss: float | None,
    world_size: int = 1,
    compute_dtype: str = "fp32",
    gradients: dict[str, Any] | None = None,
    resumed: list[dict[str, Any]] | None = None,
    trained: dict[str, Any] | None = None,
) -> None:
    from safetensors.torch import save_file

    run_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".final-", dir=run_dir) as tmp:
        staging = Path(tmp)
        artifacts: dict[str, str] = {"processor": PROCESSOR_DIR}
        quantize = "4bit-nf4-double-quant" if quantized else "none"
        if hasattr(applied.model, "peft_config"):
            applied.model.save_pretrained(staging / ADAPTER_DIR, state_dict=trained)
            artifacts["adapter"] = ADAPTER_DIR
            # the adapter folder, copied out of the run, still says what its base was
            four_bit = applied.preset.model_dump(mode="json")["quantize"] if quantized else []
            own = {
                "base": base_record(source),
                "quantize": quantize,
                "compute_dtype": compute_dtype,
                "quantized_components": four_bit,
            }
            (staging / ADAPTER_DIR / "vlmsurgeon.json").write_text(
                json.dumps({"vlmsurgeon_adapter": own, "versions": versions()}, indent=2) + "\n"
            )
        tensors = _full_tensors(applied, trained)
        if tensors:
            save_file(tensors, str(staging / COMPONENTS_FILE), metadata={"format": "pt"})
            artifacts["trained_components"] = COMPONENTS_FILE
        processor.save_pretrained(staging / PROCESSOR_DIR)
        record = {
            "vlmsurgeon": __version__,
            "base": base_record(source),
            "preset": applied.preset.model_dump(mode="json"),
            "quantize": quantize,
            "report": {
                name: {
                    "params": s.total,
                    "trainable": s.trainable,
                    "mode": s.mode,
                    "how": s.describe,
                    "lora_modules": s.lora_modules,
                    "full_roots": s.full_roots,
                }
                for name, s in applied.components.items()
            },
            "trainable_params": applied.trainable,
            "modules_to_save": applied.modules_to_save,
            "loose_trainable": applied.loose_trainable,
            "data": {
                "path": str(data.path),
                "sha256": data.sha256,
                **data_report.record(),
                "skipped_bad_rows": data_report.skipped,
                "processor": data_report.processor,
            },
            "training": {
                "global_step": global_step,
                "final_loss": final_loss,
                "train_loss": train_loss,
                "world_size": world_size,
                "compute_dtype": compute_dtype,
                **opts.model_dump(exclude={"model", "output", "data"}),
            },
            "gradients_first_step": gradients,
            "resumed": resumed or [],
            "artifacts": artifacts,
            "versions": versions(),
        }
        (staging / "vlmsurgeon.json").write_text(json.dumps(record, indent=2) + "\n")
        honour_umask(staging)  # tempfile made it 0700, and some writers 0600: give the user's modes
        replace_into(staging, run_dir)
