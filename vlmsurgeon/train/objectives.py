"""Preference objectives as pure losses on per-sequence log-prob sums: DPO and IPO (TRL's DPOTrainer), ORPO, SimPO
(TRL's CPOTrainer) and KTO; and GRPO on per-token log-probs (with GSPO's sequence-level ratios; TRL's GRPOTrainer).
Each equals TRL 1.16's loss and logged metrics on the same inputs (TRL is the oracle in tests/test_objectives.py and
tests/test_grpo_oracle.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

OBJECTIVES = ("sft", "dpo", "ipo", "orpo", "simpo", "kto", "grpo")
PAIRED = frozenset({"dpo", "ipo", "orpo", "simpo"})  # rows are prompt + chosen + rejected
REFERENCE = frozenset({"dpo", "ipo", "kto"})  # need a reference model's log-probs


@dataclass(frozen=True)
class Logps:
    """Per-sequence log-probs: `sum` of the scored tokens' log-probs (fp32, (B,)) and how many tokens (B,)."""

    sum: torch.Tensor
    tokens: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """Average log-prob per token; a sequence with no tokens averages to 0 instead of 0/0."""
        return self.sum / self.tokens.clamp(min=1)


@dataclass(frozen=True)
class Knobs:
    beta: float
    gamma: float = 0.0  # SimPO's target reward margin γ (TRL CPOConfig.simpo_gamma)
    desirable_weight: float = 1.0  # KTO
    undesirable_weight: float = 1.0  # KTO


def default_knobs(objective: str) -> Knobs:
    """TRL 1.16's config defaults for `objective`:
    dpo, ipo: `trl.DPOConfig.beta` = 0.1 (one config for both; ipo reads β as τ).
    orpo: `trl.experimental.orpo.ORPOConfig.beta` = 0.1 (the paper's λ).
    simpo: `trl.experimental.cpo.CPOConfig` beta = 0.1, simpo_gamma = 0.5, with cpo_alpha = 0 (pure SimPO, as TRL's
    docs configure it; that drops CPO's NLL term, so it has no knob here).
    kto: `trl.KTOConfig` beta = 0.1, desirable_weight = undesirable_weight = 1.0.
    sft: no preference term, so nothing reads beta (0)."""
    _check_known(objective)
    if objective == "sft":
        return Knobs(beta=0.0)
    if objective == "simpo":
        return Knobs(beta=0.1, gamma=0.5)
    return Knobs(beta=0.1)


def pair_loss(
    objective: str,
    knobs: Knobs,
    chosen: Logps,
    rejected: Logps,
    ref_chosen: Logps | None = None,
    ref_rejected: Logps | None = None,
    *,
    chosen_nll: Logps | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss (scalar, mean over pairs, as TRL reduces) and metrics (0-dim tensors, detached) named exactly as TRL logs
    them, for one process's batch. `chosen`/`rejected` cover the answer tokens. `chosen_nll` is ORPO only: the chosen
    rows' log-probs over every token TRL's ORPO NLL scores (prompt + answer: each non-padding token after the first);
    without it the NLL is the token-mean over the chosen answers, which equals TRL's only for a one-token prompt."""
    _check_known(objective)
    if objective not in PAIRED:
        raise ValueError(f"objective {objective!r} is not paired; pair_loss takes {sorted(PAIRED)}")
    if objective in {"ipo", "simpo"} and knobs.beta <= 0:
        # both divide by β (IPO's 1/(2β) target, SimPO's γ/β shift)
        raise ValueError(f"objective {objective!r} needs beta > 0, got {knobs.beta}")
    if objective in REFERENCE:
        if ref_chosen is None or ref_rejected is None:
            raise ValueError(f"objective {objective!r} needs reference log-probs (ref_chosen and ref_rejected)")
        return _dpo(objective, knobs, chosen, rejected, ref_chosen, ref_rejected)
    if objective == "orpo":
        return _orpo(knobs, chosen, rejected, chosen if chosen_nll is None else chosen_nll)
    return _simpo(knobs, chosen, rejected)


def kto_loss(
    knobs: Knobs, logps: Logps, desirable: torch.Tensor, ref: Logps, kl: Logps, ref_kl: Logps
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRL's KTO loss (loss_type "kto"): `desirable` is a bool tensor (B,); `kl`/`ref_kl` are the log-probs of the
    mismatched (prompt, completion) pairs TRL uses for its KL estimate. Metrics a batch cannot report (rewards/chosen
    without a desirable row, ...) are left out, as TRL appends none for them."""
    if ref is None or kl is None or ref_kl is None:
        raise ValueError("objective 'kto' needs reference log-probs (ref) and the KL pairs' log-probs (kl, ref_kl)")
    desirable = torch.as_tensor(desirable, dtype=torch.bool, device=logps.sum.device)
    # TRL takes the KL estimate as a constant baseline: batch mean, detached, floored at 0 (its policy KL forward even
    # runs under no_grad). Under DDP, TRL also averages it over processes before the loss; that sync is the caller's.
    kl_est = (kl.sum - ref_kl.sum).mean().detach().clamp(min=0)
    chosen_idx = torch.nonzero(desirable, as_tuple=False).view(-1)
    rejected_idx = torch.nonzero(~desirable, as_tuple=False).view(-1)
    chosen_logratios = logps.sum.index_select(0, chosen_idx) - ref.sum.index_select(0, chosen_idx)
    rejected_logratios = logps.sum.index_select(0, rejected_idx) - ref.sum.index_select(0, rejected_idx)
    chosen_losses = 1 - torch.sigmoid(knobs.beta * (chosen_logratios - kl_est))
    rejected_losses = 1 - torch.sigmoid(knobs.beta * (kl_est - rejected_logratios))
    losses = torch.cat((knobs.desirable_weight * chosen_losses, knobs.undesirable_weight * rejected_losses), 0)
    # a plain mean over all rows, not a weight-normalised one; nanmean because TRL's is
    loss = losses.nanmean()

    metrics = {"kl": kl_est}
    n_chosen, n_rejected = chosen_idx.numel(), rejected_idx.numel()
    if n_chosen:
        metrics["rewards/chosen"] = (knobs.beta * chosen_logratios.detach()).nansum() / n_chosen
        metrics["logps/chosen"] = logps.sum.detach().index_select(0, chosen_idx).nansum() / n_chosen
    if n_rejected:
        metrics["rewards/rejected"] = (knobs.beta * rejected_logratios.detach()).nansum() / n_rejected
        metrics["logps/rejected"] = logps.sum.detach().index_select(0, rejected_idx).nansum() / n_rejected
    if n_chosen and n_rejected:
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return loss, metrics


def _check_known(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")


def _dpo(
    objective: str, knobs: Knobs, chosen: Logps, rejected: Logps, ref_chosen: Logps, ref_rejected: Logps
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    # DPOTrainer with f_divergence_type "reverse_kl": the scores are the log-ratios of the summed log-probs
    chosen_logratios = chosen.sum - ref_chosen.sum
    rejected_logratios = rejected.sum - ref_rejected.sum
    if objective == "dpo":
        per_pair = -F.logsigmoid(knobs.beta * (chosen_logratios - rejected_logratios))
    else:
        # TRL's IPO divides each sequence's log-ratio by its completion token count, so β is per-token
        ipo_delta = chosen_logratios / chosen.tokens.clamp(min=1) - rejected_logratios / rejected.tokens.clamp(min=1)
        per_pair = (ipo_delta - 1 / (2 * knobs.beta)) ** 2
    loss = per_pair.mean()
    # the rewards stay the unnormalised β·log-ratio for IPO as well
    chosen_rewards = knobs.beta * chosen_logratios.detach()
    rejected_rewards = knobs.beta * rejected_logratios.detach()
    return loss, _reward_metrics(chosen_rewards, rejected_rewards, chosen.sum, rejected.sum)


def _orpo(
    knobs: Knobs, chosen: Logps, rejected: Logps, nll_source: Logps
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    # ORPO's odds ratio is on the average log-probs (get_batch_logps(average_log_prob=True))
    chosen_avg, rejected_avg = chosen.mean.float(), rejected.mean.float()
    log_odds = (chosen_avg - rejected_avg) - (_log1mexp(chosen_avg) - _log1mexp(rejected_avg))
    ratio = F.logsigmoid(log_odds)
    # TRL's NLL is nn.CrossEntropyLoss over all the chosen rows at once: a token-mean over the batch, not a mean of
    # per-row means
    nll = -nll_source.sum.sum() / nll_source.tokens.sum().clamp(min=1)
    loss = nll - (knobs.beta * ratio).mean()
    metrics = _reward_metrics(
        knobs.beta * chosen_avg.detach(), knobs.beta * rejected_avg.detach(), chosen_avg, rejected_avg
    )
    metrics["nll_loss"] = nll.detach()
    # TRL's names: "log_odds_ratio" is the mean log σ(log-odds), "log_odds_chosen" the mean log-odds
    metrics["log_odds_ratio"] = ratio.detach().mean()
    metrics["log_odds_chosen"] = log_odds.detach().mean()
    return loss, metrics


def _simpo(knobs: Knobs, chosen: Logps, rejected: Logps) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    # CPOTrainer loss_type "simpo" (average log-probs, label_smoothing 0, alpha 0) with cpo_alpha 0: no NLL term
    chosen_avg, rejected_avg = chosen.mean, rejected.mean
    logits = (chosen_avg - rejected_avg) - knobs.gamma / knobs.beta
    loss = (-F.logsigmoid(knobs.beta * logits)).mean()
    metrics = _reward_metrics(
        knobs.beta * chosen_avg.detach(), knobs.beta * rejected_avg.detach(), chosen_avg, rejected_avg
    )
    # TRL still logs the (zero) NLL term when cpo_alpha is 0
    metrics["nll_loss"] = torch.zeros((), dtype=loss.dtype, device=loss.device)
    return loss, metrics


def _reward_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
) -> dict[str, torch.Tensor]:
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
    }


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, switching formula at -ln 2 to avoid cancellation (TRL's ORPO helper)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@dataclass(frozen=True)
class GrpoKnobs:
    """TRL 1.16 `GRPOConfig` defaults (its epsilon_high defaults to epsilon: one ε both ways here)."""

    num_generations: int = 8
    max_completion_length: int = 512
    temperature: float = 1.0
    beta: float = 0.0
    epsilon: float = 0.2
    loss_type: str = "dapo"
    importance_sampling: str = "token"


LOSS_TYPES = ("grpo", "dr_grpo", "dapo")


def group_advantages(rewards: torch.Tensor, weights: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's advantages (multi_objective_aggregation "sum_then_normalize", scale_rewards "group"): `rewards` (N, F)
    with NaN where a function returned None; each completion's weighted sum, minus its group's mean, over its group's
    standard deviation (Bessel) + 1e-4. A completion no function scored gets advantage 0. Returns the advantages (N,)
    and whether each completion's group had zero spread (N,), which TRL logs as frac_reward_zero_std."""
    unscorable = torch.isnan(rewards).all(dim=1)
    total = (rewards * weights.to(rewards).unsqueeze(0)).nansum(dim=1)
    total[unscorable] = torch.nan
    grouped = total.view(-1, group)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    count = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    variance = torch.nanmean((grouped - mean) ** 2, dim=1, keepdim=True) * count / (count - 1)
    std = torch.where(count > 1, variance, torch.full_like(variance, torch.nan)).sqrt()
    advantages = ((grouped - mean) / (std + 1e-4)).view(-1)
    zero_spread = torch.isclose(std, torch.zeros_like(std)).expand_as(grouped).reshape(-1)
    return torch.nan_to_num(advantages, nan=0.0), zero_spread


def grpo_loss(
    knobs: GrpoKnobs,
    logps: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logps: torch.Tensor | None = None,
    ref_logps: torch.Tensor | None = None,
    *,
    scored_tokens: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRL's GRPO loss for one batch of B completions: `logps`, `mask` (B, T) per completion token (float mask),
    `advantages` (B,). `old_logps` are the sampling policy's (None: this policy's, detached: one update per
    generation, the ratio is 1); `ref_logps` the reference's, needed when β > 0. importance_sampling "sequence" is
    GSPO (one ratio per completion: the mean token log-ratio). loss_type: "grpo" (each completion's token mean, then
    the batch mean), "dr_grpo" (the token sum over B × max_completion_length), "dapo" (the token sum over
    `scored_tokens`, the batch's scored tokens unless given; TRL counts them over its generation batch). Metrics are
    TRL's clip ratios and kl."""
    if knobs.loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {knobs.loss_type!r}: one of {', '.join(LOSS_TYPES)}")
    mask = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    log_ratio = logps - old
    if knobs.importance_sampling == "sequence":
        log_weights = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    elif knobs.importance_sampling == "token":
        log_weights = log_ratio
    else:
        raise ValueError(f"importance_sampling {knobs.importance_sampling!r}: token or sequence")
    ratio = torch.exp(log_weights)
    clipped = torch.clamp(ratio, 1 - knobs.epsilon, 1 + knobs.epsilon)
    adv = advantages.to(logps.dtype).unsqueeze(1)
    per_token = -torch.min(ratio * adv, clipped * adv)
    metrics: dict[str, torch.Tensor] = {}
    if knobs.beta != 0.0:
        if ref_logps is None:
            raise ValueError("grpo with beta > 0 needs the reference's log-probs")
        delta = ref_logps - logps
        # TRL's use_bias_correction_kl (default True): the k3 estimate weighted by the importance ratio
        kl = (torch.exp(delta) - delta - 1) * ratio
        per_token = per_token + knobs.beta * kl
        metrics["kl"] = _masked_mean(kl.detach(), mask)
    if knobs.loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif knobs.loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (per_token.shape[0] * knobs.max_completion_length)
    else:
        tokens = mask.sum() if scored_tokens is None else torch.as_tensor(scored_tokens, dtype=logps.dtype)
        loss = (per_token * mask).sum() / tokens.clamp(min=1.0)
    low = ((ratio < 1 - knobs.epsilon) & (adv < 0)).float().detach()
    high = ((ratio > 1 + knobs.epsilon) & (adv > 0)).float().detach()
    metrics["clip_ratio/low_mean"] = _masked_mean(low, mask)
    metrics["clip_ratio/high_mean"] = _masked_mean(high, mask)
    metrics["clip_ratio/region_mean"] = _masked_mean(torch.maximum(low, high), mask)
    metrics["clip_ratio/low_min"] = _per_sequence_mean(low, mask).min()
    metrics["clip_ratio/high_max"] = _per_sequence_mean(high, mask).max()
    return loss, metrics


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """TRL's global masked mean: over tokens, or over completions when there is one value per completion."""
    if values.shape[-1] == 1:
        return values.sum() / values.shape[0]
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _per_sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if values.shape[-1] == 1:
        return values.squeeze(1)
    return (values * mask).sum(-1) / mask.sum(-1)
