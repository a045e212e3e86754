"""What a run directory or a bare peft adapter changed, read from disk and checked (a run
must hold everything its vlmsurgeon.json records), and the base checkpoint it changed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmsurgeon.errors import BadInput, how_to_set
from vlmsurgeon.model.sources import read_header, read_json

from .provenance import ADAPTER_DIR, COMPONENTS_FILE, json_or_empty

_INSIDE = {"adapter": "adapter_model.safetensors"}  # the file a recorded artifact folder must hold


@dataclass
class Trained:
    """What a run changed, by in-memory parameter name."""

    base: Path
    run_dir: Path | None
    adapter_dir: Path | None
    lora: dict[str, tuple[Any, Any, float]] = field(default_factory=dict)  # module -> (A, B, scale)
    full: dict[str, Any] = field(default_factory=dict)  # parameter -> tensor
    quantized_components: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    adapter_config: dict[str, Any] = field(default_factory=dict)


def _pattern_value(patterns: dict[str, Any], key: str, default: Any) -> Any:
    for pattern, value in patterns.items():  # peft's rule: the pattern matches a key suffix
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default


def base_hint() -> str:
    """How to point at another base: `--base` where the running command has it (merge); diff has
    not, so its hint says what to fix instead."""
    how = how_to_set("base", "--base")
    if how:
        return f"{how} DIR, a checkpoint saved with save_pretrained"
    return "use checkpoints saved with save_pretrained; a run's base is base.reference in its vlmsurgeon.json"


def load_trained(source: Path, base: str | None) -> Trained:
    """A run directory (vlmsurgeon.json) or a bare peft adapter directory. What a run records
    must be on disk: a run without its adapter would pass for its base."""
    run_dir, adapter_dir, record = _locate(source)
    config = read_json(adapter_dir / "adapter_config.json") if adapter_dir else {}
    base_ref = base or record_field(record, "base", "reference") or config.get("base_model_name_or_path")
    if not base_ref or not Path(base_ref).is_dir():
        raise BadInput(f"base model '{base_ref}' is not a local directory", base_hint())
    quantized = str(record.get("quantize", "none")).startswith("4bit")
    quantized_components = list(record_field(record, "preset", "quantize") or []) if quantized else []
    trained = Trained(
        Path(base_ref),
        run_dir,
        adapter_dir,
        record=record,
        adapter_config=config,
        quantized_components=quantized_components,
    )
    if adapter_dir:
        _read_adapter(trained, adapter_dir)
    if run_dir and (run_dir / COMPONENTS_FILE).is_file():
        trained.full.update(load_tensors(run_dir / COMPONENTS_FILE))
    return trained


def record_field(record: dict[str, Any], *keys: str) -> Any:
    """record[k1][k2]…, or None where a level is missing or not an object."""
    for key in keys:
        record = record.get(key) if isinstance(record, dict) else None
    return record


def run_base(source: Path) -> str | None:
    """The base a run directory records, as a path that works from here; None when SOURCE is not
    a run (its reader names what it is). Runs older than absolute base paths: the absolute path
    their run.json holds, else the recorded path from the current directory or the hub cache."""
    from vlmsurgeon.model.sources import cached_file, looks_like_hub_id

    path = source / "vlmsurgeon.json"
    record = read_json(path) if path.is_file() else {}
    reference = record_field(record, "base", "reference")
    if not isinstance(reference, str) or not reference or Path(reference).expanduser().is_absolute():
        return reference or None
    candidates = [record_field(json_or_empty(source / "run.json"), "inputs", "base", "reference")]
    cwd = record_field(record, "base", "cwd")
    candidates += [str(Path(cwd) / reference) if isinstance(cwd, str) else None, reference]
    for candidate in candidates:
        if isinstance(candidate, str) and Path(candidate).expanduser().is_dir():
            return candidate
    if looks_like_hub_id(reference):
        config = cached_file(reference, "config.json", record_field(record, "base", "revision"))
        if config is not None:
            return str(config.parent)
    raise BadInput(
        f"run '{source}' records its base as '{reference}', relative to where it was trained, "
        f"and that is not a directory from here ({Path.cwd()})",
        f"{base_hint()}, or run from the directory finetune ran in",
    )


def _locate(source: Path) -> tuple[Path | None, Path | None, dict[str, Any]]:
    """(run dir, adapter dir, run record) of a run directory or a bare peft adapter."""
    if not source.exists():
        raise BadInput(
            f"'{source}': no such file or directory",
            "point at a `vlmsurgeon finetune -o` directory or a folder with adapter_config.json",
        )
    record = read_json(source / "vlmsurgeon.json") if (source / "vlmsurgeon.json").is_file() else {}
    if "vlmsurgeon_merge" in record:
        raise BadInput(
            f"'{source}' is a merged export: its changes are already in its weights",
            "merge the run directory or adapter it was made from",
        )
    if "base" in record:  # a finetune run (adapter-subset exports carry a record too, without "base")
        missing = missing_artifacts(source, record, ("adapter", "trained_components"))
        if missing:
            raise BadInput(
                f"run '{source}' lacks {', '.join(map(repr, missing))}, which its vlmsurgeon.json records",
                "restore it from where the run was trained, or re-run finetune",
            )
        adapter = source / ADAPTER_DIR
        return source, adapter if adapter.is_dir() else None, record
    if (source / "adapter_config.json").is_file():
        return None, source, {}
    raise BadInput(
        f"'{source}' is neither a run directory nor a peft adapter",
        "point at a `vlmsurgeon finetune -o` directory or a folder with adapter_config.json",
    )


def missing_artifacts(run: Path, record: dict[str, Any], kinds: tuple[str, ...]) -> list[str]:
    """What the run's record says it wrote (adapter, trained_components, processor) that is
    not on disk, as paths relative to the run."""
    artifacts = record.get("artifacts")
    if not isinstance(artifacts, dict):  # records older than "artifacts": LoRA implies an adapter
        lora = any(isinstance(c, dict) and c.get("lora_modules") for c in (record.get("report") or {}).values())
        artifacts = {"adapter": ADAPTER_DIR} if lora or record.get("modules_to_save") else {}
    missing = []
    for kind in kinds:
        name = artifacts.get(kind)
        if not isinstance(name, str):
            continue
        if not (run / name).exists():
            missing.append(name)
        elif kind in _INSIDE and not (run / name / _INSIDE[kind]).is_file():
            missing.append(f"{name}/{_INSIDE[kind]}")
    return missing


def _read_adapter(trained: Trained, adapter_dir: Path) -> None:
    """LoRA pairs (with peft's scale) and modules_to_save tensors of a peft adapter."""
    config = trained.adapter_config
    if config.get("use_dora"):
        raise BadInput("DoRA adapters are not supported by merge", "train with plain LoRA")
    path = adapter_dir / "adapter_model.safetensors"
    tensors = {k.removeprefix("base_model.model."): v for k, v in load_tensors(path).items()}
    for name, tensor in tensors.items():
        if ".lora_A." in name:
            module = name.split(".lora_A.")[0]
            b = tensors.get(f"{module}.lora_B.weight")
            rank = tensor.shape[0]
            if b is None or b.dim() != 2 or b.shape[1] != rank:
                raise BadInput(
                    f"{path}: {module}.lora_A.weight has no matching lora_B.weight",
                    "re-save the adapter (peft save_pretrained)",
                )
            alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", rank))
            scale = alpha / (rank**0.5 if config.get("use_rslora") else rank)
            trained.lora[module] = (tensor, b, float(scale))
        elif ".lora_" not in name:
            trained.full[name] = tensor


def load_tensors(path: Path) -> dict[str, Any]:
    """Every tensor of a small safetensors file (adapter, trained components); a damaged file
    is named instead of surfacing as safetensors' own error."""
    from safetensors.torch import load_file

    read_header(path)  # names a missing, truncated or malformed file, and unknown dtypes
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError: what the header check cannot see
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(f"{path}: corrupt safetensors file ({detail})", "re-download or re-save the file") from exc


def base_files(base: Path) -> list[Path]:
    from vlmsurgeon.model.sources import local_weight_files

    files = local_weight_files(base)
    if not files:
        found = " (only *.bin)" if any(base.glob("*.bin")) else ""
        raise BadInput(f"checkpoint '{base}' has no *.safetensors weights{found}", base_hint())
    return files


def key_map(base: Path, disk_keys: list[str]) -> tuple[dict[str, str], dict[str, Any], Any]:
    """On-disk key -> in-memory parameter name (transformers renames legacy layouts at load),
    plus the meta state dict and the meta model."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    from vlmsurgeon.model.inspection import meta_model

    _, model = meta_model(str(base))
    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    meta = dict(model.state_dict())
    mapping = {k: rename_source_key(k, renamings, converters, model.base_model_prefix, meta)[0] for k in disk_keys}
    return mapping, meta, model


def exact_adapter_state(model: Any, path: Path, adapter: str = "default") -> int:
    """Copy every tensor of a peft adapter file into a PeftModel by exact name (LoRA pairs and
    modules_to_save copies). peft converts saved keys with transformers' renamings and skips the
    ones that come out wrong without a word (Mistral Large 3's `shared_experts` became
    `mlp.mlp.shared_experts`: its LoRA stayed at its initial values). Returns the count copied."""
    import torch

    params = dict(model.named_parameters())
    copied = 0
    for key, value in load_tensors(path).items():
        parts = key.split(".")
        saved = [".".join([*parts[:i], "modules_to_save", adapter, *parts[i:]]) for i in range(len(parts) - 1, 0, -1)]
        places = [
            key.replace(".lora_A.", f".lora_A.{adapter}.").replace(".lora_B.", f".lora_B.{adapter}."),
            *saved,
            key,
        ]
        place = next((p for p in places if p in params), None)
        if place is None:
            raise BadInput(
                f"{path}: tensor {key} has no place in the model", "pass the base this adapter was trained on"
            )
        if tuple(params[place].shape) != tuple(value.shape):
            raise BadInput(
                f"{path}: tensor {key} {tuple(value.shape)} does not fit the model ({tuple(params[place].shape)})",
                "pass the base this adapter was trained on",
            )
        with torch.no_grad():
            params[place].copy_(value)
        copied += 1
    return copied
