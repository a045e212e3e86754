"""A light module tree (names, classes, parameter shapes) built from a torch model or from
safetensors tensor names, so that classification, counting and rendering share one shape."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Suffixes of the auxiliary tensors that bitsandbytes stores beside a packed 4-bit weight.
_BNB_AUX = re.compile(r"\.(absmax|quant_map|nested_absmax|nested_quant_map|quant_state\.bitsandbytes__(nf4|fp4))$")
# GPTQ / AWQ style packed checkpoints: qweight holds 32/bits values per int32.
_GPTQ_AUX = ("qzeros", "scales", "g_idx")


@dataclass
class Param:
    """One parameter tensor as counted: `numel` is what it represents (4-bit packed counts x2)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    kind: str = "other"  # "linear" (a Linear weight), "embedding", or "other"
    tied_to: str | None = None  # set on a duplicate of an earlier tensor; it then counts 0
    trainable: bool = True
    quantized: bool = False

    @property
    def counted(self) -> int:
        return 0 if self.tied_to else self.numel


@dataclass
class Node:
    """A module: its attribute path, class name, own parameters and children. `buffers` are its
    persistent buffers (stored in the checkpoint beside the parameters, never counted as them)."""

    path: str
    cls: str
    params: list[Param] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)
    component: str | None = None
    total: int = 0
    buffers: list[Param] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    def walk(self) -> Iterator[Node]:
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def all_params(self) -> Iterator[Param]:
        for node in self.walk():
            yield from node.params


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def finish(root: Node) -> Node:
    """Fill in subtree totals (post-order, iterative: trees can hold 100k+ modules)."""
    order = list(root.walk())
    for node in reversed(order):
        node.total = sum(p.counted for p in node.params) + sum(c.total for c in node.children)
    return root


def _represented_numel(param: Any) -> tuple[int, bool]:
    state = getattr(param, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return math.prod(state.shape), True
    return param.numel(), False


def from_module(model: Any) -> Node:
    """Build the tree of a torch module; tied (shared) parameters count once, where first seen."""
    import torch.nn as nn

    first_seen: dict[int, str] = {}
    nodes: dict[str, Node] = {}
    for path, module in model.named_modules():
        node = Node(path, type(module).__name__)
        nodes[path] = node
        if path:
            nodes[_parent(path)].children.append(node)
        if isinstance(module, nn.Linear):
            kind = "linear"
        elif isinstance(module, nn.Embedding):
            kind = "embedding"
        else:
            kind = "other"
        for pname, p in module._parameters.items():
            if p is None:
                continue
            full = f"{path}.{pname}" if path else pname
            numel, quantized = _represented_numel(p)
            shape = tuple(getattr(getattr(p, "quant_state", None), "shape", None) or p.shape)
            param = Param(
                full,
                tuple(int(s) for s in shape),
                str(p.dtype).replace("torch.", ""),
                numel,
                kind=kind if pname == "weight" else "other",
                trainable=bool(p.requires_grad),
                quantized=quantized,
            )
            if id(p) in first_seen:
                param.tied_to = first_seen[id(p)]
            else:
                first_seen[id(p)] = full
            node.params.append(param)
        node.buffers = _persistent_buffers(module, path, first_seen)
    return finish(nodes[""])


def _persistent_buffers(module: Any, path: str, first_seen: dict[int, str]) -> list[Param]:
    """The buffers `state_dict()` holds (registered persistent): the checkpoint stores them, so a
    published count includes them. Non-persistent ones (rotary `inv_freq`) are never stored."""
    found = []
    for name, buf in module._buffers.items():
        if buf is None or name in module._non_persistent_buffers_set:
            continue
        full = f"{path}.{name}" if path else name
        param = Param(
            full, tuple(int(s) for s in buf.shape), str(buf.dtype).replace("torch.", ""), buf.numel(), trainable=False
        )
        if id(buf) in first_seen:
            param.tied_to = first_seen[id(buf)]
        else:
            first_seen[id(buf)] = full
        found.append(param)
    return found


def _guess_class(name: str, params: dict[str, tuple[tuple[int, ...], str]]) -> str:
    weight = params.get("weight")
    if weight is None:
        return "Module" if not params else "Parameters"
    shape = weight[0]
    if len(shape) == 2 and re.search(r"embed|wte|wpe|tok", name, re.I):
        return f"Embedding({shape[0]}, {shape[1]})"
    if len(shape) == 2:
        return f"Linear({shape[1]}→{shape[0]})"
    if len(shape) in (3, 4, 5):
        return f"Conv{len(shape) - 2}d"
    if len(shape) == 1:
        return "Norm" if "bias" not in params or "norm" in name.lower() else "LayerNorm"
    return "Module"


def from_tensors(tensors: Iterable[tuple[str, tuple[int, ...], str]], *, bits: int = 4) -> tuple[Node, bool]:
    """Build a tree from (name, shape, dtype) triples read from safetensors headers.

    Returns the tree and whether the checkpoint is pre-quantized (packed 4-bit tensors)."""
    grouped: dict[str, dict[str, tuple[tuple[int, ...], str]]] = {}
    packed_bnb: set[str] = set()
    gptq_modules: set[str] = set()
    for name, shape, dtype in tensors:
        aux = _BNB_AUX.search(name)
        if aux:
            packed_bnb.add(name[: aux.start()])
            continue
        module, _, pname = name.rpartition(".")
        if pname in _GPTQ_AUX:
            gptq_modules.add(module)
            continue
        grouped.setdefault(module, {})[pname] = (tuple(shape), dtype)

    nodes: dict[str, Node] = {"": Node("", "Checkpoint")}

    def ensure(path: str) -> Node:
        if path in nodes:
            return nodes[path]
        node = Node(path, "Module")
        nodes[path] = node
        ensure(_parent(path)).children.append(node)
        return node

    for module in sorted(grouped, key=_natural_key):
        params = grouped[module]
        node = ensure(module)
        node.cls = _guess_class(module.rsplit(".", 1)[-1], params)
        for pname, (shape, dtype) in params.items():
            full = f"{module}.{pname}" if module else pname
            numel, quantized = math.prod(shape), False
            if full in packed_bnb:  # two 4-bit values per stored byte
                numel, quantized = numel * (2 if dtype in ("U8", "I8") else 1), True
            elif pname == "qweight" and module in gptq_modules:
                numel, quantized = numel * (32 // bits), True
            kind = "other"
            if pname in ("weight", "qweight"):
                kind = (
                    "embedding"
                    if node.cls.startswith("Embedding")
                    else ("linear" if len(shape) == 2 or quantized else "other")
                )
            node.params.append(Param(full, shape, dtype, numel, kind=kind, quantized=quantized))
            if quantized and node.cls.startswith(("Linear", "Module", "Parameters")):
                node.cls = "Linear4bit" if full in packed_bnb else f"QuantLinear({bits}-bit)"
    _sort_children(nodes[""])
    root = finish(nodes[""])
    return root, bool(packed_bnb or gptq_modules)


def _natural_key(path: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in path.split(".")]


def _sort_children(root: Node) -> None:
    for node in root.walk():
        node.children.sort(key=lambda n: _natural_key(n.path))


def signature(node: Node, memo: dict[int, Any]) -> Any:
    """A hashable structure of a subtree (class, parameter shapes, child signatures), so that
    repeated blocks can be told apart from blocks that only share a class name."""
    key = id(node)
    if key not in memo:
        memo[key] = hash(
            (
                node.cls,
                node.component,
                tuple((p.name.rsplit(".", 1)[-1], p.shape, p.tied_to is None) for p in node.params),
                tuple((c.name if not c.name.isdigit() else "#", signature(c, memo)) for c in node.children),
            )
        )
    return memo[key]
