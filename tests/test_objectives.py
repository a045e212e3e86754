"""The preference objectives against TRL 1.16 as the oracle: on the same random inputs, our loss, every metric we
return and the loss's gradient equal what TRL's own trainer code computes (its methods called with stand-in trainers
and models), to 1e-5 in fp32; plus the config defaults and the error cases."""

from __future__ import annotations

import dataclasses
import types
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from trl import DPOConfig, KTOConfig
from trl.experimental.cpo import CPOConfig, CPOTrainer
from trl.experimental.orpo import ORPOConfig, ORPOTrainer
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.kto_trainer import KTOTrainer

from vlmsurgeon.train.objectives import (
    OBJECTIVES,
    PAIRED,
    REFERENCE,
    Knobs,
    Logps,
    default_knobs,
    kto_loss,
    pair_loss,
)

TOL = 1e-5
B = 4
VOCAB = 16
SEEDS = (0, 1, 2)
# what TRL logs but cannot be derived from per-sequence log-probs (it reads the model's logits/entropy/token counts)
MODEL_ONLY = {
    "dpo": {"entropy", "num_tokens", "logits/chosen", "logits/rejected", "mean_token_accuracy"},
    "kto": {"entropy", "num_tokens", "logits/chosen", "logits/rejected"},
    "orpo": {"logits/chosen", "logits/rejected"},
    "simpo": {"logits/chosen", "logits/rejected"},
}
MAX_DIFF: dict[str, float] = defaultdict(float)  # worst |ours - TRL| per objective, printed at the end (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def _print_max_diff() -> Iterator[None]:
    yield
    print("\nmax |ours - TRL|:", {k: f"{v:.1e}" for k, v in sorted(MAX_DIFF.items())})


def _accelerator() -> types.SimpleNamespace:
    # one process: TRL's gathers are the identity
    return types.SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t)


def _compare(objective: str, ours: float | torch.Tensor, theirs: float | torch.Tensor) -> None:
    ours = torch.as_tensor(ours, dtype=torch.float64)
    theirs = torch.as_tensor(theirs, dtype=torch.float64)
    assert ours.shape == theirs.shape
    assert torch.isfinite(theirs).all()
    diff = (ours - theirs).abs().max().item()
    MAX_DIFF[objective] = max(MAX_DIFF[objective], diff)
    assert diff <= TOL, f"{objective}: |ours - TRL| = {diff}"


def _compare_metrics(objective: str, ours: dict[str, torch.Tensor], theirs: dict[str, float], model_only: set) -> None:
    assert set(ours) == set(theirs) - model_only, "we return exactly the metrics TRL logs that log-probs determine"
    for name, value in ours.items():
        assert value.dim() == 0 and not value.requires_grad, name
        _compare(objective, value.item(), theirs[name])


def _layout(g: torch.Generator, prompt_lens: list[int], answers: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Right-padded rows of prompt + answer, and the per-token log-probs a fused LM head returns for them: shape
    (rows, T-1), position j scoring token j+1, zero where the label is masked (prompt, padding)."""
    width = max(p + len(a) for p, a in zip(prompt_lens, answers, strict=True)) + 1  # >= one padding column
    rows = len(answers)
    input_ids = torch.randint(1, VOCAB, (rows, width), generator=g)
    attention_mask = torch.zeros(rows, width, dtype=torch.long)
    completion_mask = torch.zeros(rows, width, dtype=torch.long)
    log_probs = torch.zeros(rows, width - 1)
    for i, (p, a) in enumerate(zip(prompt_lens, answers, strict=True)):
        attention_mask[i, : p + len(a)] = 1
        completion_mask[i, p : p + len(a)] = 1
        log_probs[i, p - 1 : p - 1 + len(a)] = a
    input_ids = input_ids * attention_mask
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "log_probs": log_probs.requires_grad_(),
    }


def _answer(g: torch.Generator, n: int, sure: bool = False) -> torch.Tensor:
    """Per-token log-probs: `sure` ones in [-0.05, 0] (at most 8 sum above -0.5), others in [-3, -0.5]."""
    if sure:
        return -torch.rand(n, generator=g) * 0.05
    return -0.5 - torch.rand(n, generator=g) * 2.5


def _fused_model(by_width: dict[int, dict[str, torch.Tensor]]) -> Callable[..., types.SimpleNamespace]:
    """Stands in for `model(**kwargs, labels=..., fused_lm_head=True)`: picks the layout by sequence width."""

    def forward(**kwargs: Any) -> types.SimpleNamespace:
        assert kwargs["fused_lm_head"] is True
        rows = by_width[kwargs["input_ids"].size(1)]
        # TRL scores exactly the completion tokens
        assert torch.equal(kwargs["labels"] != -100, rows["completion_mask"].bool())
        log_probs = rows["log_probs"]
        return types.SimpleNamespace(
            log_probs=log_probs,
            entropy=torch.zeros_like(log_probs),
            mean_logits=torch.zeros_like(log_probs),
            is_top1=torch.zeros_like(log_probs, dtype=torch.bool),
        )

    return forward


def _sequence_logps(rows: dict[str, torch.Tensor]) -> Logps:
    return Logps(sum=rows["log_probs"].sum(dim=1), tokens=rows["completion_mask"].sum(dim=1))


def _grad(loss: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(loss, leaf)
    return grad


# DPO / IPO: DPOTrainer._compute_loss, with the reference log-probs precomputed


def _dpo_case(seed: int, empty_answer: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(1, 6, (B,), generator=g).tolist()
    lens = torch.randint(1, 9, (2, B), generator=g)
    if empty_answer:
        lens[1, 0] = 0  # a rejected answer truncated to nothing
    # even pairs: the chosen answer is the likelier one; odd pairs: the rejected one
    answers = [_answer(g, int(lens[0, i]), sure=i % 2 == 0) for i in range(B)]
    answers += [_answer(g, int(lens[1, i]), sure=i % 2 == 1) for i in range(B)]
    rows = _layout(g, prompt_lens + prompt_lens, answers)
    ref = rows["log_probs"].detach().sum(dim=1) + torch.randn(2 * B, generator=g) * 2
    return rows, ref[:B], ref[B:]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("objective", "beta", "empty_answer"),
    [("dpo", 0.1, False), ("dpo", 0.5, False), ("ipo", 0.1, False), ("ipo", 0.5, True)],
)
def test_dpo_ipo_equal_trl(objective: str, beta: float, empty_answer: bool, seed: int) -> None:
    rows, ref_chosen, ref_rejected = _dpo_case(seed, empty_answer)
    stand_in = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=_accelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=["sigmoid" if objective == "dpo" else "ipo"],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {k: rows[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    inputs |= {"ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    theirs = DPOTrainer._compute_loss(stand_in, _fused_model({rows["input_ids"].size(1): rows}), inputs, False)
    their_metrics = {k: v[-1] for k, v in stand_in._metrics["train"].items()}

    logps = _sequence_logps(rows)
    chosen, rejected = (Logps(s, t) for s, t in zip(logps.sum.chunk(2), logps.tokens.chunk(2), strict=True))
    assert (rejected.sum > chosen.sum).any() and (rejected.sum < chosen.sum).any()
    ref_c, ref_r = Logps(ref_chosen, chosen.tokens), Logps(ref_rejected, rejected.tokens)
    loss, metrics = pair_loss(objective, Knobs(beta=beta), chosen, rejected, ref_c, ref_r)

    assert loss.dim() == 0
    _compare(objective, loss.item(), theirs.item())
    _compare_metrics(objective, metrics, their_metrics, MODEL_ONLY["dpo"])
    _compare(objective, _grad(loss, rows["log_probs"]), _grad(theirs, rows["log_probs"]))


def test_dpo_accuracies_see_both_outcomes() -> None:
    """The random pairs above are not all won (or all lost) by the chosen answer: the comparison means something."""
    accuracies = []
    for seed in SEEDS:
        rows, ref_chosen, ref_rejected = _dpo_case(seed, False)
        chosen_sum, rejected_sum = rows["log_probs"].detach().sum(dim=1).chunk(2)
        accuracies.append((chosen_sum - ref_chosen > rejected_sum - ref_rejected).float())
    assert 0 < torch.cat(accuracies).mean().item() < 1


# ORPO / SimPO: the trainers' get_batch_loss_metrics on a stand-in model that returns fixed logits


def _pair_batch(seed: int, one_token_prompt: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A tokenized ORPO/CPO batch (chosen_*/rejected_* input_ids, attention_mask, labels with the prompt and padding
    at -100) and the logits a model returns for it, rows ordered [chosen..., rejected...]."""
    g = torch.Generator().manual_seed(seed)
    prompt_lens = [1] * B if one_token_prompt else torch.randint(1, 6, (B,), generator=g).tolist()
    lens = torch.randint(1, 9, (2, B), generator=g).tolist()
    width = max(p + n for p, ns in zip(prompt_lens, zip(*lens, strict=True), strict=True) for n in ns) + 1
    batch: dict[str, torch.Tensor] = {}
    for side, side_lens in zip(("chosen", "rejected"), lens, strict=True):
        ids = torch.zeros(B, width, dtype=torch.long)
        mask = torch.zeros(B, width, dtype=torch.long)
        labels = torch.full((B, width), -100)
        for i, (p, n) in enumerate(zip(prompt_lens, side_lens, strict=True)):
            ids[i, : p + n] = torch.randint(1, VOCAB, (p + n,), generator=g)
            mask[i, : p + n] = 1
            labels[i, p : p + n] = ids[i, p : p + n]
        batch |= {f"{side}_input_ids": ids, f"{side}_attention_mask": mask, f"{side}_labels": labels}
    # the prompt is shared by both answers
    for i, p in enumerate(prompt_lens):
        batch["rejected_input_ids"][i, :p] = batch["chosen_input_ids"][i, :p]
    logits = torch.randn(2 * B, width, VOCAB, generator=g) * 2
    # the model is sure of the chosen answer in even pairs, of the rejected one in odd pairs
    labels = torch.cat((batch["chosen_labels"], batch["rejected_labels"]))
    for row in [*range(0, B, 2), *range(B + 1, 2 * B, 2)]:
        for j in range(width - 1):
            if labels[row, j + 1] != -100:
                logits[row, j, labels[row, j + 1]] += 6
    return batch, logits.requires_grad_()


def _token_logps(logits: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor) -> Logps:
    """What the integration computes: the log-probs of `targets` at the `scored` positions (next-token aligned)."""
    per_token = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets[:, 1:].unsqueeze(-1)).squeeze(-1)
    scored = scored[:, 1:]
    return Logps(sum=(per_token * scored).sum(dim=1), tokens=scored.sum(dim=1))


def _pair_logps(batch: dict[str, torch.Tensor], logits: torch.Tensor) -> tuple[Logps, Logps, Logps]:
    """chosen and rejected over the answer tokens; chosen over every non-padding token (ORPO's NLL)."""
    labels = torch.cat((batch["chosen_labels"], batch["rejected_labels"]))
    answers = _token_logps(logits, labels.clamp(min=0), labels != -100)
    chosen = Logps(answers.sum[:B], answers.tokens[:B])
    rejected = Logps(answers.sum[B:], answers.tokens[B:])
    assert (rejected.mean > chosen.mean).any() and (rejected.mean < chosen.mean).any()
    full = _token_logps(logits[:B], batch["chosen_input_ids"], batch["chosen_attention_mask"] == 1)
    return chosen, rejected, full


def _logits_model(batch: dict[str, torch.Tensor], logits: torch.Tensor) -> Callable[..., types.SimpleNamespace]:
    expected = torch.cat((batch["chosen_input_ids"], batch["rejected_input_ids"]))

    def forward(input_ids: torch.Tensor, **kwargs: Any) -> types.SimpleNamespace:
        assert torch.equal(input_ids, expected)
        return types.SimpleNamespace(logits=logits)

    return forward


def _trainer_stand_in(cls: type, **attributes: Any) -> Any:
    # the real class, so its methods call each other, but none of its __init__ (no model, data or accelerate state)
    stand_in = object.__new__(cls)
    stand_in.__dict__.update(accelerator=_accelerator(), is_encoder_decoder=False, aux_loss_enabled=False, **attributes)
    return stand_in


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.1, 0.25])
def test_orpo_equals_trl(beta: float, seed: int) -> None:
    batch, logits = _pair_batch(seed, one_token_prompt=False)
    stand_in = _trainer_stand_in(ORPOTrainer, beta=beta, padding_value=0)
    theirs, their_metrics = ORPOTrainer.get_batch_loss_metrics(stand_in, _logits_model(batch, logits), batch)

    chosen, rejected, full = _pair_logps(batch, logits)
    loss, metrics = pair_loss("orpo", Knobs(beta=beta), chosen, rejected, chosen_nll=full)

    _compare("orpo", loss.item(), theirs.item())
    _compare_metrics("orpo", metrics, their_metrics, MODEL_ONLY["orpo"])
    _compare("orpo", _grad(loss, logits), _grad(theirs, logits))


@pytest.mark.parametrize("seed", SEEDS)
def test_orpo_nll_defaults_to_the_answers(seed: int) -> None:
    """Without chosen_nll the NLL is the token-mean over the chosen answers: TRL's exactly when the prompt is one
    token (TRL's NLL covers every non-padding token after the first), and not otherwise."""
    batch, logits = _pair_batch(seed, one_token_prompt=True)
    stand_in = _trainer_stand_in(ORPOTrainer, beta=0.1, padding_value=0)
    theirs, their_metrics = ORPOTrainer.get_batch_loss_metrics(stand_in, _logits_model(batch, logits), batch)
    chosen, rejected, _ = _pair_logps(batch, logits)
    loss, metrics = pair_loss("orpo", default_knobs("orpo"), chosen, rejected)
    _compare("orpo", loss.item(), theirs.item())
    _compare("orpo", metrics["nll_loss"].item(), their_metrics["nll_loss"])
    assert metrics["nll_loss"].item() == pytest.approx(-chosen.sum.sum().item() / chosen.tokens.sum().item())

    batch, logits = _pair_batch(seed, one_token_prompt=False)
    stand_in = _trainer_stand_in(ORPOTrainer, beta=0.1, padding_value=0)
    _, their_metrics = ORPOTrainer.get_batch_loss_metrics(stand_in, _logits_model(batch, logits), batch)
    chosen, rejected, _ = _pair_logps(batch, logits)
    _, metrics = pair_loss("orpo", default_knobs("orpo"), chosen, rejected)
    assert abs(metrics["nll_loss"].item() - their_metrics["nll_loss"]) > 1e-3


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("beta", "gamma"), [(0.1, 0.5), (2.0, 1.0)])
def test_simpo_equals_trl(beta: float, gamma: float, seed: int) -> None:
    batch, logits = _pair_batch(seed, one_token_prompt=False)
    stand_in = _trainer_stand_in(
        CPOTrainer,
        beta=beta,
        simpo_gamma=gamma,
        loss_type="simpo",
        cpo_alpha=0.0,
        label_smoothing=0.0,
        alpha=0.0,
        pad_token_id=0,
    )
    theirs, their_metrics = CPOTrainer.get_batch_loss_metrics(stand_in, _logits_model(batch, logits), batch)

    chosen, rejected, _ = _pair_logps(batch, logits)
    loss, metrics = pair_loss("simpo", Knobs(beta=beta, gamma=gamma), chosen, rejected)

    _compare("simpo", loss.item(), theirs.item())
    _compare_metrics("simpo", metrics, their_metrics, MODEL_ONLY["simpo"])
    _compare("simpo", _grad(loss, logits), _grad(theirs, logits))


# KTO: KTOTrainer._compute_loss, with the reference log-probs (of the rows and of the KL pairs) precomputed


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("labels", "knobs", "kl_shift"),
    [
        ([True, False, True, False], Knobs(beta=0.1), 3.0),
        ([True, False, False, False], Knobs(beta=0.3, desirable_weight=1.33, undesirable_weight=0.7), -3.0),
        ([True, True, True, True], Knobs(beta=0.1), 3.0),
        ([False, False, False, False], Knobs(beta=0.5, desirable_weight=2.0, undesirable_weight=0.5), 3.0),
    ],
)
def test_kto_equals_trl(labels: list[bool], knobs: Knobs, kl_shift: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(1, 6, (B,), generator=g).tolist()
    lens = torch.randint(1, 9, (B,), generator=g).tolist()
    rows = _layout(g, prompt_lens, [_answer(g, n) for n in lens])
    # TRL's KL pairs: each prompt with the previous row's completion
    kl_prompt_lens = [p + 2 for p in prompt_lens]  # a different width, so the stand-in model can tell them apart
    kl_rows = _layout(g, kl_prompt_lens, [_answer(g, n) for n in lens[-1:] + lens[:-1]])
    ref_logps = rows["log_probs"].detach().sum(dim=1) + torch.randn(B, generator=g) * 2
    # kl_shift > 0: a positive KL estimate; < 0: a negative one, which TRL floors at 0
    ref_kl_logps = kl_rows["log_probs"].detach().sum(dim=1) - kl_shift + torch.randn(B, generator=g) * 0.5
    desirable = torch.tensor(labels)

    stand_in = _trainer_stand_in(
        KTOTrainer,
        model=types.SimpleNamespace(training=True),
        calculate_KL=True,
        precompute_ref_logps=True,
        loss_type="kto",
        beta=knobs.beta,
        desirable_weight=knobs.desirable_weight,
        undesirable_weight=knobs.undesirable_weight,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {k: rows[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    inputs |= {f"KL_{k}": kl_rows[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    inputs |= {"label": desirable, "ref_logps": ref_logps, "ref_KL_logps": ref_kl_logps}
    model = _fused_model({rows["input_ids"].size(1): rows, kl_rows["input_ids"].size(1): kl_rows})
    theirs = KTOTrainer._compute_loss(stand_in, model, inputs, False)
    their_metrics = {k: v[-1] for k, v in stand_in._metrics["train"].items()}

    logps, kl = _sequence_logps(rows), _sequence_logps(kl_rows)
    ref, ref_kl = Logps(ref_logps, logps.tokens), Logps(ref_kl_logps, kl.tokens)
    loss, metrics = kto_loss(knobs, logps, desirable, ref, kl, ref_kl)

    _compare("kto", loss.item(), theirs.item())
    _compare_metrics("kto", metrics, their_metrics, MODEL_ONLY["kto"])
    assert (metrics["kl"].item() > 0) == (kl_shift > 0)
    assert metrics["kl"].item() >= 0
    _compare("kto", _grad(loss, rows["log_probs"]), _grad(theirs, rows["log_probs"]))
    # the KL estimate is a constant baseline: no gradient reaches the KL pairs' log-probs
    assert torch.autograd.grad(loss, kl_rows["log_probs"], allow_unused=True)[0] is None


# defaults and errors


def _field_default(config: type, name: str) -> Any:
    field = {f.name: f for f in dataclasses.fields(config)}[name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def test_default_knobs_are_trl_config_defaults() -> None:
    assert default_knobs("dpo") == default_knobs("ipo") == Knobs(beta=_field_default(DPOConfig, "beta"))
    assert default_knobs("orpo") == Knobs(beta=_field_default(ORPOConfig, "beta"))
    assert default_knobs("simpo") == Knobs(
        beta=_field_default(CPOConfig, "beta"), gamma=_field_default(CPOConfig, "simpo_gamma")
    )
    assert default_knobs("kto") == Knobs(
        beta=_field_default(KTOConfig, "beta"),
        desirable_weight=_field_default(KTOConfig, "desirable_weight"),
        undesirable_weight=_field_default(KTOConfig, "undesirable_weight"),
    )
    assert default_knobs("sft") == Knobs(beta=0.0)
    # the TRL settings our losses reproduce are those configs' defaults too (SimPO's cpo_alpha=0 aside)
    assert _field_default(DPOConfig, "loss_type") == ["sigmoid"]
    assert _field_default(DPOConfig, "f_divergence_type") == "reverse_kl"
    assert _field_default(DPOConfig, "label_smoothing") == 0.0
    assert _field_default(DPOConfig, "ld_alpha") is None
    assert _field_default(DPOConfig, "use_weighting") is False
    assert _field_default(CPOConfig, "label_smoothing") == 0.0
    assert _field_default(CPOConfig, "alpha") == 0.0
    assert _field_default(KTOConfig, "loss_type") == "kto"


def test_objective_sets() -> None:
    assert OBJECTIVES == ("sft", "dpo", "ipo", "orpo", "simpo", "kto", "grpo")
    assert PAIRED == {"dpo", "ipo", "orpo", "simpo"}
    assert REFERENCE == {"dpo", "ipo", "kto"}


def _some_logps() -> Logps:
    return Logps(sum=torch.tensor([-3.0, -5.0]), tokens=torch.tensor([2, 4]))


@pytest.mark.parametrize("objective", ["nope", "DPO", "cpo", ""])
def test_unknown_objective_raises(objective: str) -> None:
    x = _some_logps()
    with pytest.raises(ValueError, match="unknown objective"):
        default_knobs(objective)
    with pytest.raises(ValueError, match="unknown objective"):
        pair_loss(objective, Knobs(beta=0.1), x, x, x, x)


@pytest.mark.parametrize("objective", ["sft", "kto"])
def test_unpaired_objective_in_pair_loss_raises(objective: str) -> None:
    x = _some_logps()
    with pytest.raises(ValueError, match="not paired"):
        pair_loss(objective, Knobs(beta=0.1), x, x, x, x)


@pytest.mark.parametrize("objective", ["dpo", "ipo"])
@pytest.mark.parametrize("missing", ["both", "chosen", "rejected"])
def test_reference_objective_without_reference_raises(objective: str, missing: str) -> None:
    x = _some_logps()
    ref_chosen = None if missing in {"both", "chosen"} else x
    ref_rejected = None if missing in {"both", "rejected"} else x
    with pytest.raises(ValueError, match="reference"):
        pair_loss(objective, Knobs(beta=0.1), x, x, ref_chosen, ref_rejected)


def test_kto_without_reference_raises() -> None:
    x = _some_logps()
    with pytest.raises(ValueError, match="reference"):
        kto_loss(Knobs(beta=0.1), x, torch.tensor([True, False]), None, x, x)  # type: ignore[arg-type]


@pytest.mark.parametrize("objective", ["ipo", "simpo"])
def test_beta_zero_raises_where_divided_by(objective: str) -> None:
    x = _some_logps()
    with pytest.raises(ValueError, match="beta > 0"):
        pair_loss(objective, Knobs(beta=0.0), x, x, x, x)


@pytest.mark.parametrize("dtype", [torch.long, torch.float32])
def test_logps_mean_of_zero_tokens_is_zero(dtype: torch.dtype) -> None:
    logps = Logps(sum=torch.tensor([0.0, -3.0, -1.5]), tokens=torch.tensor([0, 2, 1], dtype=dtype))
    assert logps.mean.tolist() == [0.0, -1.5, -1.5]
    assert logps.mean.dtype == torch.float32
