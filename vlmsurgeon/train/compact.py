"""Frozen blocks held in 16 bits, computed in fp32. A run that computes in fp32 (a CPU without
native bf16, or `--dtype fp32`) loads every unquantized weight in fp32, though a released
checkpoint stores them in bf16: a frozen vision tower then takes twice its size for nothing.
Each frozen repeated block (a child of a ModuleList: a vision or LM layer), and peft's frozen
original beside a component trained in full, keeps its weights in the 16-bit dtype that holds
them exactly, and gets them back in fp32 for the length of its own call: the call computes with
the very fp32 values it had before, so its output is the same to the bit (tests/test_compact.py).

Only where nothing records a graph through the block: a call with an input that requires a
gradient would save the fp32 weights for backward, so the block is then turned back to fp32 for
good (as it was without this), which costs memory and never numbers. A tensor that 16 bits cannot
hold exactly (an fp32 checkpoint, a value changed in fp32) stays as it is."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn


@dataclass
class Compacted:
    """What was compacted: the blocks and the bytes their weights no longer take."""

    blocks: list[str] = field(default_factory=list)
    saved_bytes: int = 0
    dtypes: Counter[str] = field(default_factory=Counter)
    restored: list[str] = field(default_factory=list)  # turned back to fp32: an input needed a gradient


def _exact_half(tensor: torch.Tensor) -> torch.dtype | None:
    """The 16-bit dtype that holds every value of an fp32 tensor exactly, or None."""
    for half in (torch.bfloat16, torch.float16):
        if torch.equal(tensor.to(half).to(torch.float32), tensor):
            return half
    return None


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Repeated blocks, and peft's originals beside the copies that train (a ModulesToSaveWrapper's
    `original_module`), outermost first."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            found += [(f"{name}.{i}" if name else str(i), child) for i, child in enumerate(module)]
        elif type(module).__name__ == "ModulesToSaveWrapper" and isinstance(
            getattr(module, "original_module", None), nn.Module
        ):
            found.append((f"{name}.original_module" if name else "original_module", module.original_module))
    return sorted(found, key=lambda item: item[0].count("."))


def compact_frozen(model: nn.Module) -> Compacted:
    """Compact every frozen fp32 block that 16 bits hold exactly (see the module's docstring); a
    block inside one compacted already is not visited again."""
    shared = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    result = Compacted()
    for name, block in _candidates(model):
        if any(name.startswith(outer + ".") for outer in result.blocks):
            continue
        params = list(block.named_parameters(remove_duplicate=False))
        if not params or any(
            p.requires_grad or p.dtype != torch.float32 or type(p).__name__ == "Params4bit" for _, p in params
        ):
            continue
        inside = Counter(id(p) for _, p in params)
        if any(shared[key] != count for key, count in inside.items()):
            continue  # a weight also used outside the block (tied): left alone
        halves: dict[int, torch.dtype] = {}
        for _, p in params:
            half = _exact_half(p.data)
            if half is None:
                break
            halves[id(p)] = half
        else:
            _install(name, block, halves, result)
    return result


def _install(name: str, block: nn.Module, halves: dict[int, torch.dtype], result: Compacted) -> None:
    params = {id(p): p for p in block.parameters()}
    stored = {key: params[key].data.to(half) for key, half in halves.items()}
    for key, tensor in stored.items():
        result.saved_bytes += params[key].data.nbytes - tensor.nbytes
        result.dtypes[str(tensor.dtype).removeprefix("torch.")] += 1
        params[key].data = tensor
    handles: list[Any] = []

    def widen(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for key, tensor in stored.items():
            params[key].data = tensor.to(torch.float32)
        if torch.is_grad_enabled() and _needs_grad(args, kwargs):
            for handle in handles:  # a graph would keep these weights: fp32 for good
                handle.remove()
            stored.clear()
            result.restored.append(name)
            from .telemetry import say  # not silent: the saving said at the start shrinks

            say(f"frozen block {name} is on a gradient's path: back to fp32 for the rest of the run")

    def narrow(*_: Any) -> None:
        for key, tensor in stored.items():
            params[key].data = tensor

    handles.append(block.register_forward_pre_hook(widen, with_kwargs=True))
    handles.append(block.register_forward_hook(narrow, always_call=True))
    result.blocks.append(name)


def _needs_grad(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    def needs(value: Any) -> bool:
        if isinstance(value, torch.Tensor):
            return value.requires_grad
        if isinstance(value, (tuple, list)):
            return any(map(needs, value))
        if isinstance(value, dict):
            return any(map(needs, value.values()))
        return False

    return needs(args) or needs(kwargs)


def compacted_line(result: Compacted) -> str | None:
    """Said once when anything was compacted."""
    if not result.blocks:
        return None
    kinds = "/".join(sorted(result.dtypes))
    return (
        f"{len(result.blocks)} frozen block(s) kept in {kinds} as the checkpoint stores them, computed in fp32 "
        f"({result.saved_bytes / 2**20:,.0f} MiB less)"
    )
