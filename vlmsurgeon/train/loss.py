"""Chunked cross-entropy for training. The model runs with its output head swapped for a
pass-through and its loss function swapped for ours: that calls the real head on label positions
only, some rows at a time (at least 2^22 logits, at most 8 chunks: memory.chunk_rows); a frozen
head gives its input's gradient in the same pass, a head that trains recomputes each chunk in
backward (checkpoint). So the
`batch × seq × vocab` logits and their gradient never exist at once. Everything else the forward
does with labels (masks, router aux losses, `num_items_in_batch`) stays the model's own."""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vlmsurgeon.plan.memory import chunk_rows

Transform = Callable[[Any], Any] | None


def _softcap(cap: float | None) -> Transform:
    if cap is None:
        return None
    return lambda logits: torch.tanh(logits / cap) * cap


# What a family's forward does to the logits between its head and its loss (read from the installed
# transformers' modeling files); each entry turns the loaded model into that step.
AFTER_HEAD: dict[str, Callable[[Any], Transform]] = {
    "paligemma": lambda m: _softcap(getattr(m.config.get_text_config(), "final_logit_softcapping", None)),
    "mistral_large4": lambda m: _softcap(m.config.get_text_config().final_logit_softcapping),
    "granite4_vision": lambda m: functools.partial(_div, by=m.config.text_config.logits_scaling),
    "hyperclovax_vision_v2": lambda m: functools.partial(_mul, by=m.config.text_config.logits_scaling),
}
# `logits = self.<head>(hidden_states)`, and what else that line does to them; then the lines a
# forward may hold between it and its loss call.
_HEAD_LINE = re.compile(r"^logits = self\.(\w+)\(hidden_states(?:\[[^\]]*\])?\)(.*)$")
_HARMLESS = re.compile(r"^(#.*|loss = None|if labels is not None:|)$")


def _div(logits: Any, by: float) -> Any:
    return logits / by


def _mul(logits: Any, by: float) -> Any:
    return logits * by


def unwrap(model: Any) -> Any:
    """The transformers model under peft's (and DDP's) wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _standard_loss(base: Any) -> bool:
    from transformers.loss.loss_utils import LOSS_MAPPING

    return base.loss_function is LOSS_MAPPING["ForCausalLM"]


def _plain_reason(base: Any, model_type: str, head_path: str | None) -> str | None:
    """Why this model keeps the plain loss (None: the chunked loss reproduces it)."""
    cls = type(base).__name__
    if head_path is None:
        return f"{cls} has no output head to call per chunk"
    if not _standard_loss(base):
        return f"{cls} has its own loss function"
    try:
        source = inspect.getsource(type(base).forward)
    except (OSError, TypeError):
        return f"the source of {cls}.forward cannot be read"
    lines = [line.strip() for line in source.splitlines()]
    heads = [(i, m.group(1)) for i, m in enumerate(map(_HEAD_LINE.match, lines)) if m]
    calls = [i for i, line in enumerate(lines) if "self.loss_function(" in line]
    if len(heads) != 1 or heads[0][1] != head_path or not calls or calls[0] < heads[0][0]:
        return f"{cls}.forward does not compute its loss from `logits = self.{head_path}(hidden_states)`"
    if model_type not in AFTER_HEAD:
        rest = _HEAD_LINE.match(lines[heads[0][0]]).group(2).strip()
        extra = [rest] if rest else []
        extra += [line for line in lines[heads[0][0] + 1 : calls[0]] if not _HARMLESS.match(line)]
        if extra:
            return f"{cls}.forward changes the logits after its head (`{extra[0]}`)"
    return None


@dataclass
class ChunkedLoss:
    """Installs the swap for one forward: `with loss.installed(model): model(**inputs).loss`."""

    head_owner: str  # the module that holds the head, and the head's attribute name there
    head_name: str
    transform: Transform
    vocab_size: int
    rows: int | None = None  # rows per chunk; None: memory.chunk_rows (>= 2^22 logits, <= 8 chunks)

    @contextlib.contextmanager
    def installed(self, model: Any) -> Iterator[None]:
        base = unwrap(model)
        owner = base.get_submodule(self.head_owner)
        head = getattr(owner, self.head_name)
        capture = Capture()
        had_own = "_loss_function" in base.__dict__
        previous = base.__dict__.get("_loss_function")
        rows = self.rows
        setattr(owner, self.head_name, capture)
        base.loss_function = functools.partial(
            chunked_causal_lm_loss,
            capture=capture,
            head=head,
            transform=self.transform,
            rows=rows,
            vocab=self.vocab_size,
        )
        try:
            yield
        finally:
            setattr(owner, self.head_name, head)
            if had_own:
                base._loss_function = previous
            else:
                del base._loss_function

    @contextlib.contextmanager
    def head_captured(self, model: Any) -> Iterator[tuple[Capture, Any]]:
        """The head swapped for the pass-through alone (the model's loss untouched): a forward
        without labels leaves the head's input in the capture, for log-probs computed per chunk."""
        owner = unwrap(model).get_submodule(self.head_owner)
        head = getattr(owner, self.head_name)
        capture = Capture()
        setattr(owner, self.head_name, capture)
        try:
            yield capture, head
        finally:
            setattr(owner, self.head_name, head)


def chunked_loss_for(model: Any) -> tuple[ChunkedLoss | None, str | None]:
    """The chunked loss for this model, or None and why it keeps the plain one."""
    base = unwrap(model)
    model_type = getattr(base.config, "model_type", "")
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    path = next((name for name, module in base.named_modules() if module is head and name), None)
    reason = _plain_reason(base, model_type, path)
    if reason is not None or path is None:
        return None, reason
    owner, _, attr = path.rpartition(".")
    transform = AFTER_HEAD[model_type](base) if model_type in AFTER_HEAD else None
    return ChunkedLoss(owner, attr, transform, int(base.config.get_text_config().vocab_size)), None


def chunked_causal_lm_loss(
    logits: Any,
    labels: Any,
    vocab_size: int | None = None,
    num_items_in_batch: Any = None,
    ignore_index: int = -100,
    shift_labels: Any = None,
    *,
    capture: Capture,
    head: Any,
    transform: Transform,
    rows: int | None,
    vocab: int,
    **kwargs: Any,
) -> Any:
    """transformers' ForCausalLMLoss (position t predicts t+1, -100 ignored, fp32, a sum over
    `num_items_in_batch` or a mean over counted tokens) computed from the head's input, which the
    pass-through captured; `logits` is only that pass-through's output and is not used."""
    hidden = capture.hidden
    capture.hidden = None
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden.device)
    keep = (targets != ignore_index).nonzero().squeeze(-1)
    states = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
    targets = targets.index_select(0, keep)
    piece = functools.partial(_chunk_loss, head=head, transform=transform)
    rows = rows or chunk_rows(targets.numel(), vocab)
    if not any(p.requires_grad for p in head.parameters()):
        total = _FrozenHeadLoss.apply(states, targets, piece, rows)
    else:  # a head that trains needs its own gradients: each chunk recomputed in backward
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, targets.numel(), rows):
            total = total + checkpoint(
                piece, states[start : start + rows], targets[start : start + rows], use_reentrant=False
            )
    if num_items_in_batch is None:
        return total / targets.numel()  # no counted token: 0/0, nan, as the model's own mean
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _chunk_loss(states: Any, targets: Any, *, head: Any, transform: Transform) -> Any:
    logits = head(states)
    if transform is not None:
        logits = transform(logits)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


class _FrozenHeadLoss(torch.autograd.Function):
    """The summed loss of a frozen head, chunk by chunk, with the gradient of its input taken in
    the same pass (as Liger's fused linear cross-entropy does): nothing is kept for backward but
    that gradient, and the head runs once per chunk instead of twice under checkpoint."""

    @staticmethod
    def forward(ctx: Any, states: Any, targets: Any, piece: Callable[..., Any], rows: int) -> Any:
        grad = torch.zeros_like(states) if states.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=states.device)
        for start in range(0, targets.numel(), rows):
            chunk = states[start : start + rows].detach().requires_grad_(grad is not None)
            with torch.enable_grad():
                loss = piece(chunk, targets[start : start + rows])
            if grad is not None:
                grad[start : start + rows] = torch.autograd.grad(loss, chunk)[0]
            total += loss.detach()
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        return total

    @staticmethod
    def backward(ctx: Any, upstream: Any) -> Any:
        (grad,) = ctx.saved_tensors
        return (grad * upstream.to(grad.dtype) if grad.numel() else None), None, None, None


class Capture(nn.Module):
    """Stands in for the head during the forward: keeps its input for the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: Any = None

    def forward(self, hidden: Any) -> Any:
        self.hidden = hidden
        # what the forward sees as `logits`; detached, so nothing it does with them is recorded
        return hidden.detach()
