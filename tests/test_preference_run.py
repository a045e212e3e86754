"""`finetune --objective dpo|ipo|orpo|simpo` on the whole chain: a QLoRA run on the shapes pairs
starts where DPO must (policy = reference: loss ln 2, rewards 0), logs TRL's metric names, resumes
exactly after a kill, merges with `--verify` ok, answers from the export; and what the options
refuse before any weight loads."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT
from tests.test_finetune import options
from vlmsurgeon.train.loop import finetune

DPO_METRICS = {
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
}


def _log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pairs(shapes):
    return shapes.parent / "pairs.jsonl"


@pytest.fixture(scope="module")
def dpo_run(tiny_models, pairs, tmp_path_factory):
    run = tmp_path_factory.mktemp("dpo") / "run"
    finetune(options(tiny_models("qwen2_vl"), pairs, run, objective="dpo", steps=4, save_every=2, lr=1e-3, seq_len=256))
    return run


def test_dpo_starts_at_ln2_with_zero_rewards_and_logs_trls_metrics(dpo_run):
    first, *rest = [r for r in _log(dpo_run) if "loss" in r]
    # step 1: LoRA B is zero and the merger at its start, so the policy is the reference
    assert abs(first["loss"] - math.log(2)) < 1e-6
    assert first["rewards/chosen"] == first["rewards/rejected"] == first["rewards/margins"] == 0.0
    assert first["logps/chosen"] < 0 and first["logps/rejected"] < 0
    assert DPO_METRICS <= first.keys() and all(DPO_METRICS <= r.keys() for r in rest)
    assert len(rest) == 3 and any(r["rewards/margins"] != 0 for r in rest)
    record = json.loads((dpo_run / "run.json").read_text())["inputs"]
    assert record["objective"] == {"name": "dpo", "beta": 0.1}
    assert json.loads((dpo_run / "vlmsurgeon.json").read_text())["training"]["global_step"] == 4


def test_a_dpo_run_merges_verified_and_answers(dpo_run, pairs, tmp_path, cli):
    code, out, err = cli("merge", str(dpo_run), "-o", str(tmp_path / "merged"), "--verify")
    assert code == 0, err
    assert "verify: ok" in out
    image = pairs.parent / "img" / "red_circle.png"
    args = ["--image", str(image), "--prompt", "What is in the picture?", "--max-new-tokens", "4"]
    code, out, err = cli("generate", str(tmp_path / "merged"), *args)
    assert code == 0, err
    code, from_run, err = cli("generate", str(dpo_run), *args)
    assert code == 0, err
    assert out.strip() and out == from_run  # the export answers as the run, greedy


def test_a_killed_qlora_dpo_run_resumes_to_the_same_weights(tiny_models, pairs, dpo_run, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "vlmsurgeon.cli",
        "finetune",
        str(tiny_models("qwen2_vl")),
        "--data",
        str(pairs),
        "-o",
        str(run),
        "--objective",
        "dpo",
        "--freeze",
        "vision",
        "--steps",
        "4",
        "--save-every",
        "2",
        "--lr",
        "1e-3",
        "--batch-size",
        "2",
        "--seq-len",
        "256",
        "--seed",
        "0",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, start_new_session=True)
    marker = run / "checkpoints" / "checkpoint-2" / ".vlmsurgeon-complete"
    deadline = time.time() + 180
    while time.time() < deadline and not marker.is_file() and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # no handler runs: what is on disk is all there is
    proc.wait(timeout=60)
    assert marker.is_file()
    assert not (run / "vlmsurgeon.json").exists()
    result = finetune(
        options(tiny_models("qwen2_vl"), pairs, run, objective="dpo", steps=4, save_every=2, lr=1e-3, seq_len=256),
        resume=True,
    )
    assert result.global_step == 4
    a = load_file(str(dpo_run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any("merger" in k for k in a)  # LoRA and the merger, trained in full
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    # the resumed steps log the same metrics as the run that was never stopped
    straight = {r["step"]: r for r in _log(dpo_run) if "loss" in r}
    for row in (r for r in _log(run) if "loss" in r and r["step"] > 2):
        assert abs(row["loss"] - straight[row["step"]]["loss"]) <= 1e-5
        assert abs(row["rewards/margins"] - straight[row["step"]]["rewards/margins"]) <= 1e-5


@pytest.mark.parametrize("objective", ["ipo", "orpo", "simpo"])
def test_each_pair_objective_trains_from_its_first_step(tiny_models, pairs, tmp_path, objective):
    run = tmp_path / objective
    finetune(
        options(
            tiny_models("qwen2_vl"), pairs, run, objective=objective, steps=2, lr=1e-3, seq_len=256, quantize="none"
        )
    )
    first = next(r for r in _log(run) if "loss" in r)
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= first.keys()
    if objective == "ipo":  # policy = reference at step 1: (0 - 1/(2β))², β 0.1
        assert abs(first["loss"] - 25.0) < 1e-4
    else:  # reference-free: rewards are β × the answers' mean log-prob, never 0 at the start
        assert first["rewards/chosen"] < 0 and first["rewards/rejected"] < 0
    assert torch.isfinite(torch.tensor(first["loss"]))


def test_resume_with_another_beta_or_objective_is_refused(dpo_run, tiny_models, pairs, cli, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(dpo_run, run)
    base = [
        "finetune",
        str(tiny_models("qwen2_vl")),
        "--data",
        str(pairs),
        "-o",
        str(run),
        "--freeze",
        "vision",
        "--steps",
        "6",
        "--save-every",
        "2",
        "--lr",
        "1e-3",
        "--batch-size",
        "2",
        "--seq-len",
        "256",
        "--resume",
    ]
    code, _, err = cli(*base, "--objective", "dpo", "--beta", "0.5")
    assert code == 2
    assert "started with other inputs: objective" in err and '"beta": 0.1' in err and '"beta": 0.5' in err
    code, _, err = cli(*base, "--objective", "ipo")
    assert code == 2 and "objective" in err and "ipo" in err


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--objective", "dpo", "--simpo-gamma", "1"], "simpo_gamma applies to objective simpo, not dpo"),
        (["--beta", "0.2"], "beta applies to objective dpo or ipo or orpo or simpo or kto or grpo, not sft"),
        (["--objective", "dpo", "--beta", "0"], "beta"),
        (["--objective", "nope"], "objective"),
    ],
)
def test_a_knob_the_objective_does_not_read_is_refused(tiny_models, pairs, tmp_path, cli, flags, says):
    code, out, err = cli(
        "finetune", str(tiny_models("qwen2_vl")), "--data", str(pairs), "-o", str(tmp_path / "r"), *flags
    )
    assert code == 2, err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_kto_starts_at_one_half_with_a_zero_kl_and_trains(tiny_models, pairs, tmp_path):
    run = tmp_path / "kto"
    data = pairs.parent / "kto.jsonl"
    finetune(options(tiny_models("qwen2_vl"), data, run, objective="kto", steps=3, batch_size=4, seq_len=256))
    first, *rest = [r for r in _log(run) if "loss" in r]
    # policy = reference: every row's loss is 1 - sigmoid(0), the KL baseline 0
    assert first["loss"] == 0.5 and first["kl"] == 0.0
    assert first["rewards/chosen"] == first["rewards/rejected"] == 0.0
    assert {"kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"} <= first.keys()
    assert len(rest) == 2 and all(r["kl"] >= 0 for r in rest) and any(r["loss"] != 0.5 for r in rest)
    assert json.loads((run / "run.json").read_text())["inputs"]["objective"] == {
        "name": "kto",
        "beta": 0.1,
        "desirable_weight": 1.0,
        "undesirable_weight": 1.0,
    }


def test_kto_with_one_row_per_batch_is_refused_before_loading(tiny_models, pairs, tmp_path, cli):
    data = pairs.parent / "kto.jsonl"
    args = ["finetune", str(tiny_models("qwen2_vl")), "--data", str(data), "-o", str(tmp_path / "r")]
    code, _, err = cli(*args, "--objective", "kto", "--batch-size", "1")
    assert code == 2 and "--objective kto needs --batch-size 2 or more" in err
    assert "loading weights" not in err


@pytest.fixture(scope="module")
def sft_run(tiny_models, shapes, tmp_path_factory):
    run = tmp_path_factory.mktemp("sft") / "run"
    finetune(options(tiny_models("qwen2_vl"), shapes, run, steps=6, lr=1e-2, seq_len=256))
    return run


def test_from_an_sft_run_the_reference_is_that_model_and_no_base_is_copied(tiny_models, sft_run, pairs):
    from transformers import set_seed

    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.recipe.freeze import apply_preset
    from vlmsurgeon.recipe.preset import freeze_preset
    from vlmsurgeon.train.loop import _model_plan, load_for_training, load_processor, make_collator
    from vlmsurgeon.train.preference import PairCollator, Reference, answer_logps, start_from
    from vlmsurgeon.train.prepare import cast_trained
    from vlmsurgeon.use.generation import load_for_inference

    model_dir = tiny_models("qwen2_vl")
    opts = options(model_dir, pairs, sft_run.parent / "x", objective="dpo", from_run=str(sft_run), seq_len=256)
    _, tree, preset, opts = _model_plan(str(model_dir), opts, False)
    assert preset.model_dump() == freeze_preset("vision", ["vision", "merger", "lm", "head"]).model_dump()
    processor, _ = load_processor(str(model_dir), opts)
    batch = PairCollator(make_collator(processor, opts))(load_dataset_rows(pairs, kind="pair").samples[:3])
    # the SFT model as `generate` loads the run: its 4-bit base and adapter, as trained
    sft = load_for_inference(str(sft_run)).model
    sft.eval()
    with torch.no_grad():
        expected = answer_logps(sft, batch, None)
    set_seed(0)
    model = load_for_training(str(model_dir), opts, preset, tree, "qwen2_vl")
    applied = apply_preset(model, preset, "qwen2_vl")
    cast_trained(applied.model)
    assert start_from(applied, str(sft_run)) == sum(1 for p in applied.model.parameters() if p.requires_grad)
    reference = Reference(applied.model, whole=True)
    with torch.no_grad():
        for p in applied.model.parameters():  # training moves every trained tensor
            if p.requires_grad:
                p.add_(0.01)
    with reference.active(applied.model):
        got = answer_logps(applied.model, batch, None)
    assert torch.allclose(got.sum, expected.sum, atol=1e-4, rtol=0), (got.sum, expected.sum)
    # the reference costs a copy of the trained tensors only: 57,600 parameters (LoRA and merger)
    trained = [p for p in applied.model.parameters() if p.requires_grad]
    assert reference.copied == (sum(p.numel() for p in trained), 4 * sum(p.numel() for p in trained))
    assert reference.copied[0] == 57_600
    frozen = {p.untyped_storage().data_ptr() for p in applied.model.parameters() if not p.requires_grad}
    assert not frozen & {t.untyped_storage().data_ptr() for t in reference.start.values()}


def test_precomputed_reference_trains_as_the_live_one(tiny_models, pairs, dpo_run, tmp_path):
    run = tmp_path / "pre"
    finetune(
        options(
            tiny_models("qwen2_vl"),
            pairs,
            run,
            objective="dpo",
            steps=4,
            save_every=2,
            lr=1e-3,
            seq_len=256,
            precompute_ref=True,
        )
    )
    live = [r for r in _log(dpo_run) if "loss" in r]
    pre = [r for r in _log(run) if "loss" in r]
    for a, b in zip(live, pre, strict=True):
        for key in ("loss", "rewards/margins", "rewards/chosen", "logps/rejected"):
            assert abs(a[key] - b[key]) <= 1e-5, (key, a[key], b[key])


def test_dpo_from_an_sft_run_trains_on_and_records_it(tiny_models, sft_run, pairs, tmp_path):
    run = tmp_path / "dpo"
    finetune(options(tiny_models("qwen2_vl"), pairs, run, objective="dpo", from_run=str(sft_run), steps=2, seq_len=256))
    record = json.loads((run / "run.json").read_text())["inputs"]
    assert record["from_run"]["path"] == str(sft_run.resolve()) and len(record["from_run"]["sha256"]) == 64
    sft = load_file(str(sft_run / "adapter" / "adapter_model.safetensors"))
    dpo = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert sft.keys() == dpo.keys()
    # it trained on from the SFT adapter: close to it (2 small steps), not to a fresh one (B = 0)
    b_keys = [k for k in sft if "lora_B" in k]
    assert all(sft[k].abs().max() > 0 for k in b_keys)
    assert max((sft[k] - dpo[k]).abs().max().item() for k in b_keys) < 0.05


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--freeze", "vision,merger"], "which trains other components or another LoRA"),
        (["--freeze", "vision", "--from", "/nonexistent-run"], "not a finished run"),
        (["--freeze", "vision", "--objective", "sft"], "from_run applies to the preference objectives"),
    ],
)
def test_from_a_run_that_does_not_fit_is_refused_before_loading(
    tiny_models, sft_run, pairs, tmp_path, cli, extra, says
):
    args = ["finetune", str(tiny_models("qwen2_vl")), "--data", str(pairs), "-o", str(tmp_path / "r")]
    args += ["--objective", "dpo", "--from", str(sft_run), *extra]
    code, _, err = cli(*args)
    assert code == 2, err
    assert says in err and "loading weights" not in err and "Traceback" not in err


PEER_PAIRS = {
    "llamafactory": "llamafactory/dataset_info.json:dpo_demo",
    "swift": "swift/dpo.jsonl",
    "trl": "trl/preference.jsonl",
}


@pytest.mark.sweep  # 6 chains (about 90 s): make sweep, which CI runs after make test
@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
@pytest.mark.parametrize("peer", sorted(PEER_PAIRS))
def test_qlora_dpo_from_each_peers_format_resumes_merges_and_answers(tiny_models, tmp_path, cli, family, peer):
    """Each peer's own preference rows (tests/fixtures/preference, copied from their files), text
    and image pairs: 2 QLoRA steps, then a resume from step 1 ends on the same adapter, the merge
    verifies, and the export answers."""
    import shutil

    data = ROOT / "tests" / "fixtures" / "preference" / PEER_PAIRS[peer]
    opts = dict(objective="dpo", steps=2, save_every=1, batch_size=1, lr=1e-3, seq_len=1024)
    straight, split = tmp_path / "straight", tmp_path / "split"
    finetune(options(tiny_models(family), data, straight, **opts))
    finetune(options(tiny_models(family), data, split, **opts))
    shutil.rmtree(split / "checkpoints" / "checkpoint-2")
    for entry in ("adapter", "vlmsurgeon.json"):
        path = split / entry
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert finetune(options(tiny_models(family), data, split, **opts), resume=True).global_step == 2
    a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(split / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    record = json.loads((straight / "vlmsurgeon.json").read_text())
    assert record["data"]["preference"]["kind"] == "pair" and record["data"]["preference"]["pairs"] >= 2
    code, out, err = cli("merge", str(straight), "-o", str(tmp_path / "merged"), "--verify")
    assert code == 0 and "verify: ok" in out, err
    code, out, err = cli("generate", str(tmp_path / "merged"), "--prompt", "Hi", "--max-new-tokens", "3")
    assert code == 0 and out.strip(), err


def _pair(chosen="A red circle.", rejected="A red square.", image=True, text="What is in the picture?"):
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return {
        "prompt": [{"role": "user", "content": content}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "images": ["img/red_circle.png"],
    }


BAD_PAIRS = {
    "identical": (_pair(rejected="A red circle."), "chosen and rejected are the same answer"),
    "empty": (_pair(rejected=" "), "empty rejected answer"),
    "placeholders": (_pair(text="<image><image>Which?"), "image placeholder(s) but 1 image(s)"),
    "cut": (_pair(rejected="A red square " * 60), "rejected: "),
    "no user turn": (dict(_pair(), prompt=[{"role": "system", "content": "Be brief."}]), "no user turn"),
}


@pytest.mark.parametrize("kind", sorted(BAD_PAIRS))
def test_a_bad_preference_row_stops_the_run_before_loading_naming_its_row(tiny_models, pairs, tmp_path, cli, kind):
    row, says = BAD_PAIRS[kind]
    good = pairs.read_text().splitlines()[:3]
    data = pairs.parent / f"bad-{kind.replace(' ', '-')}.jsonl"
    data.write_text("\n".join([*good, json.dumps(row)]) + "\n")
    args = ["finetune", str(tiny_models("qwen2_vl")), "--data", str(data), "-o", str(tmp_path / "r")]
    code, _, err = cli(*args, "--objective", "dpo", "--freeze", "vision", "--seq-len", "256")
    assert code == 2, err
    line = err.strip().splitlines()
    assert len(line) == 1 and "line 4" in line[0] and says in line[0], err
    assert "loading weights" not in err and "Traceback" not in err


def test_a_kto_label_that_is_not_true_or_false_is_a_bad_row(tiny_models, pairs, tmp_path, cli):
    rows = pairs.parent.joinpath("kto.jsonl").read_text().splitlines()[:4]
    bad = dict(json.loads(rows[0]), label="yes")
    data = pairs.parent / "bad-kto.jsonl"  # beside its images
    data.write_text("\n".join([*rows, json.dumps(bad)]) + "\n")
    args = ["finetune", str(tiny_models("qwen2_vl")), "--data", str(data), "-o", str(tmp_path / "r")]
    code, _, err = cli(*args, "--objective", "kto", "--freeze", "vision", "--batch-size", "2")
    assert code == 2 and "line 5" in err and "'label' must be true or false" in err and err.count("\n") == 1


def test_eval_on_pairs_scores_both_answers_by_their_log_probs(dpo_run, tiny_models, pairs, cli, tmp_path):
    from vlmsurgeon.data.collate import Collator
    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.train.preference import PairCollator, answer_logps
    from vlmsurgeon.use.generation import load_for_inference

    base = tiny_models("qwen2_vl")
    code, out, err = cli("eval", str(dpo_run), "--compare", str(base), "--data", str(pairs), "--limit", "4", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (
        report["kind"] == "pair" and report["rows"] == 4 and [m["kind"] for m in report["models"]] == ["run", "model"]
    )
    rows = report["per_row"]
    for name in ("model", "compare"):
        margins = [r["logps"]["chosen"][name] - r["logps"]["rejected"][name] for r in rows]
        assert report["totals"][name]["accuracy"] == sum(m > 0 for m in margins) / 4
        assert abs(report["totals"][name]["margin"] - sum(margins) / 4) < 1e-9
    rewards = [
        (r["logps"]["chosen"]["model"] - r["logps"]["chosen"]["compare"])
        - (r["logps"]["rejected"]["model"] - r["logps"]["rejected"]["compare"])
        for r in rows
    ]
    assert report["reward_accuracy"] == sum(x > 0 for x in rewards) / 4
    # the base's figures are its answers' summed log-probs, as training computes them
    loaded = load_for_inference(str(base))
    samples = load_dataset_rows(pairs, kind="pair").samples[:1]
    with torch.no_grad():
        expected = answer_logps(loaded.model, PairCollator(Collator(loaded.processor, 1 << 30))(samples), None)
    assert abs(rows[0]["logps"]["chosen"]["compare"] - expected.sum[0].item()) < 1e-3
    assert abs(rows[0]["logps"]["rejected"]["compare"] - expected.sum[1].item()) < 1e-3
    code, _, err = cli("eval", str(dpo_run), "--data", str(pairs), "-o", str(tmp_path / "report"))
    assert code == 2 and "preference pairs are scored by log-probs" in err and not (tmp_path / "report").exists()
