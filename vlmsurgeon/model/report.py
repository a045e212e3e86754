"""The parameter breakdown by component: the figures `inspect --json` prints (DESIGN §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .components import ALL_COMPONENTS, COMPONENTS, param_component
from .tree import Node

# NF4 with double quantisation, blocksize 64: 4 bits + an 8-bit absmax per 64 values
# + one fp32 scale per 256 absmax blocks.
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.2M'; bytes with unit='B' -> '2.3 GiB'."""
    if unit == "B":
        for suffix, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(n) >= scale:
                return f"{n / scale:.2f} {suffix}"
        return f"{int(n)} B"
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(int(n))


def percent(part: float, whole: float) -> str:
    """The one way every table writes a share: `0%` and `100%` only when exact, two significant
    digits below 1% (`0.022%`), one decimal otherwise (`99.5%`); `-` when there is no whole."""
    if not whole:
        return "-"
    if part == whole:
        return "100%"
    if part == 0:
        return "0%"
    value = 100 * abs(part) / abs(whole)
    sign = "-" if (part < 0) != (whole < 0) else ""
    if value < 1:
        decimals = 1 - math.floor(math.log10(value))
        text = f"{value:.{decimals}f}"
        if float(text) < 1:
            return f"{sign}{text}%"
    text = f"{value:.1f}"
    if text == "100.0" and value < 100:  # rounding up to a whole would claim everything
        return f"{sign}>99.9%"
    return f"{sign}{text}%"


def subtree_components(node: Node, kind: str = "params") -> dict[str, int]:
    """Parameters (or persistent buffers) under `node` by component, counted as the breakdown
    counts them (tied or shared ones once), so a tree line and the table agree."""
    figures: dict[str, int] = {}
    for sub in node.walk():
        for tensor in getattr(sub, kind):
            if tensor.counted:
                comp = param_component(sub, tensor.name)
                figures[comp] = figures.get(comp, 0) + tensor.counted
    return figures


@dataclass
class ComponentFigures:
    params: int = 0
    trainable: int = 0
    roots: list[str] = field(default_factory=list)
    embeddings: int = 0
    linear: int = 0  # Linear weights: what 4-bit quantisation applies to
    tied_to: str | None = None

    def bytes_bf16(self) -> int:
        return 2 * self.params

    def bytes_4bit(self, quantize: bool = True) -> int:
        if not quantize:
            return self.bytes_bf16()
        return int(self.linear * NF4_BITS / 8) + 2 * (self.params - self.linear)


@dataclass
class Breakdown:
    model: str
    model_type: str
    source: str
    tree: Node
    components: dict[str, ComponentFigures]
    other: int
    other_names: list[str]
    total_params: int
    prequantized: bool = False
    notes: list[str] = field(default_factory=list)
    checkpoint: Any = None  # a checkpoint.CheckpointCheck, set by `inspect`
    # Values of persistent buffers (stored beside the parameters, not counted in total_params);
    # None when the figures come from safetensors headers, where every stored tensor is counted.
    buffers: int | None = 0
    buffer_components: dict[str, int] = field(default_factory=dict)

    @property
    def stored_values(self) -> int:
        """What the checkpoint's tensors hold in all: the figure a hub page publishes."""
        return self.total_params + (self.buffers or 0)

    def buffers_json(self) -> dict[str, Any] | None:
        if self.buffers is None:
            return None
        return {"total": self.buffers, "components": dict(self.buffer_components)}

    def to_json(self) -> dict[str, Any]:
        """DESIGN §4's object, plus `buffers` ({"total", "components"}; null in header mode) and
        `notes`: total_params + buffers.total is what the checkpoint's tensors hold."""
        comps: dict[str, Any] = {}
        for name, fig in self.components.items():
            entry: dict[str, Any] = {"params": fig.params}
            if name == "lm":
                entry["embeddings"] = fig.embeddings
            if name == "head":
                entry["tied_to"] = fig.tied_to
            entry["trainable"] = fig.trainable
            entry["roots"] = fig.roots
            comps[name] = entry
        data = {
            "model": self.model,
            "model_type": self.model_type,
            "source": self.source,
            "total_params": self.total_params,
            "components": comps,
            "other": self.other,
            "buffers": self.buffers_json(),
            "notes": list(self.notes),
        }
        if self.checkpoint is not None:
            data["checkpoint_check"] = self.checkpoint.to_json()
        return data


def breakdown(
    root: Node, *, model: str, model_type: str, source: str, prequantized: bool = False, notes: list[str] | None = None
) -> Breakdown:
    """Count every parameter once into exactly one component; figures add up to the total."""
    figures = {c: ComponentFigures() for c in ALL_COMPONENTS}
    other, other_names, total = 0, [], 0
    parents: dict[int, str | None] = {id(root): None}
    for node in root.walk():
        for child in node.children:
            parents[id(child)] = node.component
        if node.component and parents[id(node)] != node.component:
            figures[node.component].roots.append(node.path)
        for param in node.params:
            comp = param_component(node, param.name)
            if param.tied_to:
                if comp == "head":
                    figures["head"].tied_to = param.tied_to
                continue
            total += param.numel
            if comp == "other":
                other += param.numel
                other_names.append(param.name)
                continue
            fig = figures[comp]
            if node.component is None:  # a loose parameter claimed by PARAM_RULES
                fig.roots.append(param.name)
            fig.params += param.numel
            fig.trainable += param.numel if param.trainable else 0
            fig.embeddings += param.numel if param.kind == "embedding" else 0
            fig.linear += param.numel if param.kind == "linear" else 0
    kept = {c: f for c, f in figures.items() if c in COMPONENTS or f.params or f.roots}
    result = Breakdown(
        model,
        model_type,
        source,
        root,
        kept,
        other,
        other_names,
        total,
        prequantized=prequantized,
        notes=list(notes or []),
    )
    result.buffer_components = buffer_figures(root)
    result.buffers = sum(result.buffer_components.values())
    return result


def buffer_figures(root: Node) -> dict[str, int]:
    """Persistent-buffer values by component (a shared buffer once), in component order."""
    figures = subtree_components(root, "buffers")
    order = [*ALL_COMPONENTS, "other"]
    return {c: figures[c] for c in sorted(figures, key=lambda c: order.index(c) if c in order else 99)}
