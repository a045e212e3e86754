"""`plan --objective …` prices a preference step, and `budget check` checks a memory limit for it
(issue 23): figures by hand from docs/plan.md's formula on the 235B example's config (no weights),
the objective in `--json` and in one line of text, and refusals of an unknown objective or a knob
the objective does not read (exit 2, one line)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from vlmsurgeon.errors import BadInput
from vlmsurgeon.plan.memory import Estimate
from vlmsurgeon.plan.objective import (
    GRPO_DEFAULTS,
    KNOBS,
    OBJECTIVES,
    PAIRED,
    REFERENCE,
    RULES,
    ZERO_BETA,
    Objective,
    objective,
)
from vlmsurgeon.plan.plan import PlanSettings, plan_model

MODEL = ROOT / "examples" / "qwen3-vl-235b-a22b"
# the example's text config: hidden 4096, MoE expert width 1536 × 8 experts per token, 94 layers
H, M, LAYERS, VOCAB, SEQ = 4096, 1536 * 8, 94, 151_936, 2048
A = 2 * (9 * H + 3 * M)  # bytes per token and layer kept for backward (bf16)
W = (64 * 128) * H  # the largest 4-bit Linear weight: a q_proj, 64 heads × 128 → 4096 in
LORA = 50_823_168  # lm-lora's LoRA parameters (tests/test_plan.py)


def rows(tokens: int) -> int:
    """Rows per chunk of the chunked head: at least 2^22 logits, at most 8 chunks."""
    return min(tokens, max((1 << 22) // VOCAB, -(-tokens // 8)))


@pytest.fixture(scope="module")
def planned():
    cache: dict[tuple, object] = {}

    def get(name: str = "sft", batch: int = 1, preset: str | None = "lm-lora", freeze: str | None = None):
        key = (name, batch, preset, freeze)
        if key not in cache:
            settings = PlanSettings(seq_len=SEQ, batch_size=batch, objective=objective(name))
            cache[key] = plan_model(str(MODEL), preset=preset, freeze=freeze, settings=settings)
        return cache[key]

    return get


def test_plan_knows_the_objectives_finetune_trains():
    """plan/ may not import train/: its copy of the facts must stay the trainer's."""
    from vlmsurgeon.train import objectives, runconfig

    assert OBJECTIVES == objectives.OBJECTIVES
    assert PAIRED == objectives.PAIRED and REFERENCE == objectives.REFERENCE
    assert KNOBS == runconfig.KNOBS
    assert set(OBJECTIVES) == set(runconfig.RunOptions.model_fields["objective"].annotation.__args__)


def _bound(least: float, inclusive: bool, whole: bool) -> tuple[float, bool]:
    """A numeric bound in one form: for whole numbers, the least allowed (> 0 is >= 1)."""
    return (least + 1, True) if whole and not inclusive else (least, inclusive)


def test_plan_takes_each_knob_as_finetune_does():
    """Bounds, words and grpo's defaults: plan's RULES and GRPO_DEFAULTS against RunOptions' fields
    and the knobs a grpo run records (train/grpo.py grpo_record)."""
    import typing

    import annotated_types as at

    from vlmsurgeon.train.grpo import grpo_record
    from vlmsurgeon.train.runconfig import RunOptions

    for knob, rule in RULES.items():
        field = RunOptions.model_fields[knob]
        kind = typing.get_args(field.annotation)[0]  # X of `X | None`
        if rule.words:
            assert typing.get_args(kind) == rule.words, knob
            continue
        if rule.listed:
            assert kind == list[str], knob
            continue
        assert kind is (int if rule.whole else float), knob
        (bound,) = field.metadata
        inclusive = isinstance(bound, at.Ge)
        theirs = _bound(bound.ge if inclusive else bound.gt, inclusive, rule.whole)
        ours = _bound(rule.least, rule.or_equal, rule.whole)
        if knob == "beta":  # >= 0 in the field, > 0 in the validator but for grpo (ZERO_BETA)
            assert (theirs, ours) == ((0, True), (0, False)), knob
        else:
            assert theirs == ours, knob
    for name in KNOBS["beta"]:
        try:
            RunOptions(objective=name, beta=0, reward=["exact"] if name == "grpo" else None)
            takes_zero = True
        except ValueError:
            takes_zero = False
        assert takes_zero == (name in ZERO_BETA), name
    recorded = grpo_record(RunOptions(objective="grpo", reward=["exact"]))
    assert {k: v for k, v in recorded.items() if k != "reward"} == GRPO_DEFAULTS
    assert objective("grpo").knobs == GRPO_DEFAULTS


def test_sft_by_hand(planned):
    m = planned("sft").memory
    tokens = SEQ
    assert (m.adapters, m.gradients, m.optimizer) == (4 * LORA, 4 * LORA, 2 * 4 * LORA)
    assert m.activations == tokens * LAYERS * 2 * H == 1_577_058_304
    assert m.logits == 3 * 4 * rows(tokens) * VOCAB + 2 * 4 * tokens * H == 533_856_256
    assert m.backward == 2 * tokens * A + 2 * W + 4 * tokens * H == 704_643_072
    assert m.reference_copies == m.no_grad_forward == 0
    assert m.total == m.weights + 4 * 4 * LORA + m.activations + m.backward


def test_dpo_prices_two_sequences_per_pair_and_a_reference_pass_that_keeps_nothing(planned):
    sft, m = planned("sft").memory, planned("dpo").memory
    tokens = 2 * SEQ  # chosen and rejected
    # the state is the SFT step's: the reference is the model with its LoRA adapter disabled
    state = ("weights", "adapters", "gradients", "optimizer")
    assert [getattr(m, k) for k in state] == [getattr(sft, k) for k in state]
    assert m.reference_copies == 0
    assert m.activations == tokens * LAYERS * 2 * H == 3_154_116_608 == 2 * sft.activations
    assert m.logits == 3 * 4 * rows(tokens) * VOCAB + 2 * 4 * tokens * H == 1_067_712_512
    assert m.backward == 2 * tokens * A + 2 * W + 4 * tokens * H == 1_342_177_280
    # the reference's forward, no graph: one layer as it runs (+ the dequantized weight), or the
    # head's input, its labelled rows and one chunk's logits (bf16, fp32, log-softmax)
    layer = tokens * A + 2 * W
    head = (2 + 8) * rows(tokens) * VOCAB + 2 * 2 * tokens * H
    assert m.no_grad_forward == max(layer, head) == head == 845_021_184
    # it runs before the policy's forward: the larger moment counts, and it is the policy's
    policy = m.activations + max(m.logits, m.backward)
    assert m.no_grad_forward < policy
    assert m.total == m.state + policy == sft.state + 3_154_116_608 + 1_342_177_280
    assert m.total - sft.total == (3_154_116_608 + 1_342_177_280) - (1_577_058_304 + 704_643_072)


def test_ipo_prices_as_dpo_and_orpo_simpo_have_no_reference_pass(planned):
    dpo = planned("dpo").memory
    assert planned("ipo").memory == dpo
    for name in ("orpo", "simpo"):
        m = planned(name).memory
        assert m.no_grad_forward == 0 and m.reference_copies == 0
        assert (m.activations, m.logits, m.backward, m.total) == (dpo.activations, dpo.logits, dpo.backward, dpo.total)


def test_kto_prices_its_completions_and_no_grad_passes_of_the_same_size(planned):
    sft, m = planned("sft", batch=2).memory, planned("kto", batch=2).memory
    tokens = 2 * SEQ  # two completions; the KL completions and the reference run without a graph
    assert (m.activations, m.logits, m.backward) == (sft.activations, sft.logits, sft.backward)
    assert m.activations == tokens * LAYERS * 2 * H
    head = (2 + 8) * rows(tokens) * VOCAB + 2 * 2 * tokens * H
    assert m.no_grad_forward == max(tokens * A + 2 * W, head) == 845_021_184
    assert m.total == sft.total
    assert not any("kto" in n for n in planned("kto", batch=2).notes)
    assert any("refuses --objective kto with --batch-size 1" in n for n in planned("kto", batch=1).notes)


def test_a_reference_copies_what_trains_in_full_without_lora(planned):
    merger = 160_496_896  # projector-only: the merger in full, nothing LoRA, so everything loads bf16
    dpo, orpo = planned("dpo", preset="projector-only").memory, planned("orpo", preset="projector-only").memory
    assert dpo.reference_copies == 2 * merger and orpo.reference_copies == 0
    assert dpo.state == orpo.state + 2 * merger and dpo.total == orpo.total + 2 * merger
    # beside LoRA, peft keeps the merger's original: disabling the adapter is the reference
    assert planned("dpo", preset=None, freeze="vision").memory.reference_copies == 0


def test_a_pass_without_a_graph_counts_when_it_is_the_larger_moment():
    e = Estimate(1, 0, 0, 0, 10, 40, logits=5, backward=7, backward_no_ckpt=6, no_grad_forward=30)
    assert e.total == 1 + 30 and e.total_no_ckpt == 1 + 40 + 6


def test_plan_model_refuses_an_objective_it_does_not_know():
    with pytest.raises(BadInput, match="unknown objective"):
        plan_model(str(MODEL), preset="lm-lora", settings=PlanSettings(objective=Objective("nope")))
    with pytest.raises(BadInput, match="--simpo-gamma applies to objective simpo, not dpo"):
        objective("dpo", {"simpo_gamma": 0.5})
    with pytest.raises(BadInput, match="^beta 0: must be a number > 0"):
        objective("kto", {"beta": 0}, options=False)


def test_plan_json_and_text_name_the_objective(cli):
    code, out, err = cli("plan", MODEL, "--preset", "lm-lora", "--objective", "dpo", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["objective"] == {
        "name": "dpo",
        "knobs": {"beta": 0.1},  # TRL's default, as finetune would use it
        "paired": True,
        "reference": True,
        "sequences": 2,
        "no_grad_sequences": 2,
    }
    assert "objective" not in data["settings"]
    assert data["memory"]["activations"] == 3_154_116_608 and data["memory"]["no_grad_forward"] == 845_021_184
    code, out, err = cli("plan", MODEL, "--preset", "lm-lora", "--objective", "simpo", "--simpo-gamma", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["objective"]["knobs"] == {"beta": 0.1, "simpo_gamma": 1.0}
    code, out, err = cli("plan", MODEL, "--preset", "lm-lora", "--objective", "dpo", "--beta", "0.2")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("objective:")]
    assert len(lines) == 1 and lines[0].startswith("objective: dpo (beta 0.2)")
    assert "2 sequences" in out
    code, out, err = cli("plan", MODEL, "--preset", "lm-lora")
    assert code == 0, err
    assert not any(line.startswith("objective:") for line in out.splitlines())  # sft: as before


def test_the_objective_can_come_from_the_config_file(cli, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {MODEL}\npreset: lm-lora\nobjective: orpo\nbeta: 0.5\n")
    code, out, err = cli("plan", "--config", config, "--json")
    assert code == 0, err
    assert json.loads(out)["objective"]["knobs"] == {"beta": 0.5}


@pytest.mark.parametrize(
    "flags,says",
    [
        (["--objective", "nope"], "objective"),
        (["--objective", "dpo", "--simpo-gamma", "1"], "simpo_gamma applies to objective simpo, not dpo"),
        (["--beta", "0.2"], "beta applies to objective dpo or ipo or orpo or simpo or kto or grpo, not sft"),
        (["--objective", "orpo", "--desirable-weight", "2"], "desirable_weight applies to objective kto, not orpo"),
        (["--objective", "dpo", "--beta", "0"], "beta"),
    ],
)
def test_plan_refuses_an_unknown_objective_or_a_knob_it_does_not_read(cli, flags, says):
    code, out, err = cli("plan", MODEL, "--preset", "lm-lora", *flags)
    assert code == 2, err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err and not out


def _budget(tmp_path, entry: str) -> str:
    path = tmp_path / "budget.yaml"
    path.write_text(f"models:\n  - model: {MODEL}\n    preset: lm-lora\n{entry}")
    return str(path)


def test_a_budget_entry_checks_its_memory_limit_for_the_objective(cli, tmp_path, planned):
    sft, dpo = planned("sft").memory.total, planned("dpo").memory.total
    between = (sft + dpo) // 2
    entry = f"    limits: {{memory: {between}B}}\n"
    code, out, err = cli("budget", "check", _budget(tmp_path, entry), "--json")
    assert code == 0, err
    assert json.loads(out)["results"][0]["figure"] == sft
    code, out, err = cli("budget", "check", _budget(tmp_path, "    objective: dpo\n    beta: 0.2\n" + entry), "--json")
    assert code == 1, err
    result = json.loads(out)["results"][0]
    assert result["figure"] == dpo and result["status"] == "fail"


@pytest.mark.parametrize(
    "keys,says",
    [
        ("    objective: nope\n", "models.0.objective: unknown objective 'nope' (one of sft, dpo, ipo, orpo, simpo"),
        ("    objective: dpo\n    simpo_gamma: 1\n", "models.0: simpo_gamma applies to objective simpo, not dpo"),
        ("    beta: 0.1\n", "models.0: beta applies to objective dpo or ipo or orpo or simpo or kto or grpo, not sft"),
        ("    objective: kto\n    beta: -1\n", "models.0.beta: Input should be greater than or equal to 0"),
        ("    objective: kto\n    beta: 0\n", "models.0: beta 0.0: must be a number > 0 (e.g. beta 0.1)"),
        ("    objective: dpo\n    gamma: 1\n", "models.0.gamma: Extra inputs are not permitted"),
    ],
)
def test_a_budget_entry_with_an_unknown_objective_or_a_knob_it_does_not_read_is_refused(cli, tmp_path, keys, says):
    code, out, err = cli("budget", "check", _budget(tmp_path, keys + "    limits: {memory: 500GiB}\n"))
    assert code == 2
    assert says in err and err.count("\n") == 1 and "Traceback" not in err
