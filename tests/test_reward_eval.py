"""`eval --reward` on prompt rows: totals (each reward's mean over the rows it applies to, the
weighted total as TRL computes it) worked by hand with a fake model; what is refused, before any
model loads where it can be; and a tiny real model whose answers, generated again one by one with
`generate`, give the mean a character-counting reward reports, and whose token ids reach a reward."""

from __future__ import annotations

import json
import math

import pytest

from tests.test_eval import FakeModel, write_jsonl
from vlmsurgeon.use import generation

COUNT = """
def chars(prompts, completions, **kwargs):
    return [float(len(c[0]["content"])) for c in completions]

def seen(prompts, completions, completion_ids, solution, **kwargs):
    # what a reward is handed: the prompt's last user text, the ids, the solution
    return [float(p[-1]["content"][-1]["text"] == "Colour?" and s == "red" and ids == []) for p, s, ids in
            zip(prompts, solution, completion_ids)]

def unsure(completions, **kwargs):
    return [None if c[0]["content"] == "5" else 1.0 for c in completions]

def ids(completion_ids, **kwargs):
    return [float(len(i)) for i in completion_ids]

def picky(completions, solution, **kwargs):
    if "boom" in solution:
        raise ValueError("boom")
    return [None if s == "4" else 1.0 for s in solution]
"""


@pytest.fixture
def prompts(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    rows = [
        {"messages": [{"role": "user", "content": "<image>Colour?"}], "images": ["red.png"], "solution": "red"},
        {"prompt": "2+2?", "solution": "4"},
        {"messages": [{"role": "user", "content": "Hi"}]},  # no solution: skipped
        {"messages": [{"role": "user", "content": "Shape?"}, {"role": "assistant", "content": "x"}], "solution": "B"},
    ]
    return write_jsonl(tmp_path / "p.jsonl", rows)


@pytest.fixture
def rewards_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(COUNT)
    return path


REPLIES = {
    "tuned": {"Colour?": "<answer>Red.</answer>", "2+2?": "It is 4", "Shape?": "(B)", "Hi": "Hello"},
    "base": {"Colour?": "blue", "2+2?": "5", "Shape?": "I think A", "Hi": "Hey"},
}


def test_totals_by_hand_with_compare(cli, monkeypatch, prompts, rewards_file):
    fake = FakeModel(REPLIES)
    fake.install(monkeypatch)
    args = ["--reward", "exact", "--reward", f"{rewards_file}:chars=0.5", "--reward", "choice=2"]
    code, out, err = cli("eval", "tuned", "--data", prompts, "--compare", "base", *args, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["kind"] == "prompt" and result["rows"] == 3
    assert result["skipped"] == [
        {"row": 3, "where": "line 3", "reason": "no 'solution' column, which reward 'exact' reads"}
    ]
    assert "skipped line 3" in err
    assert result["rewards"] == [
        {"name": "exact", "weight": 1.0, "columns": ["solution"], "origin": "built-in"},
        {"name": "chars", "weight": 0.5, "columns": [], "origin": "mine.py"},
        {"name": "choice", "weight": 2.0, "columns": ["solution"], "origin": "built-in"},
    ]
    # tuned: exact 1, 0, 0 ("It is 4" is not "4"; "(B)" is not "B"); chars 21, 7, 3; choice on
    # "red" and "4" does not apply (no letter), "(B)" vs "B": 1 -> mean 1 over one row
    # totals per row: 1 + 10.5 = 11.5; 3.5; 0 + 1.5 + 2 = 3.5 -> mean 18.5 / 3
    tuned = result["totals"]["model"]
    assert tuned == pytest.approx(
        {"rewards/exact/mean": 1 / 3, "rewards/chars/mean": 31 / 3, "rewards/choice/mean": 1.0, "reward": 18.5 / 3}
    )
    # base: exact 0, 0, 0; chars 4, 1, 9; choice "I think A" holds no letter form: 0
    base = result["totals"]["compare"]
    assert base == pytest.approx(
        {"rewards/exact/mean": 0.0, "rewards/chars/mean": 14 / 3, "rewards/choice/mean": 0.0, "reward": 7 / 3}
    )
    assert result["delta"] == pytest.approx({k: tuned[k] - base[k] for k in tuned})
    assert result["applied"] == {
        "model": {"exact": 3, "chars": 3, "choice": 1},
        "compare": {"exact": 3, "chars": 3, "choice": 1},
    }
    first, second, third = result["per_row"]
    assert first["prompt"] == "user: <image>Colour?" and first["columns"] == {"solution": "red"}
    assert first["predictions"] == {"model": "<answer>Red.</answer>", "compare": "blue"}
    assert first["rewards"]["model"] == {"exact": 1.0, "chars": 21.0, "choice": None}
    assert first["reward"] == {"model": 11.5, "compare": 2.0}
    assert third["where"] == "line 4" and third["prompt"] == "user: Shape?"  # its answer "x" dropped
    assert {c[2] for c in fake.calls} == {0.0} and sorted(c[1] for c in fake.calls) == [0, 0, 0, 0, 1, 1]


def test_the_table_names_each_reward_and_where_one_did_not_apply(cli, monkeypatch, prompts, rewards_file):
    """The transcript of docs/grpo.md."""
    FakeModel(REPLIES).install(monkeypatch)
    monkeypatch.setenv("COLUMNS", "200")  # the data's long path on one line
    args = ["--reward", "exact", "--reward", "choice=2", "--compare", "base"]
    code, out, err = cli("eval", "tuned", "--data", prompts, *args)
    assert code == 0, err
    assert out.splitlines() == [
        f"{prompts}: 3 prompt(s), 1 skipped",
        "model                     exact  choice ×2  reward (weighted)",
        "-----------------------  ------  ---------  -----------------",
        "model: tuned              0.333      1.000              1.000",  # (1 + 0 + 0 + 2 × 1) / 3
        "compare: base             0.000      0.000              0.000",
        "delta (model − compare)  +0.333     +1.000             +1.000",
        "choice: applies to 1 of 3 prompt(s); its mean is over those",  # the same rows for both models
    ]
    # a function of yours may skip different rows for each model: said per model. It reads no
    # column, so the row without a solution is scored too
    code, out, err = cli("eval", "tuned", "--data", prompts, "--reward", f"{rewards_file}:unsure", "--compare", "base")
    assert code == 0, err
    assert out.splitlines()[0] == f"{prompts}: 4 prompt(s), 0 skipped"
    assert out.splitlines()[-1:] == ["unsure (compare): applies to 3 of 4 prompt(s); its mean is over those"]


def test_a_reward_reads_the_prompt_the_ids_and_its_columns(cli, monkeypatch, prompts, rewards_file):
    FakeModel(REPLIES).install(monkeypatch)
    code, out, err = cli("eval", "tuned", "--data", prompts, "--reward", f"{rewards_file}:seen", "--json")
    assert code == 0, err
    per_row = json.loads(out)["per_row"]
    assert [r["rewards"]["model"]["seen"] for r in per_row] == [1.0, 0.0, 0.0]


def test_refusals(cli, monkeypatch, prompts, rewards_file, tmp_path):
    fake = FakeModel(REPLIES)
    fake.install(monkeypatch)
    loads = []
    monkeypatch.setattr(generation, "load_for_inference", lambda *a, **k: loads.append(a))

    def refused(*args: str) -> str:
        code, out, err = cli("eval", "tuned", *map(str, args))
        assert (code, out) == (2, "") and len(err.splitlines()) == 1, err
        return err

    # prompt rows without --reward: the option is named
    only_prompts = write_jsonl(tmp_path / "q.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    err = refused("--data", only_prompts)
    assert "1 of 1 row(s) are prompts with no answer to compare with (first: line 1)" in err
    assert "(try: score the answers with --reward, e.g. --reward exact against each row's 'solution')" in err
    # --reward on pairs
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Hi", "chosen": "Hello", "rejected": "Go"}])
    err = refused("--data", pairs, "--reward", "exact")
    assert "holds preference pairs, which eval scores by log-probs, not by rewards" in err
    err = refused("--data", prompts, "--reward", "exact", "-o", tmp_path / "rep")
    assert "eval -o: " in err and "--json" in err
    assert "no built-in reward 'exactt'" in refused("--data", prompts, "--reward", "exactt")
    assert "no such file" in refused("--data", prompts, "--reward", "gone.py:f")
    # rows without the column a reward reads are skipped; none left is bad input
    no_column = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "Hi"}, {"prompt": "Ho", "answer": "x"}])
    err = refused("--data", no_column, "--reward", "exact")
    assert "has no prompt row to score (2 row(s) skipped: line 1: no 'solution' column" in err
    assert not loads and not fake.calls


def test_a_failing_reward_is_one_line_naming_it_and_the_row(cli, monkeypatch, tmp_path, rewards_file):
    FakeModel({"tuned": {"a": "x", "b": "y"}}).install(monkeypatch)
    rows = [{"prompt": "a", "solution": "ok"}, {"prompt": "b", "solution": "boom"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    code, out, err = cli("eval", "tuned", "--data", data, "--reward", f"{rewards_file}:picky")
    assert (code, out) == (2, "") and err.splitlines()[0] == "eval: model: 2/2 prompt(s) answered"
    assert err.splitlines()[1:] == [
        "vlmsurgeon: error: reward 'picky' (mine.py) raised ValueError('boom') on line 2 "
        "(try: fix the function and try again)"
    ]
    # a reward that applies to no row at all says so
    data = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "a", "solution": "4"}])
    code, out, err = cli("eval", "tuned", "--data", data, "--reward", f"{rewards_file}:picky")
    assert code == 2 and "reward 'picky' (mine.py) returned None for all 1 completions (line 1)" in err


def test_a_tiny_model_scored_by_a_counting_reward(cli, tiny_models, shapes, rewards_file, tmp_path):
    """Real generation: the answers are those `generate` gives for the same prompt and image, and
    the reward's mean is their mean length."""
    model = tiny_models("qwen2_vl")
    images = sorted((shapes.parent / "img").iterdir())[:2]
    rows = [
        {"messages": [{"role": "user", "content": "<image>What is this?"}], "images": [str(p)], "solution": "x"}
        for p in images
    ]
    data = write_jsonl(tmp_path / "prompts.jsonl", rows)
    specs = ["--reward", f"{rewards_file}:chars", "--reward", f"{rewards_file}:ids=0"]
    code, out, err = cli("eval", model, "--data", data, *specs, "--max-new-tokens", "6", "--json")
    assert code == 0, err
    result = json.loads(out)
    answers, tokens = [], []
    for image in images:
        args = ["--image", image, "--prompt", "What is this?", "--max-new-tokens", "6", "--json"]
        code, said, err = cli("generate", model, *args)
        assert code == 0, err
        answers.append(json.loads(said)["text"])
        tokens.append(json.loads(said)["tokens"])
    assert [r["predictions"]["model"] for r in result["per_row"]] == answers
    lengths = [len(a) for a in answers]
    assert all(lengths)  # the tiny model's bytes: a mean of 0 would prove nothing
    assert [r["rewards"]["model"]["chars"] for r in result["per_row"]] == lengths
    assert math.isclose(result["totals"]["model"]["rewards/chars/mean"], sum(lengths) / 2, rel_tol=1e-6)
    # the ids a reward reads are the tokens generated; weighted 0, they leave the total to chars
    assert [r["rewards"]["model"]["ids"] for r in result["per_row"]] == tokens == [6, 6]
    assert result["totals"]["model"]["reward"] == result["totals"]["model"]["rewards/chars/mean"]
