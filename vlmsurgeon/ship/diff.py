"""`diff A B`: what changed, per component — tensors changed, cast only (B is A rounded to
B's dtype, or A is B rounded to A's: an export's dtype, not training), unchanged; max |Δ| and
relative Frobenius change of the changed ones. A and B are checkpoints or run directories (a run
is its base with the run's changes applied). Streaming: one tensor of each side in memory at a time."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmsurgeon.errors import BadInput
from vlmsurgeon.model.sources import read_header, read_json


class CheckpointSource:
    """Tensors of a saved checkpoint, by in-memory parameter name."""

    def __init__(self, path: Path) -> None:
        from .trained import base_files, key_map

        self.path = path
        self.files = base_files(path)
        self.where: dict[str, tuple[Path, str]] = {}
        disk = [(file, k) for file in self.files for k in read_header(file) if k != "__metadata__"]
        keys, _, self.model = key_map(path, [k for _, k in disk])
        self.where = {keys[k]: (f, k) for f, k in disk}
        self._handles: dict[Path, Any] = {}

    def names(self) -> set[str]:
        return set(self.where)

    def get(self, name: str) -> Any:
        from safetensors import safe_open

        file, key = self.where[name]
        try:
            if file not in self._handles:
                self._handles[file] = safe_open(str(file), "pt")
            return self._handles[file].get_tensor(key)
        except Exception as exc:  # SafetensorError: damage the header check cannot see
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BadInput(f"{file}: corrupt safetensors file ({detail})", "re-download or re-save the file") from exc


class RunSource:
    """A run directory seen as a checkpoint: its base, with the run's LoRA deltas (on the
    original weights) and fully trained tensors applied."""

    def __init__(self, path: Path) -> None:
        from .trained import load_trained

        self.trained = load_trained(path, None)
        recorded = self.trained.record.get("trainable_params")
        if not self.trained.lora and not self.trained.full and recorded:
            # a run that trained something but holds none of it would diff as "0 changed"
            raise BadInput(
                f"run '{path}' records {recorded} trainable parameters but holds no trained tensors",
                "restore the run's adapter/ and trained_components.safetensors",
            )
        self.base = CheckpointSource(self.trained.base)
        self.model = self.base.model

    def names(self) -> set[str]:
        return self.base.names()

    def get(self, name: str) -> Any:
        if name in self.trained.full:
            return self.trained.full[name]
        tensor = self.base.get(name)
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module in self.trained.lora:
            a, b, scale = self.trained.lora[module]
            tensor = (tensor.float() + scale * (b.float() @ a.float())).to(tensor.dtype)
        return tensor


def open_source(path: Path) -> Any:
    if not path.is_dir():
        raise BadInput(f"'{path}': no such directory", "pass two checkpoints or a checkpoint and a run dir")
    record = path / "vlmsurgeon.json"
    exports = ("vlmsurgeon_merge", "vlmsurgeon_graft", "vlmsurgeon_extract")  # checkpoints, not runs
    if record.is_file() and not any(key in read_json(record) for key in exports):
        return RunSource(path)
    if (path / "adapter_config.json").is_file():  # a bare adapter: its base with the adapter applied
        return RunSource(path)
    return CheckpointSource(path)


_SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}


@dataclass
class ComponentDiff:
    compared: int = 0
    changed: int = 0
    changed_params: int = 0
    cast_only: int = 0
    cast_only_params: int = 0
    cast_max_abs: float = 0.0
    unchanged: int = 0
    max_abs: float = 0.0
    sq_delta: float = 0.0
    sq_base: float = 0.0
    changed_names: list[str] = field(default_factory=list)

    @property
    def relative(self) -> float:
        return math.sqrt(self.sq_delta) / math.sqrt(self.sq_base) if self.sq_base else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "tensors": self.compared,
            "changed": self.changed,
            "max_abs_change": self.max_abs,
            "relative_frobenius": self.relative,
            "changed_tensors": self.changed_names[:20],
            "changed_params": self.changed_params,
            "cast_only": self.cast_only,
            "cast_only_params": self.cast_only_params,
            "cast_max_abs_change": self.cast_max_abs,
            "unchanged": self.unchanged,
        }


@dataclass
class DiffResult:
    a: str
    b: str
    components: dict[str, ComponentDiff]
    only_in_a: list[str]
    only_in_b: list[str]
    shape_mismatch: list[str]
    casts: dict[str, int] = field(default_factory=dict)  # "float32->bfloat16": cast-only tensors

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "shape_mismatch": self.shape_mismatch,
            "casts": self.casts,
            "components": {c: d.to_json() for c, d in self.components.items()},
        }

    def cast_note(self) -> str | None:
        """One line when tensors differ only by a dtype cast (they are not counted as changed)."""
        if not self.casts:
            return None
        tensors = sum(c.cast_only for c in self.components.values())
        largest = max(c.cast_max_abs for c in self.components.values())
        pairs = []
        for pair, count in self.casts.items():
            a, b = (_SHORT_DTYPES.get(x, x) for x in pair.split("->"))
            pairs.append(f"{a} → {b}" + (f" ({count})" if len(self.casts) > 1 else ""))
        return f"cast only: {tensors} tensors differ only by the {', '.join(pairs)} rounding (max |Δ| {largest:.3g})"


def classify(ta: Any, tb: Any) -> str:
    """One of unchanged (same dtype, same values), cast (the narrower side is the other rounded
    to its dtype, bit for bit) or changed. A trained change smaller than the rounding is lost
    in a narrower export, so such a tensor is rightly cast, not changed."""
    import torch

    if ta.dtype == tb.dtype:
        return "unchanged" if torch.equal(ta, tb) else "changed"
    if torch.equal(ta.to(tb.dtype), tb) or torch.equal(tb.to(ta.dtype), ta):
        return "cast"
    return "changed"


def _record(result: DiffResult, stats: ComponentDiff, name: str, ta: Any, tb: Any) -> None:
    import torch

    kind = classify(ta, tb)
    wide = torch.promote_types(ta.dtype, tb.dtype)
    wide = wide if wide.is_floating_point else torch.float64
    base = ta.to(wide)
    stats.sq_base += float(base.pow(2).sum())
    if kind == "unchanged":
        stats.unchanged += 1
        return
    delta = tb.to(wide) - base
    largest = float(delta.abs().max()) if delta.numel() else 0.0
    if kind == "cast":
        stats.cast_only += 1
        stats.cast_only_params += ta.numel()
        stats.cast_max_abs = max(stats.cast_max_abs, largest)
        pair = f"{str(ta.dtype).removeprefix('torch.')}->{str(tb.dtype).removeprefix('torch.')}"
        result.casts[pair] = result.casts.get(pair, 0) + 1
        return
    stats.changed += 1
    stats.changed_params += ta.numel()
    stats.changed_names.append(name)
    stats.max_abs = max(stats.max_abs, largest)
    stats.sq_delta += float(delta.pow(2).sum())


def diff(a_path: Path, b_path: Path) -> DiffResult:
    from vlmsurgeon.recipe.freeze import _component_map, _owner, classified_tree

    a, b = open_source(a_path), open_source(b_path)
    component_of = _component_map(classified_tree(a.model, a.model.config.model_type))
    names_a, names_b = a.names(), b.names()
    result = DiffResult(str(a_path), str(b_path), {}, sorted(names_a - names_b), sorted(names_b - names_a), [])
    for name in sorted(names_a & names_b):
        ta, tb = a.get(name), b.get(name)
        stats = result.components.setdefault(_owner(name, component_of), ComponentDiff())
        stats.compared += 1
        if ta.shape != tb.shape:
            result.shape_mismatch.append(name)
            continue
        _record(result, stats, name, ta, tb)
    return result
