"""`--packing`: rows packed into sequences of at most `--seq-len` tokens (first-fit decreasing over
a seeded shuffled window), position ids restarting at each row so that transformers builds a mask
that keeps rows apart (masking_utils.find_packed_sequence_indices: only with no attention mask),
labels cut at each boundary, media in row order. M-RoPE families get their own rope index per row."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vlmsurgeon.errors import BadInput, RuntimeFailure
from vlmsurgeon.model.packing import packing_blocker, packing_kind

from .collate import IGNORE, Collator, _pad_to, pad_and_stack
from .rows import Sample

# Rows shuffled with the run's seed, then packed a window at a time: a larger window fills
# sequences better, a smaller one keeps a sequence's rows from all being alike in length.
WINDOW = 1024
# The real tokens of a packed batch (padding excluded), for tokens/s; never reaches the model.
REAL_TOKENS = "vlmsurgeon_real_tokens"


def plan_packs(lengths: Sequence[int], seq_len: int, seed: int, window: int = WINDOW) -> list[list[int]]:
    """Row indices per packed sequence: the rows in a seeded shuffle, then each window of them
    first-fit decreasing into sequences of at most `seq_len` tokens (a row longer than that is cut
    to it by the collator, and fills one alone). Same lengths and seed, same packs."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    packs: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -min(lengths[i], seq_len))
        bins: list[list[int]] = []
        room: list[int] = []
        for i in chunk:
            size = min(lengths[i], seq_len)
            slot = next((b for b, free in enumerate(room) if free >= size), None)
            if slot is None:
                bins.append([i])
                room.append(seq_len - size)
            else:
                bins[slot].append(i)
                room[slot] -= size
        packs.extend(bins)
    return packs


@dataclass(frozen=True)
class Padding:
    """Padding share (padding tokens / tokens computed) at a batch size, and sequences per epoch,
    unpacked and packed."""

    before: float
    after: float
    sequences_before: int
    sequences_after: int
    batch_size: int
    seq_len: int

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "padding_share": {"unpacked": round(self.before, 4), "packed": round(self.after, 4)},
            "sequences_per_epoch": {"unpacked": self.sequences_before, "packed": self.sequences_after},
        }

    def line(self) -> str:
        return (
            f"packing (batch {self.batch_size}, --seq-len {self.seq_len}): padding {self.before:.1%} → "
            f"{self.after:.1%} of tokens computed; {self.sequences_before} → {self.sequences_after} "
            "sequences per epoch"
        )


def padding_share(sizes: Sequence[int], batch_size: int, seed: int) -> float:
    """Padding / tokens computed when sequences of these sizes are batched `batch_size` at a time
    in a seeded shuffle, each batch padded to its longest."""
    order = list(sizes)
    random.Random(seed).shuffle(order)
    computed = real = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        computed += max(batch) * len(batch)
        real += sum(batch)
    return (computed - real) / computed if computed else 0.0


def padding(lengths: Sequence[int], seq_len: int, batch_size: int, seed: int) -> Padding:
    """What packing changes for these rows at this batch size and `--seq-len`."""
    rows = [min(n, seq_len) for n in lengths]
    packs = plan_packs(lengths, seq_len, seed)
    sizes = [sum(rows[i] for i in pack) for pack in packs]
    return Padding(
        padding_share(rows, batch_size, seed),
        padding_share(sizes, batch_size, seed),
        len(rows),
        len(packs),
        batch_size,
        seq_len,
    )


def rope_positions(model: Any) -> Callable[[dict[str, Any]], Any] | None:
    """The family's own 3-D rope index for one row (shape (3, 1, seq)), from the module of the
    loaded model that has `get_rope_index`; None when it has none."""
    owner = next((m for m in model.modules() if callable(getattr(type(m), "get_rope_index", None))), None)
    if owner is None:
        return None
    taken = set(inspect.signature(owner.get_rope_index).parameters) - {"self", "kwargs"}

    def positions(row: dict[str, Any]) -> Any:
        import torch

        given = {k: v for k, v in row.items() if k in taken and k != "attention_mask"}
        given["attention_mask"] = torch.ones_like(row["input_ids"])
        with torch.no_grad():
            return owner.get_rope_index(**given)[0]

    return positions


class PackedCollator:
    """Collates packs (lists of samples; a single sample is a pack of one) into a batch with no
    attention mask: rows of a pack joined along the sequence, each with positions from 0, its first
    label -100 (the previous row's last token must not predict it); a pack shorter than the batch's
    longest gets a padding segment, itself positioned from 0, labels -100. Media in row order."""

    def __init__(self, collator: Collator, kind: str) -> None:
        self.collator = collator
        self.kind = kind  # PACKS' value: "positions" or "rope"
        self.positions: Callable[[dict[str, Any]], Any] | None = None  # set once the model loads (rope)
        self.batch_aligned = collator.batch_aligned

    def bind(self, model: Any) -> None:
        """The loaded model's rope index, for a "rope" family."""
        if self.kind == "rope":
            self.positions = rope_positions(model)
            if self.positions is None:
                raise RuntimeFailure(f"--packing: {type(model).__name__} has no get_rope_index to position packed rows")

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        import torch

        packs = [self.pack([item] if isinstance(item, Sample) else list(item)) for item in items]
        longest = max(p["input_ids"].shape[1] for p in packs)
        real = sum(p["input_ids"].shape[1] for p in packs)
        packs = [self._padded(p, longest) for p in packs]
        positions = [p.pop("position_ids") for p in packs]
        batch = pad_and_stack(
            packs, self.collator.pad_id, batch_aligned=self.batch_aligned, packed=self.collator.packed
        )
        batch["position_ids"] = torch.cat(positions, dim=-2)
        batch[REAL_TOKENS] = torch.tensor(real)
        return batch

    def pack(self, samples: list[Sample]) -> dict[str, Any]:
        """One packed sequence, a batch of one, from its rows' encodings."""
        rows = [self._row(self.collator.encode_sample(s)) for s in samples]
        lengths = [r["input_ids"].shape[1] for r in rows]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        out: dict[str, Any] = {}
        for key in keys:
            present = [r[key] for r in rows if key in r]
            if not all(hasattr(v, "dim") for v in present):
                out[key] = present[0] if len(present) == 1 else present
            elif key == "position_ids" or all(
                _along(r[key], n) for r, n in zip(rows, lengths, strict=True) if key in r
            ):
                out[key] = _join_sequence(key, rows, lengths)
            else:
                out[key] = self._join_media(key, present)
        return out

    def _row(self, encoded: dict[str, Any]) -> dict[str, Any]:
        import torch

        row = {k: v for k, v in encoded.items() if k != "attention_mask"}
        length = row["input_ids"].shape[1]
        row["labels"] = row["labels"].clone()
        row["labels"][:, 0] = IGNORE
        text = torch.arange(length)[None]
        if self.kind == "rope":
            if self.positions is None:
                raise RuntimeFailure("--packing: packed M-RoPE rows need the model's rope index (PackedCollator.bind)")
            row["position_ids"] = torch.cat([text[None], self.positions(encoded).to(text.dtype)], dim=0)
        else:
            row["position_ids"] = text
        return row

    def _join_media(self, key: str, present: list[Any]) -> Any:
        """A pack's media: along the image axis for batch-aligned processors ((1, images, …)), along
        the processor's own dimension for those that pack a batch's media (collate.PACKED), else
        along the first dimension; other dimensions zero-padded to the largest."""
        import torch

        if key in self.collator.packed:
            return torch.cat(present, dim=self.collator.packed[key])
        axis = 1 if self.batch_aligned else 0
        rest = tuple(max(v.shape[d] for v in present) for d in range(axis + 1, present[0].dim()))
        return torch.cat([_pad_to(v, (*v.shape[: axis + 1], *rest), 0) for v in present], dim=axis)

    def _padded(self, pack: dict[str, Any], longest: int) -> dict[str, Any]:
        """The pack with a padding segment up to `longest` tokens (positions from 0, labels -100)."""
        import torch

        length = pack["input_ids"].shape[1]
        extra = longest - length
        if not extra:
            return pack
        out = dict(pack)
        for key, value in pack.items():
            if key == "position_ids":
                out[key] = torch.cat([value, torch.arange(extra).expand(*value.shape[:-1], extra)], dim=-1)
            elif hasattr(value, "dim") and _along(value, length):
                fill = self.collator.pad_id if key == "input_ids" else (IGNORE if key == "labels" else 0)
                out[key] = _pad_to(value, (1, longest, *value.shape[2:]), fill)
        return out


def _along(value: Any, length: int) -> bool:
    """A tensor that runs along the sequence: (1, length, …)."""
    return value.dim() >= 2 and value.shape[0] == 1 and value.shape[1] == length


def _join_sequence(key: str, rows: list[dict[str, Any]], lengths: list[int]) -> Any:
    """Sequence tensors of the rows end to end; a row without the key gets zeros."""
    import torch

    present = next(r[key] for r in rows if key in r)
    dim = present.dim() - 1 if key == "position_ids" else 1
    parts = []
    for row, n in zip(rows, lengths, strict=True):
        if key in row:
            parts.append(row[key])
        else:
            shape = list(present.shape)
            shape[dim] = n
            parts.append(torch.zeros(shape, dtype=present.dtype))
    return torch.cat(parts, dim=dim)


def packed_rows(samples: list[Sample], lengths: Sequence[int], seq_len: int, seed: int) -> list[tuple[Sample, ...]]:
    """The training set as packs, for the Trainer's dataset (its sampler shuffles them each epoch)."""
    return [tuple(samples[i] for i in pack) for pack in plan_packs(lengths, seq_len, seed)]


def check_packing(model_type: str) -> str:
    """How this family's rows are packed (model/packing.PACKS); one line, exit 2, when they cannot be."""
    reason = packing_blocker(model_type)
    if reason is not None:
        raise BadInput(
            f"--packing: {model_type} rows cannot be packed: {reason}",
            "drop --packing; `vlmsurgeon tiny --list` shows the families that pack",
        )
    return str(packing_kind(model_type))


def pack_rows(
    rows: list[Sample], report: Any, collator: Collator, model_type: str, batch_size: int, seed: int
) -> tuple[list[tuple[Sample, ...]], PackedCollator]:
    """The checked rows as packs and the collator that joins them; the report gains what packing
    changes (padding share before and after, sequences per epoch). `report.tokens["total"]` holds
    each usable row's length, in order (data.check)."""
    lengths = report.tokens["total"]
    report.packing = padding(lengths, collator.seq_len, batch_size, seed)
    return packed_rows(rows, lengths, collator.seq_len, seed), PackedCollator(collator, check_packing(model_type))
