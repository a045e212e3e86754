"""`plan --objective grpo` prices an RL step (issue 24): the generation phase (the KV cache of B × G
sequences, the prefill, a decoding step, the vision tower's pass) against the training phase (an
SFT step of B × G sequences, the head on the completions only, a reference pass when beta > 0),
figures by hand from the tiny Qwen2-VL's widths; the phase that sets the peak, in `--json` and in
the text; refusals; and `budget check` with `objective: grpo`."""

from __future__ import annotations

import json

import pytest

from vlmsurgeon.errors import BadInput
from vlmsurgeon.plan.objective import objective
from vlmsurgeon.plan.plan import PlanSettings, plan_model

# the tiny Qwen2-VL (vlmsurgeon/tiny/base.py TEXT; its vision config in tiny/families.py)
H, M, LAYERS, KV_HEADS, HEAD_DIM, VOCAB = 64, 128, 2, 2, 16, 264
VH, VM, MERGE = 32, 64, 4  # vision embed_dim, embed_dim × mlp_ratio 2, spatial_merge_size 2, squared
A = 2 * (9 * H + 3 * M)  # bytes per token and layer of the LM (bf16)
AV = 2 * (9 * VH + 3 * VM)  # the same for the vision tower
W = M * H  # the largest 4-bit Linear weight under lm-lora: an MLP projection, 64 × 128
SEQ, B, G, L, IMAGE_TOKENS = 256, 2, 4, 64, 16
N = B * G  # sequences per step
GRPO = {"num_generations": G, "max_completion_length": L}


def kv_bytes(sequences: int, tokens: int, layers: int = LAYERS, kv_heads: int = KV_HEADS) -> int:
    """A key and a value per layer, KV head and token, head_dim wide, bf16."""
    return 2 * layers * kv_heads * HEAD_DIM * sequences * tokens * 2


def plan(model, name: str = "grpo", batch: int = B, preset: str = "lm-lora", **knobs):
    settings = PlanSettings(seq_len=SEQ, batch_size=batch, image_tokens=IMAGE_TOKENS, objective=objective(name, knobs))
    return plan_model(str(model), preset=preset, settings=settings)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from vlmsurgeon.tiny.build import build_tiny

    return build_tiny("qwen2_vl", tmp_path_factory.mktemp("tiny") / "qwen2_vl")


@pytest.fixture(scope="module")
def deep(qwen, tmp_path_factory):
    """The tiny Qwen2-VL's widths with 40 layers of full multi-head attention (4 KV heads): a
    cache of 4 × 40 × 32 × 2 bytes a token, above what the training phase keeps."""
    config = json.loads((qwen / "config.json").read_text())
    text = config["text_config"]
    text.update(num_hidden_layers=40, num_key_value_heads=4)
    text.pop("layer_types")
    folder = tmp_path_factory.mktemp("deep")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_training_phase_is_an_sft_step_of_every_sequence_with_the_head_on_the_completions(qwen):
    sft, m = plan(qwen, "sft", batch=N).memory, plan(qwen, **GRPO).memory
    tokens, rows = N * SEQ, N * L  # 8 sequences of 256 tokens; the head on 8 × 64 completion positions
    state = ("weights", "adapters", "gradients", "optimizer")
    assert [getattr(m, k) for k in state] == [getattr(sft, k) for k in state]
    assert m.activations == sft.activations == tokens * LAYERS * 2 * H == 524_288
    assert m.backward == sft.backward == 2 * tokens * A + 2 * W + 4 * tokens * H == 8_404_992
    assert m.logits == 3 * 4 * rows * VOCAB + 2 * 4 * tokens * H == 2_670_592  # one chunk: 512 rows
    assert sft.logits == 3 * 4 * tokens * VOCAB + 2 * 4 * tokens * H  # every position scored
    assert m.no_grad_forward == m.reference_copies == 0  # beta 0: no reference
    assert m.training(True) == m.activations + m.backward == 8_929_280


def test_the_generation_phase_by_hand(qwen):
    m = plan(qwen, **GRPO).memory
    assert m.kv_cache == kv_bytes(N, SEQ) == 524_288
    media = N * IMAGE_TOKENS * MERGE * AV  # the vision tower on each sequence's images, one layer
    prefill = kv_bytes(N, SEQ - L) + N * (SEQ - L) * A  # the prompts' cache and one layer over them
    decode = kv_bytes(N, SEQ) + (2 + 3 * 4) * N * VOCAB  # the full cache; logits bf16, fp32, scores, probs
    assert (media, prefill, decode) == (491_520, 3_342_336, 553_856)
    assert m.generation == max(media, prefill, decode) + 2 * W == 3_358_720
    assert m.peak_phase(True) == m.peak_phase(False) == "training"
    assert m.total == m.state + m.training(True)


def test_a_deep_multi_head_stack_has_its_peak_in_the_generation_phase(deep):
    m = plan(deep, **GRPO).memory
    per_token = 2 * 40 * 4 * HEAD_DIM * 2
    assert per_token == 10_240 and m.kv_cache == kv_bytes(N, SEQ, 40, 4) == N * SEQ * per_token == 20_971_520
    decode = m.kv_cache + (2 + 3 * 4) * N * VOCAB
    prefill = kv_bytes(N, SEQ - L, 40, 4) + N * (SEQ - L) * A
    assert decode > prefill and m.generation == decode + 2 * W == 21_017_472
    training = N * SEQ * 40 * 2 * H + 2 * N * SEQ * A + 2 * W + 4 * N * SEQ * H  # layer inputs + one layer's backward
    assert m.training(True) == training == 18_890_752 < m.generation
    assert m.peak_phase(True) == "generation" and m.total == m.state + m.generation
    # without checkpointing every layer's activations are kept: training is the larger again
    assert m.peak_phase(False) == "training" and m.total_no_ckpt == m.state + m.training(False)


def test_beta_adds_a_reference_pass_without_a_graph(qwen):
    m = plan(qwen, beta=0.04, **GRPO).memory
    layer = N * SEQ * A + 2 * W  # one layer over every token, the dequantized weight beside it
    head = (2 + 8) * N * L * VOCAB + 2 * (N * SEQ + N * L) * H  # one chunk; the input captured, the rows picked
    assert (layer, head) == (3_948_544, 1_679_360)
    assert m.no_grad_forward == max(layer, head) and m.reference_copies == 0  # beside LoRA: the adapter disabled
    assert m.total == plan(qwen, **GRPO).memory.total  # below the policy's pass
    reference = objective("grpo", {"beta": 0.04, **GRPO})
    assert reference.reference and reference.no_grad_sequences(B) == N and reference.sequences(B) == N
    # without LoRA a copy of what trains in full is the reference: projector-only's merger, bf16
    full = plan(qwen, beta=0.04, preset="projector-only", **GRPO).memory
    assert full.reference_copies == 2 * 24_832
    assert plan(qwen, preset="projector-only", **GRPO).memory.reference_copies == 0


def test_plan_json_carries_the_group_and_both_phases_and_the_text_names_the_peak(cli, qwen, deep):
    flags = ["--objective", "grpo", "--reward", "exact", "--preset", "lm-lora", "--seq-len", SEQ]
    flags += ["--batch-size", B, "--num-generations", G, "--max-completion-length", L, "--image-tokens", IMAGE_TOKENS]
    code, out, err = cli("plan", qwen, *flags, "--json")
    assert code == 0, err
    data = json.loads(out)
    m = plan(qwen, **GRPO).memory
    assert data["objective"] == {
        "name": "grpo",
        "knobs": {
            "num_generations": G,
            "max_completion_length": L,
            "temperature": 1.0,
            "beta": 0.0,
            "epsilon": 0.2,
            "loss_type": "dapo",
            "importance_sampling": "token",
            "completions_every": 10,
            "reward": [{"spec": "exact"}],  # as finetune records it
        },
        "paired": False,
        "reference": False,
        "sequences": N,
        "no_grad_sequences": 0,
        "num_generations": G,
        "max_completion_length": L,
        "phases": {
            "generation": {"kv_cache": 524_288, "bytes": m.state + 3_358_720},
            "training": {"bytes": m.state + 8_929_280, "bytes_no_ckpt": m.total_no_ckpt},
            "peak": "training",
            "peak_no_ckpt": "training",
        },
    }
    assert data["memory"]["kv_cache"] == 524_288 and data["memory"]["total"] == m.state + 8_929_280
    code, out, err = cli("plan", qwen, *flags)
    assert code == 0, err
    text = " ".join(out.split())
    assert "2 prompt(s) × 4 completions of at most 64 tokens = 8 sequences per step" in text
    assert "batch 2 prompt(s) × 4 = 8 sequences" in text and "peak: the training phase" in text
    code, out, err = cli("plan", deep, *flags)
    assert code == 0, err
    assert "peak: the generation phase" in " ".join(out.split())


def test_plan_refuses_a_group_of_one_and_knobs_of_another_objective():
    with pytest.raises(BadInput, match=r"^--num-generations 1: must be a whole number >= 2 \(GRPO's advantage"):
        objective("grpo", {"num_generations": 1})
    with pytest.raises(BadInput, match="^--num-generations applies to objective grpo, not dpo"):
        objective("dpo", {"num_generations": 4})
    with pytest.raises(BadInput, match="^--simpo-gamma applies to objective simpo, not grpo"):
        objective("grpo", {"simpo_gamma": 1.0})
    with pytest.raises(BadInput, match="^--loss-type 'ppo': must be one of grpo, dr_grpo, dapo"):
        objective("grpo", {"loss_type": "ppo"})
    with pytest.raises(BadInput, match=r"^--beta 0: must be a number > 0"):
        objective("dpo", {"beta": 0})
    assert objective("grpo", {"beta": 0}).knobs["beta"] == 0.0 and not objective("grpo").reference


def test_plan_refuses_a_completion_that_leaves_no_room_for_a_prompt(qwen):
    with pytest.raises(BadInput, match="^--max-completion-length 256 leaves no room for a prompt in --seq-len 256"):
        plan(qwen, max_completion_length=SEQ)


GRPO_FLAGS = ["--objective", "grpo", "--reward", "exact"]


@pytest.mark.parametrize(
    "flags,says",
    [
        ([*GRPO_FLAGS, "--num-generations", "1"], "num_generations: Input should be greater than or equal to 2"),
        ([*GRPO_FLAGS, "--simpo-gamma", "1"], "simpo_gamma applies to objective simpo, not grpo"),
        ([*GRPO_FLAGS, "--max-completion-length", "2048"], "--max-completion-length 2048 leaves no room for a prompt"),
        (["--objective", "dpo", "--num-generations", "4"], "num_generations applies to objective grpo, not dpo"),
    ],
)
def test_plan_refuses_grpo_knobs_out_of_range_from_the_command_line(cli, qwen, flags, says):
    code, out, err = cli("plan", qwen, "--preset", "lm-lora", *flags)
    assert code == 2, err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err and not out


def _budget(tmp_path, model, entry: str) -> str:
    path = tmp_path / "budget.yaml"
    path.write_text(f"models:\n  - model: {model}\n    preset: lm-lora\n    seq_len: {SEQ}\n{entry}")
    return str(path)


def test_a_budget_entry_checks_its_memory_limit_for_grpo(cli, tmp_path, qwen):
    keys = f"    batch_size: {B}\n    image_tokens: {IMAGE_TOKENS}\n    objective: grpo\n"
    keys += f"    num_generations: {G}\n    max_completion_length: {L}\n    beta: 0\n    loss_type: dr_grpo\n"
    total = plan(qwen, **GRPO).memory.total
    code, out, err = cli(
        "budget", "check", _budget(tmp_path, qwen, keys + f"    limits: {{memory: {total}B}}\n"), "--json"
    )
    assert code == 0, err
    assert json.loads(out)["results"][0]["figure"] == total
    tight = keys + f"    limits: {{memory: {total - 1}B}}\n"
    code, out, err = cli("budget", "check", _budget(tmp_path, qwen, tight), "--json")
    assert code == 1 and json.loads(out)["results"][0]["status"] == "fail"


@pytest.mark.parametrize(
    "keys,says",
    [
        ("    objective: grpo\n    num_generations: 1\n", "models.0: num_generations 1: must be a whole number >= 2"),
        (
            "    objective: dpo\n    num_generations: 4\n",
            "models.0: num_generations applies to objective grpo, not dpo",
        ),
        (
            "    objective: grpo\n    importance_sampling: word\n",
            "models.0: importance_sampling 'word': must be one of",
        ),
        (
            "    objective: grpo\n    max_completion_length: 256\n",
            "max_completion_length 256 leaves no room for a prompt",
        ),
    ],
)
def test_a_budget_entry_with_a_grpo_knob_out_of_range_is_refused(cli, tmp_path, qwen, keys, says):
    code, out, err = cli("budget", "check", _budget(tmp_path, qwen, keys + "    limits: {memory: 1GiB}\n"))
    assert code == 2
    assert says in err and "Traceback" not in err
