"""`merge`: fold a run's LoRA adapters and fully trained components into the base checkpoint,
streaming one safetensors shard at a time, and export a checkpoint plain transformers loads."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import BadInput
from .provenance import ADAPTER_DIR, COMPONENTS_FILE, PROCESSOR_DIR, versions

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
TARGETS = ("dequantized", "original")
_WEIGHT_FILES = re.compile(r"(\.safetensors|\.bin|\.safetensors\.index\.json|\.bin\.index\.json)$")


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


def load_trained(source: Path, base: str | None) -> Trained:
    """A run directory (vlmsurgeon.json) or a bare peft adapter directory."""
    from safetensors.torch import load_file

    record: dict[str, Any] = {}
    if (source / "vlmsurgeon.json").is_file():
        record = json.loads((source / "vlmsurgeon.json").read_text())
        adapter_dir = source / ADAPTER_DIR if (source / ADAPTER_DIR).is_dir() else None
        run_dir: Path | None = source
    elif (source / "adapter_config.json").is_file():
        adapter_dir, run_dir = source, None
    else:
        raise BadInput(f"'{source}' is neither a run directory nor a peft adapter",
                       "point at a `vlmsurgeon finetune -o` directory or a folder with adapter_config.json")
    config = json.loads((adapter_dir / "adapter_config.json").read_text()) if adapter_dir else {}
    base_ref = base or record.get("base", {}).get("reference") or config.get("base_model_name_or_path")
    if not base_ref or not Path(base_ref).is_dir():
        raise BadInput(f"base model '{base_ref}' is not a local directory", "pass --base DIR")
    trained = Trained(Path(base_ref), run_dir, adapter_dir, record=record, adapter_config=config,
                      quantized_components=list(record.get("preset", {}).get("quantize", []))
                      if str(record.get("quantize", "none")).startswith("4bit") else [])
    if adapter_dir:
        if config.get("use_dora"):
            raise BadInput("DoRA adapters are not supported by merge", "train with plain LoRA")
        tensors = {k.removeprefix("base_model.model."): v
                   for k, v in load_file(str(adapter_dir / "adapter_model.safetensors")).items()}
        for name, tensor in tensors.items():
            if ".lora_A." in name:
                module = name.split(".lora_A.")[0]
                b = tensors[f"{module}.lora_B.weight"]
                rank = tensor.shape[0]
                alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", rank))
                scale = alpha / (rank ** 0.5 if config.get("use_rslora") else rank)
                trained.lora[module] = (tensor, b, float(scale))
            elif ".lora_" not in name:
                trained.full[name] = tensor
    if run_dir and (run_dir / COMPONENTS_FILE).is_file():
        trained.full.update(load_file(str(run_dir / COMPONENTS_FILE)))
    return trained


def base_files(base: Path) -> list[Path]:
    from .sources import local_weight_files

    files = local_weight_files(base)
    if not files:
        raise BadInput(f"base '{base}' has no *.safetensors weights", "point --base at a saved checkpoint")
    return files


def key_map(base: Path, disk_keys: list[str]) -> tuple[dict[str, str], dict[str, Any], Any]:
    """On-disk key -> in-memory parameter name (transformers renames legacy layouts at load),
    plus the meta state dict and the meta model."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    from .inspection import meta_model

    _, model = meta_model(str(base))
    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    meta = dict(model.state_dict())
    mapping = {k: rename_source_key(k, renamings, converters, model.base_model_prefix, meta)[0] for k in disk_keys}
    return mapping, meta, model


def check_fit(trained: Trained, meta: dict[str, Any]) -> None:
    """An adapter made for another base: name the first tensor that does not fit."""
    for module, (a, b, _) in sorted(trained.lora.items()):
        weight = meta.get(f"{module}.weight")
        if weight is None:
            raise BadInput(f"adapter tensor {module}.lora_A.weight has no base weight {module}.weight",
                           "this adapter was made for another base model; pass the right --base")
        if tuple(weight.shape) != (b.shape[0], a.shape[1]):
            raise BadInput(f"adapter tensor {module}.lora_B @ lora_A is {b.shape[0]}×{a.shape[1]}, base "
                           f"{module}.weight is {tuple(weight.shape)}", "pass the base this adapter was trained on")
    for name, tensor in sorted(trained.full.items()):
        if name not in meta or tuple(meta[name].shape) != tuple(tensor.shape):
            raise BadInput(f"trained tensor {name} {tuple(tensor.shape)} does not fit the base "
                           f"({tuple(meta[name].shape) if name in meta else 'absent'})",
                           "pass the base this run was trained on")


def nf4_roundtrip(weight: Any, dtype: Any) -> Any:
    """The weight as the QLoRA run saw it: quantized to NF4 (blocksize 64, double quant) and
    dequantized, exactly as bitsandbytes did when the model was loaded for training."""
    import bitsandbytes.functional as F

    packed, state = F.quantize_4bit(weight.to(dtype), blocksize=64, quant_type="nf4", compress_statistics=True)
    return F.dequantize_4bit(packed, state).float()


@dataclass
class MergePlan:
    target: str = "dequantized"
    dtype: str = "bf16"
    only: list[str] | None = None
    max_shard_bytes: int = 5 * 10**9
    compute_dtype: str = "float32"


def merged_tensors(trained: Trained, order: list[tuple[Path, str]], plan: MergePlan,
                   keys: dict[str, str], component: Any) -> Iterator[tuple[str, Any]]:
    """(on-disk name, merged tensor) for every base tensor, in `order`, one input file open at
    a time and one tensor in hand."""
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
                    if plan.target == "dequantized" and comp in trained.quantized_components:
                        weight = nf4_roundtrip(tensor, compute)
                    tensor = weight + scale * (b.float() @ a.float())  # fp32, rounded once below
                elif allowed and name in trained.full:
                    tensor = trained.full[name]
                if tensor.is_floating_point():
                    tensor = tensor.to(out_dtype)
                yield disk_key, tensor.contiguous()


class TensorReader:
    """Reads one tensor at a time with plain reads (safe_open maps the whole file, and every
    page it touches stays in the process's resident set until the file is closed)."""

    def __init__(self, path: Path) -> None:
        from .sources import read_header

        self.header = read_header(path)
        self.file = path.open("rb")
        self.start = 8 + int.from_bytes(self.file.read(8), "little")

    def get(self, name: str) -> Any:
        import torch

        entry = self.header[name]
        begin, end = entry["data_offsets"]
        buffer = bytearray(end - begin)
        self.file.seek(self.start + begin)
        self.file.readinto(buffer)
        dtype = getattr(torch, _TORCH_DTYPES[entry["dtype"]])
        if not buffer:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(entry["shape"])

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.file.close()


_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
_ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_FLOATS = ("F32", "BF16", "F16", "F64")
_TORCH_DTYPES = {v: k for k, v in _ST_DTYPES.items()}


def shard_plan(layout: list[tuple[str, tuple[int, ...], str]], out_dtype: str, max_bytes: int) -> list[list[tuple[str, tuple[int, ...], str]]]:
    """Group (name, shape, stored dtype) into output shards by size, from headers alone."""
    target = _ST_DTYPES[DTYPES[out_dtype]]
    shards: list[list[tuple[str, tuple[int, ...], str]]] = [[]]
    size = 0
    for name, shape, dtype in layout:
        dtype = target if dtype in _FLOATS else dtype
        nbytes = _ITEMSIZE[dtype] * _numel(shape)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape, dtype))
        size += nbytes
    return shards


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def write_shards(tensors: Iterator[tuple[str, Any]], plan: list[list[tuple[str, tuple[int, ...], str]]],
                 out: Path) -> dict[str, str]:
    """Write the planned shards tensor by tensor: each file's header is known in advance, so
    no more than one tensor is held at a time (safetensors' save_file would buffer a shard)."""
    import struct

    weight_map: dict[str, str] = {}
    total = len(plan)
    for i, entries in enumerate(plan, start=1):
        final = "model.safetensors" if total == 1 else f"model-{i:05d}-of-{total:05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, dtype in entries:
            nbytes = _ITEMSIZE[dtype] * _numel(shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        part = out / f".part-{i:05d}.safetensors"
        with part.open("wb") as fh:
            fh.write(struct.pack("<Q", len(raw)) + raw)
            for name, shape, dtype in entries:
                key, tensor = next(tensors)
                if key != name or tuple(tensor.shape) != tuple(shape) or _ST_DTYPES[str(tensor.dtype)[6:]] != dtype:
                    raise RuntimeError(f"merge: {key} does not match the planned {name} {shape} {dtype}")
                fh.write(memoryview(tensor.contiguous().reshape(-1).view(torch_uint8()).numpy()))
                del tensor
        part.rename(out / final)
        weight_map.update({name: final for name, _, _ in entries})
    if total > 1:
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    return weight_map


def torch_uint8() -> Any:
    import torch

    return torch.uint8


def copy_side_files(trained: Trained, out: Path, dtype: str) -> None:
    """Config (with the exported dtype, without quantization), generation config, and the
    processor / tokenizer / chat-template files (the run's, else the base's)."""
    config = json.loads((trained.base / "config.json").read_text())
    config.pop("quantization_config", None)
    config["dtype"] = DTYPES[dtype]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    sources = [trained.run_dir / PROCESSOR_DIR] if trained.run_dir and (trained.run_dir / PROCESSOR_DIR).is_dir() else []
    sources.append(trained.base)
    for source in reversed(sources):  # the run's files win
        for file in source.iterdir():
            if file.is_file() and file.name != "config.json" and not _WEIGHT_FILES.search(file.name) \
                    and file.name not in ("vlmsurgeon.json", "README.md"):
                shutil.copy2(file, out / file.name)


def clean_stale(out: Path) -> None:
    for stale in out.parent.glob(f".{out.name}.merge-*"):
        shutil.rmtree(stale, ignore_errors=True)


def commit(staging: Path, out: Path, force: bool) -> None:
    """Rename the finished export into place; an existing OUT is replaced only with --force."""
    if out.exists():
        if not force:
            raise BadInput(f"output '{out}' exists", "pass --force to replace it, or choose another -o")
        old = out.parent / f".{out.name}.merge-old"
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def merge(source: Path, out: Path, *, base: str | None = None, plan: MergePlan = MergePlan(),
          force: bool = False) -> dict[str, Any]:
    """Stream the base shards through the adapter into OUT (built beside it, renamed at the end)."""
    from .freeze import classified_tree, _component_map, _owner

    if out.exists() and not force:
        raise BadInput(f"output '{out}' exists", "pass --force to replace it, or choose another -o")
    trained = load_trained(source, base)
    files = base_files(trained.base)
    from .sources import read_header

    located = [(path, k, tuple(v["shape"]), v["dtype"]) for path in files
               for k, v in read_header(path).items() if k != "__metadata__"]
    layout = [(k, shape, dtype) for _, k, shape, dtype in located]
    keys, meta, model = key_map(trained.base, [k for k, _, _ in layout])
    check_fit(trained, meta)
    plan.compute_dtype = {"bf16": "bfloat16", "fp32": "float32"}.get(
        str(trained.record.get("training", {}).get("compute_dtype", "fp32")), "float32")
    component_of = _component_map(classified_tree(model, model.config.model_type))
    changed = set(trained.full) | {f"{m}.weight" for m in trained.lora}
    missing = sorted(changed - set(keys.values()))
    if missing:
        raise BadInput(f"trained tensor {missing[0]} is not stored in the base checkpoint",
                       "merging into converted (fused) tensors is not supported")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.merge-", dir=out.parent))
    try:
        tensors = merged_tensors(trained, [(p, k) for p, k, _, _ in located], plan, keys,
                                 lambda n: _owner(n, component_of))
        weight_map = write_shards(tensors, shard_plan(layout, plan.dtype, plan.max_shard_bytes), staging)
        copy_side_files(trained, staging, plan.dtype)
        summary = _provenance(trained, plan, staging, weight_map)
        commit(staging, out, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _provenance(trained: Trained, plan: MergePlan, out: Path, weight_map: dict[str, str]) -> dict[str, Any]:
    record = {
        "vlmsurgeon_merge": {"source": str(trained.run_dir or trained.adapter_dir), "base": str(trained.base),
                             "target": plan.target if trained.quantized_components else "original",
                             "dtype": plan.dtype, "only": plan.only,
                             "lora_modules_merged": len(trained.lora), "full_tensors": len(trained.full),
                             "shards": len(set(weight_map.values()))},
        "run": trained.record or None, "versions": versions(),
    }
    (out / "vlmsurgeon.json").write_text(json.dumps(record, indent=2) + "\n")
    preset = (trained.record.get("preset") or {}).get("name", "adapter")
    (out / "README.md").write_text(
        f"# Merged with vlmsurgeon\n\nBase: `{trained.base}`  \nTraining: preset `{preset}`, "
        f"{len(trained.lora)} LoRA modules and {len(trained.full)} fully trained tensors merged into "
        f"the {record['vlmsurgeon_merge']['target']} weights, exported as {plan.dtype}.\n\n"
        "Load with `AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained`.\n"
        "Provenance: `vlmsurgeon.json`.\n")
    return record["vlmsurgeon_merge"]


def export_adapter(source: Path, out: Path, only: list[str], *, base: str | None = None,
                   force: bool = False) -> dict[str, Any]:
    """A subset of the adapter (e.g. LM-only LoRA for serving engines that take LoRA on the
    language model only), written atomically beside OUT."""
    from safetensors.torch import load_file, save_file

    from .freeze import _component_map, _owner, classified_tree
    from .inspection import meta_model

    if out.exists() and not force:
        raise BadInput(f"output '{out}' exists", "pass --force to replace it, or choose another -o")
    trained = load_trained(source, base)
    if not trained.adapter_dir:
        raise BadInput(f"'{source}' has no peft adapter to export", "merge it instead (without --adapter-only)")
    _, model = meta_model(str(trained.base))
    component_of = _component_map(classified_tree(model, model.config.model_type))
    tensors = load_file(str(trained.adapter_dir / "adapter_model.safetensors"))
    keep = {k: v for k, v in tensors.items()
            if _owner(k.removeprefix("base_model.model.").split(".lora_")[0], component_of) in only}
    modules = sorted({k.removeprefix("base_model.model.").split(".lora_")[0] for k in keep if ".lora_" in k})
    config = dict(trained.adapter_config)
    config["target_modules"] = modules
    config["modules_to_save"] = [m for m in (config.get("modules_to_save") or [])
                                 if _owner(m, component_of) in only] or None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.merge-", dir=out.parent))
    try:
        save_file(keep, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        summary = {"source": str(source), "only": only, "lora_modules": len(modules), "tensors": len(keep)}
        (staging / "vlmsurgeon.json").write_text(json.dumps({"vlmsurgeon_adapter_subset": summary,
                                                             "versions": versions()}, indent=2) + "\n")
        commit(staging, out, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary
