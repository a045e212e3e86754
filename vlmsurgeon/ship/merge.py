"""`merge`: fold a run's LoRA adapters and fully trained components into the base checkpoint,
streaming one safetensors shard at a time, and export a checkpoint plain transformers loads."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vlmsurgeon.errors import BadInput
from vlmsurgeon.fsutil import clean_leftovers, honour_umask, publish
from vlmsurgeon.model.sources import read_header, read_json

from .provenance import PROCESSOR_DIR, adapter_origin, versions
from .shards import DTYPES, ITEMSIZE, TensorReader, numel, shard_plan, write_shards
from .trained import Trained, base_files, key_map, load_tensors, load_trained, missing_artifacts, record_field, run_base

TARGETS = ("dequantized", "original")
_WEIGHT_FILES = re.compile(r"(\.safetensors|\.bin|\.safetensors\.index\.json|\.bin\.index\.json)$")
STAGING = ".{name}.merge-*"  # the export being built beside OUT, and the old OUT while it is swapped


def check_fit(trained: Trained, meta: dict[str, Any]) -> None:
    """An adapter made for another base: name the first tensor that does not fit."""
    for module, (a, b, _) in sorted(trained.lora.items()):
        weight = meta.get(f"{module}.weight")
        if weight is None:
            raise BadInput(
                f"adapter tensor {module}.lora_A.weight has no base weight {module}.weight",
                "this adapter was made for another base model; pass the right --base",
            )
        if tuple(weight.shape) != (b.shape[0], a.shape[1]):
            raise BadInput(
                f"adapter tensor {module}.lora_B @ lora_A is {b.shape[0]}×{a.shape[1]}, base "
                f"{module}.weight is {tuple(weight.shape)}",
                "pass the base this adapter was trained on",
            )
    for name, tensor in sorted(trained.full.items()):
        if name not in meta or tuple(meta[name].shape) != tuple(tensor.shape):
            raise BadInput(
                f"trained tensor {name} {tuple(tensor.shape)} does not fit the base "
                f"({tuple(meta[name].shape) if name in meta else 'absent'})",
                "pass the base this run was trained on",
            )


def nf4_roundtrip(weight: Any, dtype: Any) -> Any:
    """The weight as the QLoRA run saw it: quantized to NF4 (blocksize 64, double quant) and
    dequantized, exactly as bitsandbytes did when the model was loaded for training."""
    import bitsandbytes.functional as F

    packed, state = F.quantize_4bit(weight.to(dtype), blocksize=64, quant_type="nf4", compress_statistics=True)
    return F.dequantize_4bit(packed, state).float()


@dataclass
class MergePlan:
    target: str | None = None  # None: dequantized where the base is known to be 4-bit, else original
    dtype: str = "bf16"
    only: list[str] | None = None
    max_shard_bytes: int = 5 * 10**9
    compute_dtype: str = "float32"


def merged_tensors(
    trained: Trained,
    order: list[tuple[Path, str]],
    plan: MergePlan,
    keys: dict[str, str],
    component: Any,
    four_bit: set[str],
) -> Iterator[tuple[str, Any]]:
    """(on-disk name, merged tensor) for every base tensor, in `order`, one input file open at
    a time and one tensor in hand. `four_bit`: the modules training held in 4-bit
    (freeze.four_bit_modules)."""
    import torch

    out_dtype = getattr(torch, DTYPES[plan.dtype])
    compute = getattr(torch, plan.compute_dtype)
    files = list(dict.fromkeys(path for path, _ in order))
    for path in files:
        with TensorReader(path) as handle:
            for disk_key in (k for p, k in order if p == path):
                tensor = handle.get(disk_key)
                name = keys[disk_key]
                module = name.removesuffix(".weight")
                comp = component(name)
                allowed = plan.only is None or comp in plan.only
                if allowed and name.endswith(".weight") and module in trained.lora:
                    a, b, scale = trained.lora[module]
                    weight = tensor.float()
                    if plan.target == "dequantized" and module in four_bit:
                        weight = nf4_roundtrip(tensor, compute)
                    tensor = weight + scale * (b.float() @ a.float())  # fp32, rounded once below
                elif allowed and name in trained.full:
                    tensor = trained.full[name]
                if tensor.is_floating_point():
                    tensor = tensor.to(out_dtype)
                yield disk_key, tensor.contiguous()


def copy_side_files(trained: Trained, out: Path, dtype: str) -> None:
    """Config (with the exported dtype, without quantization), generation config, and the
    processor / tokenizer / chat-template files (the run's, else the base's)."""
    config = read_json(trained.base / "config.json")
    config.pop("quantization_config", None)
    config["dtype"] = DTYPES[dtype]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    sources = (
        [trained.run_dir / PROCESSOR_DIR] if trained.run_dir and (trained.run_dir / PROCESSOR_DIR).is_dir() else []
    )
    sources.append(trained.base)
    for source in reversed(sources):  # the run's files win
        for file in source.iterdir():
            if (
                file.is_file()
                and file.name != "config.json"
                and not _WEIGHT_FILES.search(file.name)
                and file.name not in ("vlmsurgeon.json", "README.md")
            ):
                shutil.copy2(file, out / file.name)


def check_output(out: Path, force: bool) -> None:
    """-o must be new, or an existing folder with --force. A file there is never replaced: the
    export is a folder, and a file at -o is likelier a slip than an earlier export."""
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise BadInput(
            f"output '{out}' is a file, not a folder", "choose a folder path for -o; --force replaces only a folder"
        )
    if out.exists() and not force:
        raise BadInput(f"output '{out}' exists", "pass --force to replace it, or choose another -o")


def stage(out: Path, inputs: tuple[Path | None, ...]) -> Path:
    """The staging folder beside OUT, once what a killed merge left there is removed. OUT may
    not hold the merge's own inputs: replacing it would delete them."""
    target = out.resolve()
    for path in filter(None, inputs):
        if target == path.resolve() or target in path.resolve().parents:
            raise BadInput(f"output '{out}' holds the merge's input '{path}'", "choose another -o")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(out, (STAGING,))
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.merge-", dir=out.parent))  # matches STAGING
    except OSError as exc:
        folder = next(p for p in (out.parent, *out.parent.parents) if p.exists())
        if not folder.is_dir():
            raise BadInput(f"output '{out}': '{folder}' is a file, not a folder", "choose another -o") from exc
        raise BadInput(
            f"cannot write the output in '{folder}' ({exc.strerror})", "choose another -o, or make that folder writable"
        ) from exc


def commit(staging: Path, out: Path, force: bool) -> None:
    """Give the export the modes the umask asks for and rename it into place. A replaced OUT is
    first renamed to a staging name, so a kill between the renames leaves nothing the next
    merge does not remove."""
    check_output(out, force)  # OUT may have appeared while the merge ran
    if not out.exists():
        publish(staging, out)
        return
    honour_umask(staging)
    old = staging.with_name(staging.name + "-old")
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)  # the previous export goes back rather than into a hidden name
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def merge(
    source: Path, out: Path, *, base: str | None = None, plan: MergePlan | None = None, force: bool = False
) -> dict[str, Any]:
    """Stream the base shards through the adapter into OUT (built beside it, renamed at the end)."""
    from vlmsurgeon.recipe.freeze import _component_map, _owner, classified_tree

    plan = plan or MergePlan()
    check_output(out, force)
    trained, origin = load_source(source, base)
    _require_changes(source, trained)
    located = _base_layout(base_files(trained.base))
    layout = [(k, shape, dtype) for _, k, shape, dtype in located]
    keys, meta, model = key_map(trained.base, [k for k, _, _ in layout])
    check_fit(trained, meta)
    component_of = _component_map(classified_tree(model, model.config.model_type))
    plan = _resolve(plan, trained, origin, lambda n: _owner(n, component_of))
    counts = _selected(trained, plan.only, lambda n: _owner(n, component_of))
    changed = set(trained.full) | {f"{m}.weight" for m in trained.lora}
    missing = sorted(changed - set(keys.values()))
    if missing:
        raise BadInput(
            f"trained tensor {missing[0]} is not stored in the base checkpoint",
            "merging into converted (fused) tensors is not supported",
        )
    staging = stage(out, (source, trained.base))
    try:
        from vlmsurgeon.recipe.freeze import four_bit_modules

        tensors = merged_tensors(
            trained,
            [(p, k) for p, k, _, _ in located],
            plan,
            keys,
            lambda n: _owner(n, component_of),
            four_bit_modules(trained, model),
        )
        weight_map = write_shards(tensors, shard_plan(layout, plan.dtype, plan.max_shard_bytes), staging)
        copy_side_files(trained, staging, plan.dtype)
        summary = _provenance(trained, plan, staging, weight_map, counts)
        summary["adapter_base"] = None if trained.run_dir else origin
        commit(staging, out, force)
    except BaseException:
        _remove(staging)
        raise
    return summary


def load_source(source: Path, base: str | None) -> tuple[Trained, dict[str, Any]]:
    """The run or bare adapter, its base found from any directory, and what a bare adapter's own
    files say about the base it trained on (provenance.adapter_origin; for a run, its record)."""
    trained = load_trained(source, base or run_base(source))
    if trained.run_dir is not None:
        return trained, {
            "base": "4bit" if trained.quantized_components else "unquantized",
            "quantized": trained.quantized_components,
            "from": str(trained.run_dir),
        }
    assert trained.adapter_dir is not None
    origin = adapter_origin(trained.adapter_dir)
    trained.quantized_components = list(origin["quantized"] or [])
    return trained, origin


def _resolve(plan: MergePlan, trained: Trained, origin: dict[str, Any], owner: Callable[[str], str]) -> MergePlan:
    """--target as given, else dequantized where the base is known to be 4-bit. A 4-bit base whose
    quantized components are not recorded (or --target dequantized on an adapter of unknown origin):
    the components its LoRA modules sit in, as a QLoRA base quantizes the linear layers LoRA wraps."""
    four_bit = origin["base"] == "4bit" or (origin["base"] == "unknown" and plan.target == "dequantized")
    if four_bit and not trained.quantized_components:
        trained.quantized_components = sorted({owner(f"{m}.weight") for m in trained.lora})
    target = (plan.target or "dequantized") if trained.quantized_components else "original"
    compute = record_field(trained.record, "training", "compute_dtype") or origin.get("compute_dtype") or "fp32"
    return replace(
        plan, target=target, compute_dtype={"bf16": "bfloat16", "fp32": "float32"}.get(str(compute), "float32")
    )


def adapter_warning(source: Path, summary: dict[str, Any]) -> str | None:
    """One line for a bare adapter merged without its run: which weights it went into, and what
    --target chooses, unless its files say its base was not quantized."""
    origin = summary.get("adapter_base")
    if not origin or origin["base"] == "unquantized":
        return None
    choice = (
        "--target dequantized merges into the NF4-dequantized weights it was trained against "
        "(reproduces the model as trained); --target original into the unquantized weights "
        "(differs from training by the 4-bit rounding error, often more than the adapter's change)"
    )
    if origin["base"] == "4bit":
        return (
            f"adapter '{source}' was trained on a 4-bit NF4 base (says {origin['from']}): merged into the "
            f"{summary['target']} weights. {choice}"
        )
    return (
        f"cannot tell whether adapter '{source}' was trained on a 4-bit (QLoRA) base: its files do not "
        f"say; merged into the {summary['target']} weights. {choice}"
    )


def _require_changes(source: Path, trained: Trained) -> None:
    """Nothing to merge would export the plain base under a trained model's name."""
    if not trained.lora and not trained.full:
        raise BadInput(
            f"'{source}' holds no LoRA modules and no trained tensors: nothing to merge",
            "point at a run or adapter that trained something",
        )
    missing = missing_artifacts(trained.run_dir, trained.record, ("processor",)) if trained.run_dir else []
    if missing:  # the base's processor files may not be the ones the run trained with
        raise BadInput(
            f"run '{source}' lacks {', '.join(map(repr, missing))}, which its vlmsurgeon.json records",
            "restore it from where the run was trained",
        )


def _base_layout(files: list[Path]) -> list[tuple[Path, str, tuple[int, ...], str]]:
    """(file, on-disk name, shape, dtype) of every base tensor, each in a dtype merge writes and
    spanning the bytes its shape needs (the streaming reader takes the header's word for it)."""
    located = []
    for path in files:
        for key, entry in read_header(path).items():
            if key == "__metadata__":
                continue
            shape, dtype, (begin, end) = tuple(entry["shape"]), entry["dtype"], entry["data_offsets"]
            if dtype not in ITEMSIZE:
                raise BadInput(
                    f"{path}: tensor {key} is stored as {dtype}, which merge does not handle",
                    "merge into a checkpoint saved in bf16, fp16 or fp32",
                )
            if end - begin != ITEMSIZE[dtype] * numel(shape):
                raise BadInput(
                    f"{path}: corrupt safetensors header ({key} spans {end - begin} bytes, its "
                    f"shape {list(shape)} in {dtype} needs {ITEMSIZE[dtype] * numel(shape)})",
                    "re-download or re-save the file",
                )
            located.append((path, key, shape, dtype))
    return located


def _selected(trained: Trained, only: list[str] | None, owner: Callable[[str], str]) -> dict[str, dict[str, int]]:
    """LoRA modules and trained tensors that --only keeps, by component; keeping none is an
    error, not a copy of the base."""
    lora = [owner(f"{m}.weight") for m in trained.lora]
    full = [owner(n) for n in trained.full]
    kept = sorted({c for c in lora + full if only is None or c in only})
    if kept:
        return {c: {"lora_modules": lora.count(c), "full_tensors": full.count(c)} for c in kept}
    changed = sorted({owner(n) for n in [*trained.full, *(f"{m}.weight" for m in trained.lora)]})
    raise BadInput(
        f"--only {','.join(only or [])}: nothing was trained there (the run changed {', '.join(changed)})",
        f"--only {','.join(changed)}",
    )


def _provenance(
    trained: Trained, plan: MergePlan, out: Path, weight_map: dict[str, str], counts: dict[str, dict[str, int]]
) -> dict[str, Any]:
    lora = sum(c["lora_modules"] for c in counts.values())
    full = sum(c["full_tensors"] for c in counts.values())
    record = {
        "vlmsurgeon_merge": {
            "source": str(trained.run_dir or trained.adapter_dir),
            "base": str(trained.base),
            "target": plan.target,
            "quantized_components": trained.quantized_components,
            "dtype": plan.dtype,
            "only": plan.only,
            "components": counts,
            "lora_modules_merged": lora,
            "full_tensors": full,
            "shards": len(set(weight_map.values())),
        },
        "run": trained.record or None,
        "versions": versions(),
    }
    (out / "vlmsurgeon.json").write_text(json.dumps(record, indent=2) + "\n")
    preset = (trained.record.get("preset") or {}).get("name", "adapter")
    (out / "README.md").write_text(
        f"# Merged with vlmsurgeon\n\nBase: `{trained.base}`  \nTraining: preset `{preset}`, "
        f"{lora} LoRA modules and {full} fully trained tensors merged into "
        f"the {record['vlmsurgeon_merge']['target']} weights, exported as {plan.dtype}.\n\n"
        "Load with `AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained`.\n"
        "Provenance: `vlmsurgeon.json`.\n"
    )
    return record["vlmsurgeon_merge"]


def export_adapter(
    source: Path, out: Path, only: list[str], *, base: str | None = None, force: bool = False
) -> dict[str, Any]:
    """A subset of the adapter (e.g. LM-only LoRA for serving engines that take LoRA on the
    language model only), written atomically beside OUT."""
    from safetensors.torch import save_file

    from vlmsurgeon.model.inspection import meta_model
    from vlmsurgeon.recipe.freeze import _component_map, _owner, classified_tree

    check_output(out, force)
    trained, origin = load_source(source, base)
    if not trained.adapter_dir:
        raise BadInput(f"'{source}' has no peft adapter to export", "merge it instead (without --adapter-only)")
    _, model = meta_model(str(trained.base))
    component_of = _component_map(classified_tree(model, model.config.model_type))
    tensors = load_tensors(trained.adapter_dir / "adapter_model.safetensors")
    keep = {
        k: v
        for k, v in tensors.items()
        if _owner(k.removeprefix("base_model.model.").split(".lora_")[0], component_of) in only
    }
    modules = sorted({k.removeprefix("base_model.model.").split(".lora_")[0] for k in keep if ".lora_" in k})
    config = dict(trained.adapter_config)
    config["target_modules"] = modules
    config["modules_to_save"] = [
        m for m in (config.get("modules_to_save") or []) if _owner(m, component_of) in only
    ] or None
    if not keep:
        raise BadInput(f"--only {','.join(only)}: the adapter holds nothing there", "choose other components")
    staging = stage(out, (source, trained.base))
    try:
        save_file(keep, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        summary = {"source": str(source), "only": only, "lora_modules": len(modules), "tensors": len(keep)}
        # the subset keeps what its base was, for a later merge of it (adapter_origin reads this)
        known = (
            {
                "quantize": {"4bit": "4bit-nf4-double-quant", "unquantized": "none"}[origin["base"]],
                "quantized_components": origin["quantized"],
            }
            if origin["base"] != "unknown"
            else {}
        )
        (staging / "vlmsurgeon.json").write_text(
            json.dumps({"vlmsurgeon_adapter_subset": {**summary, **known}, "versions": versions()}, indent=2) + "\n"
        )
        commit(staging, out, force)
    except BaseException:
        _remove(staging)
        raise
    return summary
