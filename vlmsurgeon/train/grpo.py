"""GRPO on the SFT chain (TRL's GRPOTrainer is the peer): each step samples G answers per prompt
from the policy as it is (transformers `generate`, KV cache, the group in one call), scores them
with the run's reward functions, turns the scores into group-relative advantages, and trains on
the prompt + answer sequences through the run's own collation, the answer tokens' log-probs taken
from the head's input a few rows at a time (never the `batch × seq × vocab` logits). With β > 0
the reference is the policy with its adapter disabled (no second copy of the base)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlmsurgeon.data.collate import IGNORE, PREFIX_LM, pad_and_stack, prefix_types

from . import heap
from .loss import ChunkedLoss
from .objectives import GrpoKnobs, group_advantages, grpo_loss
from .preference import Reference, token_logps

# run config key -> GrpoKnobs field (the same names)
GRPO_KNOBS = (
    "num_generations",
    "max_completion_length",
    "temperature",
    "beta",
    "epsilon",
    "loss_type",
    "importance_sampling",
)
COMPLETIONS = "completions.jsonl"


def grpo_knobs(opts: Any) -> GrpoKnobs:
    """The run's knobs: what it set, TRL's GRPOConfig defaults for the rest."""
    return dataclasses.replace(GrpoKnobs(), **{k: getattr(opts, k) for k in GRPO_KNOBS if getattr(opts, k) is not None})


def grpo_record(opts: Any) -> dict[str, Any]:
    """What run.json records (and `--resume` compares): every knob, and each reward by its spec
    and, for the user's own functions, the hash of the file they come from."""
    knobs = dataclasses.asdict(grpo_knobs(opts))
    rewards = []
    for spec in opts.reward or []:
        entry: dict[str, Any] = {"spec": spec}
        path = spec.split("=", 1)[0].rsplit(":", 1)[0] if ":" in spec else None
        if path and Path(path).expanduser().is_file():
            entry["sha256"] = hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
        rewards.append(entry)
    return {**knobs, "reward": rewards, "completions_every": opts.completions_every or 10}


class PromptCollator:
    """GRPO's batch is its prompts: the answers are sampled at each step, from the policy as it
    is then, so the batch hands the rows over and the objective collates prompt + answer."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.seq_len = collator.seq_len

    def __getattr__(self, name: str) -> Any:
        return getattr(self.collator, name)

    def __call__(self, samples: list[Any]) -> dict[str, Any]:
        return {"samples": list(samples)}


@dataclasses.dataclass
class Rollout:
    """One step's sampled answers: the training batch (prompt + answer sequences, answers
    labelled), the advantages, and what is logged."""

    batch: dict[str, Any]
    advantages: torch.Tensor
    metrics: dict[str, float]
    records: list[dict[str, Any]]
    tokens: int
    images: bool


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Where an answer ends: the model's generation config's end tokens and the tokenizer's, those
    the vocabulary holds (a config may name an id of a larger tokenizer)."""
    config = getattr(model, "generation_config", None)
    ids = getattr(config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return [i for i in ids if 0 <= i < len(tokenizer)]


def _media_tokens(collator: Any) -> list[int]:
    """The processor's media placeholder ids (image, video, and any listed expansion tokens)."""
    ids = {i for i in collator.media_ids.values() if i is not None}
    for kind in ("image", "video"):
        ids.update(i for i in getattr(collator.processor, f"{kind}_token_ids", None) or [] if isinstance(i, int))
    return sorted(ids)


def _trl_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as TRL hands prompts to reward functions: role and content parts, no flags."""
    return {"role": message["role"], "content": [dict(p) for p in message["content"]]}


def _sequence(prompt: dict[str, Any], completion: torch.Tensor, prefix_lm: bool) -> dict[str, Any]:
    """The prompt's encoding extended by one answer: answer tokens labelled, the prompt's other
    sequence tensors (mm_token_type_ids…) extended with zeros (text)."""
    length = prompt["input_ids"].shape[1]
    ids = torch.cat([prompt["input_ids"][0], completion.to(prompt["input_ids"].dtype)])[None]
    out: dict[str, Any] = {}
    for key, value in prompt.items():
        if key == "input_ids":
            out[key] = ids
        elif key == "attention_mask":
            out[key] = torch.ones_like(ids)
        elif torch.is_tensor(value) and value.dim() >= 2 and value.shape[0] == 1 and value.shape[1] == length:
            out[key] = F.pad(value, (0, 0) * (value.dim() - 2) + (0, completion.numel()))
        else:
            out[key] = value
    labels = torch.full_like(ids, IGNORE)
    labels[0, length:] = ids[0, length:]
    out["labels"] = labels
    if prefix_lm and "token_type_ids" in out:
        out["token_type_ids"] = prefix_types(labels)
    return out


def completion_logps(
    model: Any, inputs: dict[str, Any], chunked: ChunkedLoss | None, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per answer token: log p(token) under logits / temperature (as TRL scores GRPO), as (N, T)
    with its mask (1.0 where a token is scored), T the longest answer of the batch."""
    labels = inputs["labels"]
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    targets = F.pad(labels, (0, 1), value=IGNORE)[..., 1:]
    keep = targets != IGNORE
    if chunked is None:
        logits = model(**model_inputs, use_cache=False).logits
        picked = (logits[keep.to(logits.device)].float() / temperature).log_softmax(-1)
        values = picked.gather(-1, targets[keep].unsqueeze(-1).to(picked.device)).squeeze(-1)
    else:
        base = chunked.transform

        def tempered(logits: Any) -> Any:
            return (base(logits) if base is not None else logits) / temperature

        with chunked.head_captured(model) as (capture, head):
            model(**model_inputs, use_cache=False)
        hidden, capture.hidden = capture.hidden, None
        states = hidden[keep.to(hidden.device)]
        values = token_logps(states, targets[keep].to(hidden.device), head, tempered, chunked.vocab_size)
    counts = keep.sum(1)
    width = max(int(counts.max()), 1) if counts.numel() else 1
    column = (keep.cumsum(1) - 1)[keep]
    rows = keep.nonzero()[:, 0]
    logps = values.new_zeros(labels.shape[0], width).index_put(
        (rows.to(values.device), column.to(values.device)), values
    )
    mask = torch.zeros(labels.shape[0], width, device=values.device)
    mask[rows.to(values.device), column.to(values.device)] = 1.0
    return logps, mask


@dataclasses.dataclass
class GrpoObjective:
    """What a GRPO run computes per batch of prompts: sample, score, then TRL's loss."""

    knobs: GrpoKnobs
    rewards: list[Any]  # use.rewards.Reward
    collator: Any  # the run's SFT collator
    chunked: ChunkedLoss | None
    reference: Reference | None = None
    completions: Path | None = None  # RUN/completions.jsonl (main process)
    every: int = 10
    step: int = 0
    saw_image: bool = False
    tokens: int = 0
    name: str = "grpo"

    def begin_step(self, step: int) -> None:
        self.step = step

    def rollout(self, model: Any, samples: list[Any]) -> Rollout:
        """G answers per prompt from the policy in eval mode (no dropout, no graph), scored."""
        from transformers import GenerationConfig

        from vlmsurgeon.use.rewards import score

        knobs, collator = self.knobs, self.collator
        tokenizer = getattr(collator.processor, "tokenizer", collator.processor)
        wrapped = getattr(model, "module", model)
        eos = _eos_ids(wrapped, tokenizer)
        config = GenerationConfig(
            do_sample=True,
            temperature=knobs.temperature,
            top_p=1.0,
            top_k=0,
            max_new_tokens=knobs.max_completion_length,
            num_return_sequences=knobs.num_generations,
            eos_token_id=eos,
            pad_token_id=collator.pad_id,
            use_cache=True,
            # an answer is text: a media placeholder sampled into it would ask the model for an image
            # the row does not have (the training forward then fails), so none is ever sampled
            suppress_tokens=_media_tokens(collator) or None,
        )
        device = next(model.parameters()).device
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        sequences, prompts, completions, ids_list, rows, columns_rows, records = [], [], [], [], [], [], []
        clipped, images = 0, False
        training = model.training
        model.eval()
        try:
            for sample in samples:
                prompt = dict(collator.prompt_encoding(sample))
                images = images or any(k.startswith("pixel_values") for k in prompt)
                inputs = {
                    k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
                    for k, v in prompt.items()
                }
                with torch.no_grad(), heap.sampling():
                    out = wrapped.generate(**inputs, generation_config=config)
                new = out[:, prompt["input_ids"].shape[1] :].cpu()
                for row in new:
                    ends = torch.isin(row, torch.tensor(eos)).nonzero()
                    length = int(ends[0]) + 1 if len(ends) else row.numel()
                    clipped += int(not len(ends))
                    answer = row[:length]
                    sequences.append(_sequence(prompt, answer, type(collator.processor).__name__ in PREFIX_LM))
                    text = tokenizer.decode(answer, skip_special_tokens=True)
                    prompts.append([_trl_message(m) for m in sample.messages])
                    completions.append([{"role": "assistant", "content": text}])
                    ids_list.append(answer.tolist())
                    rows.append(sample.where)
                    columns_rows.append(getattr(sample, "columns", {}) or {})
                    records.append({"row": sample.where, "completion": text, "tokens": length})
        finally:
            model.train(training)
        names = sorted({k for c in columns_rows for k in c})
        columns = {k: [c.get(k) for c in columns_rows] for k in names}
        scores = score(self.rewards, prompts, completions, columns, rows, completion_ids=ids_list)
        weights = torch.tensor([r.weight for r in self.rewards], dtype=torch.float32)
        advantages, zero_spread = group_advantages(scores, weights, knobs.num_generations)
        batch = pad_and_stack(sequences, collator.pad_id, batch_aligned=collator.batch_aligned, packed=collator.packed)
        lengths = torch.tensor([len(i) for i in ids_list], dtype=torch.float32)
        metrics = _reward_metrics(self.rewards, scores, weights, zero_spread)
        metrics |= {
            "completions/mean_length": float(lengths.mean()),
            "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()),
            "completions/clipped_ratio": clipped / len(ids_list),
        }
        for record, rewards, advantage in zip(records, scores.tolist(), advantages.tolist(), strict=True):
            record["rewards"] = {r.name: (None if v != v else v) for r, v in zip(self.rewards, rewards, strict=True)}
            record["advantage"] = round(advantage, 6)
        tokens = int(batch["attention_mask"].sum())
        return Rollout(batch, advantages, metrics, records, tokens, images)

    def loss(self, model: Any, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        rollout = self.rollout(model, inputs["samples"])
        self.saw_image = self.saw_image or rollout.images
        self.tokens += rollout.tokens
        self._write(rollout, model.training)
        device = next(model.parameters()).device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in rollout.batch.items()}
        ref = None
        if self.knobs.beta != 0.0:  # first, so no graph ever holds a swapped-in tensor
            if self.reference is None:
                raise ValueError("grpo with beta > 0 needs a reference")
            with self.reference.active(model):
                ref, _ = completion_logps(model, batch, self.chunked, self.knobs.temperature)
        logps, mask = completion_logps(model, batch, self.chunked, self.knobs.temperature)
        loss, metrics = grpo_loss(self.knobs, logps, mask, rollout.advantages.to(logps.device), None, ref)
        return loss, {**rollout.metrics, **metrics}

    def _write(self, rollout: Rollout, training: bool) -> None:
        """RUN/completions.jsonl: every answer of the first step and of every N-th, for reading."""
        if self.completions is None or not training or (self.step != 1 and self.step % self.every):
            return
        with self.completions.open("a", encoding="utf-8") as fh:
            for record in rollout.records:
                fh.write(json.dumps({"step": self.step, **record}) + "\n")


def _reward_metrics(
    rewards: list[Any], scores: torch.Tensor, weights: torch.Tensor, zero: torch.Tensor
) -> dict[str, float]:
    """TRL's names: each function's mean and std over the answers it scored, the weighted total's."""
    out: dict[str, float] = {}
    for k, reward in enumerate(rewards):
        column = scores[:, k]
        out[f"rewards/{reward.name}/mean"] = float(torch.nanmean(column))
        out[f"rewards/{reward.name}/std"] = float(_nanstd(column))
    total = (scores * weights.unsqueeze(0)).nansum(dim=1)
    total[torch.isnan(scores).all(dim=1)] = torch.nan
    out["reward"] = float(torch.nanmean(total))
    out["reward_std"] = float(_nanstd(total))
    out["frac_reward_zero_std"] = float(zero.float().mean())
    return out


def _nanstd(values: torch.Tensor) -> torch.Tensor:
    count = int((~torch.isnan(values)).sum())
    if count < 2:
        return torch.tensor(float("nan"))
    mean = torch.nanmean(values)
    return (torch.nanmean((values - mean) ** 2) * count / (count - 1)).sqrt()


def make_objective(applied: Any, opts: Any, collator: Any, chunked: ChunkedLoss | None, run_dir: Path | None) -> Any:
    """The run's GRPO objective, its rewards parsed, its reference made when β > 0 (the start of a
    `--from` run, or the model with its adapter disabled), said in one line."""
    from vlmsurgeon.use.rewards import parse_rewards

    from .telemetry import say

    knobs = grpo_knobs(opts)
    rewards = parse_rewards(opts.reward or [])
    reference = Reference(applied.model, whole=bool(opts.from_run)) if knobs.beta != 0.0 else None
    objective = GrpoObjective(
        knobs,
        rewards,
        collator,
        chunked,
        reference,
        completions=run_dir / COMPLETIONS if run_dir is not None else None,
        every=opts.completions_every or 10,
    )
    scored = ", ".join(r.name + (f"×{r.weight:g}" if r.weight != 1 else "") for r in rewards)
    if reference is None:
        what = "none (beta 0: no KL term)"
    else:
        what = f"{opts.from_run} as it starts" if opts.from_run else "the model with its adapter disabled"
    say(
        f"objective grpo ({knobs.num_generations} answers per prompt, up to {knobs.max_completion_length} tokens, "
        f"temperature {knobs.temperature:g}, loss {knobs.loss_type}, {knobs.importance_sampling}-level ratios, "
        f"beta {knobs.beta:g}); rewards: {scored}; reference: {what}"
    )
    return objective


__all__ = ["GrpoObjective", "PromptCollator", "completion_logps", "grpo_knobs", "grpo_record"]
