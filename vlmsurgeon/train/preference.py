"""Preference objectives on the SFT chain: pairs collated as [chosen…, rejected…] through the
same collator (one media set per row, given to both sides), answer log-probs summed per sequence
from the head's input a few rows at a time (never the `batch × seq × vocab` logits), and the
reference as the policy with its adapter disabled and its fully trained parts at their start."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vlmsurgeon.data.preference import pair_conversations
from vlmsurgeon.errors import BadInput
from vlmsurgeon.plan.memory import chunk_rows
from vlmsurgeon.ship.provenance import ADAPTER_DIR, COMPONENTS_FILE

from .loss import ChunkedLoss, Transform
from .objectives import PAIRED, REFERENCE, Knobs, Logps, default_knobs, kto_loss, pair_loss
from .runconfig import KNOBS

_FIELD = {
    "beta": "beta",
    "simpo_gamma": "gamma",
    "desirable_weight": "desirable_weight",
    "undesirable_weight": "undesirable_weight",
}


def knobs_for(opts: Any) -> Knobs:
    """The run's knobs: what it set, TRL's defaults for the rest."""
    given = {_FIELD[k]: getattr(opts, k) for k in _FIELD if getattr(opts, k) is not None}
    return dataclasses.replace(default_knobs(opts.objective), **given)


def resolved_knobs(opts: Any) -> dict[str, float]:
    """The knobs this objective reads, defaults filled in, by option name (run.json, the summary)."""
    knobs = knobs_for(opts)
    return {k: getattr(knobs, _FIELD[k]) for k in _FIELD if opts.objective in KNOBS[k]}


class PairCollator:
    """A batch of B pairs as 2B sequences, chosen first, through the run's own collator: every
    label, pad and media rule is the SFT one, and each side's media come from the same row."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.seq_len = collator.seq_len
        self.reference: dict[int, tuple[float, float]] | None = None  # precomputed, by row

    def __getattr__(self, name: str) -> Any:  # render, encode, stats…: the SFT collator's
        return getattr(self.collator, name)

    def __call__(self, samples: list[Any]) -> dict[str, Any]:
        sides = [pair_conversations(s) for s in samples]
        batch = self.collator([c for c, _ in sides] + [r for _, r in sides])
        if self.reference is not None:  # --precompute-ref: [chosen…, rejected…], as the batch
            ref = [self.reference[id(s)] for s in samples]
            batch["ref_logps"] = torch.tensor([c for c, _ in ref] + [r for _, r in ref], dtype=torch.float32)
        return batch


class LabelCollator:
    """KTO's batch: the B labelled completions, and under "kl" the B mismatched pairs TRL estimates
    its KL baseline from (each prompt with the previous row's completion), both through the run's
    own collator; "desirable" holds the labels."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.seq_len = collator.seq_len

    def __getattr__(self, name: str) -> Any:
        return getattr(self.collator, name)

    def __call__(self, samples: list[Any]) -> dict[str, Any]:
        answers = [s.messages[-1] for s in samples]
        shifted = [answers[-1], *answers[:-1]]
        mismatched = [
            dataclasses.replace(s, messages=[*s.messages[:-1], answer], label=None)
            for s, answer in zip(samples, shifted, strict=True)
        ]
        batch = self.collator([dataclasses.replace(s, label=None) for s in samples])
        batch["kl"] = self.collator(mismatched)
        batch["desirable"] = torch.tensor([bool(s.label) for s in samples])
        return batch


def _chunk_logps(states: Any, targets: Any, head: Any, transform: Transform) -> Any:
    logits = head(states)
    if transform is not None:
        logits = transform(logits)
    return logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_logps(states: Any, targets: Any, head: Any, transform: Transform, vocab: int) -> Any:
    """log p(target) at each position, the head run on a few rows at a time; with a graph, each
    chunk's logits are recomputed in backward instead of kept."""
    rows = chunk_rows(targets.numel(), vocab)
    pieces = []
    for start in range(0, targets.numel(), rows):
        chunk, wanted = states[start : start + rows], targets[start : start + rows]
        if torch.is_grad_enabled() and chunk.requires_grad:
            pieces.append(checkpoint(_chunk_logps, chunk, wanted, head, transform, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(chunk, wanted, head, transform))
    return torch.cat(pieces) if pieces else states.new_zeros(0, dtype=torch.float32)


def _per_sequence(values: Any, rows: Any, batch: int) -> Logps:
    sums = torch.zeros(batch, dtype=torch.float32, device=values.device).index_add(0, rows, values)
    tokens = torch.bincount(rows, minlength=batch).to(torch.float32)
    return Logps(sums, tokens)


def answer_logps(model: Any, inputs: dict[str, Any], chunked: ChunkedLoss | None) -> Logps:
    """Per sequence: the summed log-probs of its labelled tokens (position t predicts t+1) and
    how many there are. Without a chunked head (families whose forward changes the logits in a
    way the chunked loss cannot redo) the model's own logits are used."""
    labels = inputs["labels"]
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    targets = F.pad(labels, (0, 1), value=-100)[..., 1:]
    keep = targets != -100
    rows = keep.nonzero()[:, 0]
    if chunked is None:
        logits = model(**model_inputs, use_cache=False).logits
        picked = logits[keep].float().log_softmax(-1)
        values = picked.gather(-1, targets[keep].unsqueeze(-1).to(picked.device)).squeeze(-1)
        return _per_sequence(values, rows.to(values.device), labels.shape[0])
    with chunked.head_captured(model) as (capture, head):
        model(**model_inputs, use_cache=False)
    hidden, capture.hidden = capture.hidden, None
    states = hidden[keep.to(hidden.device)]
    values = token_logps(states, targets[keep].to(hidden.device), head, chunked.transform, chunked.vocab_size)
    return _per_sequence(values, rows.to(values.device), labels.shape[0])


class Reference:
    """The reference policy without a second copy of the base. A fresh run: the model with its
    LoRA adapter disabled (peft keeps the start of what trains in full as modules_to_save), and a
    frozen start copy of any other tensor trained in full. A run that continues another (`--from`):
    a start copy of every trained tensor, the adapter included (TRL's second "ref" adapter, without
    peft's bookkeeping). The copies are the only memory it costs; the run says how much. The
    reference runs in eval mode: no dropout, the same log-probs every time."""

    def __init__(self, model: Any, *, whole: bool = False) -> None:
        self.whole = whole
        own = ("lora_", "modules_to_save")
        self.start = {
            name: param.detach().clone()
            for name, param in model.named_parameters()
            if param.requires_grad and (whole or not any(mark in name for mark in own))
        }

    @property
    def copied(self) -> tuple[int, int]:
        """Parameters and bytes of the start copies."""
        return (
            sum(t.numel() for t in self.start.values()),
            sum(t.numel() * t.element_size() for t in self.start.values()),
        )

    @contextlib.contextmanager
    def active(self, model: Any) -> Iterator[None]:
        params = dict(model.named_parameters())
        current = {name: params[name].data for name in self.start}
        wrapped = getattr(model, "module", model)
        peft = hasattr(wrapped, "disable_adapter") and not self.whole
        disable = wrapped.disable_adapter() if peft else contextlib.nullcontext()
        training = model.training
        try:
            model.eval()
            with torch.no_grad():
                for name, start in self.start.items():
                    params[name].data = start
                with disable:
                    yield
        finally:
            model.train(training)
            with torch.no_grad():
                for name, data in current.items():
                    params[name].data = data


def from_record(from_run: str | None) -> dict[str, Any] | None:
    """What `--from` names in run.json: the run and the hash of the tensors it starts from."""
    if from_run is None:
        return None
    import hashlib

    run = Path(from_run).expanduser().resolve()
    digest = hashlib.sha256()
    for name in (f"{ADAPTER_DIR}/adapter_model.safetensors", COMPONENTS_FILE):
        if (run / name).is_file():
            digest.update(name.encode() + (run / name).read_bytes())
    return {"path": str(run), "sha256": digest.hexdigest()}


def check_from(from_run: str, base: str, preset: Any) -> None:
    """Before any weight loads: RUN is a finished run of the same base that trained the same
    components the same way (its tensors then fit this run's one to one)."""
    from vlmsurgeon.recipe.preset import Preset

    run = Path(from_run).expanduser()
    record_path = run / "vlmsurgeon.json"
    if not record_path.is_file():
        raise BadInput(
            f"--from {from_run}: not a finished run (no vlmsurgeon.json)", "point at a finetune -o directory"
        )
    try:
        record = json.loads(record_path.read_text())
        recorded_base = Path(record["base"]["reference"]).expanduser().resolve()
        recorded_preset = Preset.model_validate(record["preset"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"--from {from_run}: unreadable run record ({exc})", "point at a finetune -o directory") from exc
    if recorded_base != Path(base).expanduser().resolve():
        raise BadInput(
            f"--from {from_run}: trained on {recorded_base}, not {Path(base).expanduser().resolve()}",
            "train on the base the run was trained on",
        )
    what = ("components", "quantize")
    if recorded_preset.model_dump(include=set(what)) != preset.model_dump(include=set(what)):
        raise BadInput(
            f"--from {from_run}: it trained with preset '{recorded_preset.name}', which trains other components "
            f"or another LoRA than this run's '{preset.name}'",
            f"pass the preset or --freeze it was trained with (its vlmsurgeon.json: preset {recorded_preset.name})",
        )


def start_from(applied: Any, from_run: str) -> int:
    """Load RUN's trained tensors into the freshly prepared model: the adapter by exact name, the
    tensors trained in full outside it by base name. Every trained tensor must get a value."""
    from vlmsurgeon.recipe.freeze import base_name
    from vlmsurgeon.ship.trained import exact_adapter_state, load_tensors

    run = Path(from_run).expanduser()
    model = applied.model
    copied = 0
    adapter = run / ADAPTER_DIR / "adapter_model.safetensors"
    if adapter.is_file():
        copied += exact_adapter_state(model, adapter)
    components = run / COMPONENTS_FILE
    if components.is_file():
        full = load_tensors(components)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad and base_name(name) in full:
                    param.copy_(full[base_name(name)])
                    copied += 1
    trained = sum(1 for p in model.parameters() if p.requires_grad)
    if copied != trained:
        raise BadInput(
            f"--from {from_run}: {copied} of this run's {trained} trained tensors are in it",
            "pass the preset or --freeze the run was trained with",
        )
    return copied


def precompute(objective: Objective, model: Any, rows: list[Any], collator: Any, batch_size: int) -> None:
    """`--precompute-ref`: the reference's answer log-probs for every pair, once, before training;
    the collator hands them to each batch and the reference (and its copies) is let go."""
    assert objective.reference is not None
    table: dict[int, tuple[float, float]] = {}
    with objective.reference.active(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            inputs = _to_device(collator.collator([side for s in chunk for side in pair_conversations(s)]), model)
            logps = answer_logps(model, inputs, objective.chunked)
            for k, sample in enumerate(chunk):
                table[id(sample)] = (float(logps.sum[2 * k]), float(logps.sum[2 * k + 1]))
    collator.reference = table
    objective.reference = None


def _to_device(batch: dict[str, Any], model: Any) -> dict[str, Any]:
    device = next(model.parameters()).device
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@dataclasses.dataclass
class Objective:
    """What a preference run computes per batch: the loss and TRL-named metrics."""

    name: str
    knobs: Knobs
    chunked: ChunkedLoss | None
    reference: Reference | None = None

    def loss(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if self.name == "kto":
            return self._kto(model, inputs)
        if self.name not in PAIRED:
            raise ValueError(f"objective {self.name}: not a preference objective")
        ref = None
        precomputed = inputs.get("ref_logps")
        inputs = {k: v for k, v in inputs.items() if k != "ref_logps"}  # the caller's batch stays whole
        if self.name in REFERENCE and precomputed is not None:
            ref = Logps(precomputed.to(torch.float32), torch.zeros_like(precomputed))
        elif self.name in REFERENCE:  # first, so no graph ever holds a swapped-in tensor
            if self.reference is None:
                raise ValueError(f"objective {self.name} needs a reference")
            with self.reference.active(model):
                ref = answer_logps(model, inputs, self.chunked)
        policy = answer_logps(model, inputs, self.chunked)
        half = policy.sum.shape[0] // 2
        chosen, rejected = _halves(policy, half)
        ref_chosen, ref_rejected = _halves(ref, half) if ref is not None else (None, None)
        return pair_loss(self.name, self.knobs, chosen, rejected, ref_chosen, ref_rejected)

    def _kto(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """TRL's KTO: the completions' log-probs against the reference's, with the KL baseline from
        the mismatched pairs (policy and reference, no graph), averaged over every process."""
        batch = {k: v for k, v in inputs.items() if k not in ("kl", "desirable")}
        mismatched, desirable = inputs["kl"], inputs["desirable"]
        if self.reference is None:
            raise ValueError("objective kto needs a reference")
        with self.reference.active(model):
            ref = answer_logps(model, batch, self.chunked)
            ref_kl = answer_logps(model, mismatched, self.chunked)
        with torch.no_grad():
            kl = answer_logps(model, mismatched, self.chunked)
        kl, ref_kl = _everywhere(kl), _everywhere(ref_kl)
        policy = answer_logps(model, batch, self.chunked)
        return kto_loss(self.knobs, policy, desirable, ref, kl, ref_kl)


def _everywhere(logps: Logps) -> Logps:
    """Every process's rows (the same count each): TRL averages the KL baseline over processes."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return logps
    sums = [torch.empty_like(logps.sum) for _ in range(dist.get_world_size())]
    tokens = [torch.empty_like(logps.tokens) for _ in range(dist.get_world_size())]
    dist.all_gather(sums, logps.sum.contiguous())
    dist.all_gather(tokens, logps.tokens.contiguous())
    return Logps(torch.cat(sums), torch.cat(tokens))


def _halves(logps: Logps, half: int) -> tuple[Logps, Logps]:
    return (
        Logps(logps.sum[:half], logps.tokens[:half]),
        Logps(logps.sum[half:], logps.tokens[half:]),
    )


__all__ = ["LabelCollator", "Objective", "PairCollator", "Reference", "answer_logps", "pair_conversations"]
