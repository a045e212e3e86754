"""Checkpoint check: the model a config builds against the tensors its safetensors headers hold,
with checkpoint names normalised by transformers' own conversion mapping (legacy layouts)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from vlmsurgeon.errors import BadInput

from .sources import ModelSource, weight_headers
from .tree import _BNB_AUX, _GPTQ_AUX

FIRST = 5  # names shown per kind
# Scales stored beside fp8 weights; only skipped when the config declares a quantization.
_FP8_AUX = re.compile(r"\.(weight_scale_inv|weight_scale|input_scale)$")

Tensor = tuple[str, tuple[int, ...], str]


@dataclass
class CheckpointCheck:
    """What differs between the config's model and the checkpoint. Names in `missing` and
    `shape_mismatch` are the model's; names in `unexpected` are as stored in the checkpoint."""

    checked: bool
    reason: str | None = None
    unreadable: bool = False  # weights were there but could not be read: worth a warning
    shards: int = 0
    tensors: int = 0
    renamed: int = 0  # checkpoint names changed by transformers' conversion mapping
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    untied_head: tuple[str, int] | None = None  # (model name, params) of a head stored untied

    def to_json(self) -> dict[str, Any]:
        if not self.checked:
            return {"checked": False, "reason": self.reason}
        return {
            "checked": True,
            "shards": self.shards,
            "tensors": self.tensors,
            "renamed": self.renamed,
            "missing": {"count": len(self.missing), "first": self.missing[:FIRST]},
            "unexpected": {"count": len(self.unexpected), "first": self.unexpected[:FIRST]},
            "shape_mismatch": {
                "count": len(self.shape_mismatch),
                "first": [
                    {"name": n, "config": list(a), "checkpoint": list(b)} for n, a, b in self.shape_mismatch[:FIRST]
                ],
            },
            "untied_head_in_checkpoint": self.untied_head is not None,
            "untied_head": None
            if self.untied_head is None
            else {"name": self.untied_head[0], "params": self.untied_head[1]},
        }


def check_source(source: ModelSource, model: Any) -> CheckpointCheck:
    """Compare `model` (built from the source's config) with the source's weights, if any."""
    if not source.weight_files:
        if source.ref.kind != "hub":
            return CheckpointCheck(False, "no *.safetensors weights beside the config")
        if source.offline:
            return CheckpointCheck(False, "the weights are not in the local cache and the hub is not reachable")
    try:
        tensors, shards = weight_headers(source)
    except BadInput as exc:
        return CheckpointCheck(False, exc.what, unreadable=True)
    quantized = bool(source.config.get("quantization_config"))
    try:
        return compare(model, tensors, shards=shards, quantized=quantized)
    except Exception as exc:  # a side check: transformers internals changing must not cost the breakdown
        return CheckpointCheck(False, f"the check failed ({type(exc).__name__}: {exc})", unreadable=True)


def header_mode_check() -> CheckpointCheck:
    """Header mode builds the tree from the checkpoint: there is no config model to compare."""
    return CheckpointCheck(
        False,
        "the breakdown is read from the checkpoint itself; nothing "
        "built from the config to compare (--trust-remote-code builds it)",
    )


def compare(model: Any, tensors: list[Tensor], *, shards: int = 1, quantized: bool = False) -> CheckpointCheck:
    """Rename each checkpoint key as `from_pretrained` would, then compare names and shapes
    with the model's state dict (parameters and persistent buffers)."""
    from transformers.core_model_loading import rename_source_key

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    transient = {n for n, _ in model.named_buffers()} - expected.keys()  # non-persistent buffers
    renamings, converters = _conversions(model)
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    prefix = getattr(model, "base_model_prefix", "") or None
    result = CheckpointCheck(True, shards=shards, tensors=len(tensors))
    present: dict[str, tuple[int, ...]] = {}
    for name, shape, packed in _weights(tensors, quantized):
        key, pattern = rename_source_key(name, renamings, converters, prefix, expected)
        if key not in expected and name in expected:  # as from_pretrained: no renaming needed
            key, pattern = rename_source_key(name, [], [], prefix, expected)
        if key not in expected:
            if key not in transient and name not in transient:
                result.unexpected.append(name)
            continue
        result.renamed += key != name
        present[key] = shape
        if pattern is not None:  # a converter (fused experts, split qkv): shapes differ by design
            converter = by_pattern[pattern]
            for target in converter.target_patterns[1:]:
                present.setdefault(key.replace(converter.target_patterns[0], target, 1), shape)
        elif not packed and expected[key] != shape:
            result.shape_mismatch.append((key, expected[key], shape))
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    satisfied = {source for target, source in tied.items() if target in present}
    result.missing = [k for k in expected if k not in present and k not in tied and k not in satisfied]
    _ignore_known(model, result)
    result.unexpected.sort(key=_natural)
    head = _output_weight(model)
    if head in tied and head in present and tied[head] in present:
        result.untied_head = (head, math.prod(present[head]))
    return result


def _conversions(model: Any) -> tuple[list[Any], list[Any]]:
    """The renamings and converters `from_pretrained` applies to this model's checkpoints."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming

    mapping = get_model_conversion_mapping(model)
    return (
        [m for m in mapping if isinstance(m, WeightRenaming)],
        [m for m in mapping if isinstance(m, WeightConverter)],
    )


def _weights(tensors: list[Tensor], quantized: bool) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, shape, packed): auxiliary tensors of 4-bit/GPTQ/fp8 checkpoints dropped, a GPTQ
    `qweight` standing for its `weight`, packed tensors exempt from the shape comparison."""
    names = {n for n, _, _ in tensors}
    packed_bnb = {n[: m.start()] for n in names if (m := _BNB_AUX.search(n))}
    gptq = {n.rpartition(".")[0] for n in names if n.endswith(".qweight")}
    out = []
    for name, shape, _dtype in tensors:
        module, _, leaf = name.rpartition(".")
        if _BNB_AUX.search(name) or (module in gptq and leaf in _GPTQ_AUX):
            continue
        if quantized and _FP8_AUX.search(name):
            continue
        if module in gptq and leaf == "qweight":
            out.append((f"{module}.weight", shape, True))
            continue
        out.append((name, shape, name in packed_bnb))
    return out


def _ignore_known(model: Any, result: CheckpointCheck) -> None:
    """transformers' own exceptions (`_keys_to_ignore_on_load_*`, stale rotary/position buffers)."""
    adjust = getattr(model, "_adjust_missing_and_unexpected_keys", None)
    if adjust is None:
        return
    info = SimpleNamespace(missing_keys=set(result.missing), unexpected_keys=set(result.unexpected))
    adjust(info)
    result.missing = [k for k in result.missing if k in info.missing_keys]
    result.unexpected = [k for k in result.unexpected if k in info.unexpected_keys]


def _natural(name: str) -> list[tuple[int, int, str]]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in name.split(".")]


def _output_weight(model: Any) -> str | None:
    try:
        head = model.get_output_embeddings()
    except Exception:  # remote-code models may not implement it
        return None
    if head is None:
        return None
    for name, module in model.named_modules():
        if module is head:
            return f"{name}.weight" if name else "weight"
    return None
