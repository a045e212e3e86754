"""Reward functions: each built-in on a table of answers (figures worked by hand), `--reward` specs
(weights, the user's own file, the columns a function needs), and `score`: NaN where a function
returns None, and every way a function can fail refused as one line naming it and the row."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vlmsurgeon.errors import BadInput
from vlmsurgeon.use.rewards import BUILTINS, Reward, RewardFailed, missing_columns, parse_rewards, score
from vlmsurgeon.use.verifiers import choice_letter, last_number, normalize, parse_box


def said(text: str) -> list[dict[str, str]]:
    """A completion in TRL's conversational form."""
    return [{"role": "assistant", "content": text}]


def run(name: str, answers: list, solutions: list | None = None) -> list:
    func, columns = BUILTINS[name]
    kwargs = {"solution": solutions} if solutions is not None else {}
    assert columns == (("solution",) if name != "format" else ())
    conversational = func(prompts=[[]] * len(answers), completions=[said(a) for a in answers], **kwargs)
    assert func(prompts=[""] * len(answers), completions=answers, **kwargs) == conversational  # plain strings too
    return conversational


# ---------------------------------------------------------------- built-ins


def test_exact():
    cases = [
        ("Paris", "paris", 1.0),
        ('  "Paris."  ', "Paris", 1.0),  # quotes, trailing punctuation, spaces
        ("new   york\ncity", "New York City!", 1.0),  # whitespace collapsed
        ("'Paris'?!", "“paris”", 1.0),
        ("<think>it is London</think><answer> Paris </answer>", "Paris", 1.0),  # the <answer> inside
        ("<answer>London</answer> Paris", "Paris", 0.0),
        ("<think>London? No.</think>\n Paris.", "Paris", 1.0),  # what follows the reasoning
        ("Paris, France", "Paris", 0.0),
        ("ß", "SS", 1.0),  # casefold, not lower
        ("42", 42, 1.0),  # a solution that is not text is compared as text
        ("", "", 1.0),
    ]
    assert run("exact", [c[0] for c in cases], [c[1] for c in cases]) == [c[2] for c in cases]
    assert run("exact", ["x"], [None]) == [None]
    # a list of solutions accepts any of them
    assert run("exact", ["NYC.", "Boston", "x"], [["New York", "nyc"], ["New York", "nyc"], []]) == [1.0, 0.0, None]
    assert normalize(" «Done.» ") == "done"


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(b)", "B"),  # a whole answer that is a letter may be lower case
        ("C.", "C"),
        (" D) ", "D"),
        ("Answer: B", "B"),
        ("the answer is (C) because the sky", "C"),
        ("The correct option is D.", "D"),
        ("I first thought the answer is A, but the answer is B", "B"),  # the last statement
        ("<think>maybe A</think><answer>(C)</answer>", "C"),
        ("<think>the answer is (A)?</think> B", "B"),
        ("It is (A), or rather (B)", "B"),
        ("B. London, because it is the capital", "B"),
        ("A red circle", None),  # an article, not a choice
        ("I think so", None),
        ("nothing here", None),
        ("the answer is a circle", None),  # lower case after "answer is" is a word
    ],
)
def test_choice_letter(text, letter):
    assert choice_letter(text) == letter


def test_choice():
    answers = ["Answer: B", "(A)", "no idea", "<answer>C</answer>", "B"]
    solutions = ["B", "B. London", "A", "(c)", "Paris"]
    # "Paris" holds no letter: the reward does not apply to that row
    assert run("choice", answers, solutions) == [1.0, 0.0, 0.0, 1.0, None]


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("42", 42.0),
        ("So x = -3.5.", -3.5),
        ("1,234 apples", 1234.0),
        ("1,234,567.25", 1234567.25),
        ("3/4 of it", 0.75),
        ("-1/4", -0.25),
        ("1e-3", 0.001),
        ("2.5E2", 250.0),
        ("−5", -5.0),  # a unicode minus
        ("from 2 to 7, answer 9", 9.0),  # the last number
        ("2-3", 3.0),  # a range, not a negative three
        ("\\boxed{17} (and 18 more)", 17.0),  # the last \boxed{} wins over the text
        ("<answer>7</answer> 8", 7.0),  # and <answer> over both
        ("<think>3 + 4 = 7, or 8?</think> 7 apples", 7.0),  # after the reasoning
        ("<think>is it 3?</think> no idea", None),
        ("1/0", None),
        ("H2O", None),  # digits inside a word are not a number
        ("no number", None),
        ("1,2,3", 3.0),  # commas between single digits: a list
    ],
)
def test_last_number(text, number):
    assert last_number(text) == number


def test_numeric():
    answers = ["The answer is 1,000,000.", "0.3333333", "1/3", "-0", "12", "5", "5", "1e-10", "7"]
    solutions = ["#### 1000000", 1 / 3, "0.333333", 0, "12.5", "five", None, 0, True]
    # 0.3333333 vs 1/3: relative 1e-7, within 1e-6; 1/3 vs 0.333333: relative 1e-6, within;
    # 1e-10 vs 0: absolute 1e-10, within 1e-9; "five", None and True hold no number: None
    assert run("numeric", answers, solutions) == [1.0, 1.0, 1.0, 1.0, 0.0, None, None, 1.0, None]
    assert run("numeric", ["0.5"], ["0.50001"]) == [0.0]  # relative 2e-5
    assert run("numeric", ["x"], [3]) == [0.0]  # no number in the answer


def test_format():
    answers = [
        "<think>so</think><answer>B</answer>",
        "\n <think>a\nb</think>\n\n<answer>\nB\n</answer>\n",
        "<think>so</think> B",
        "B <think>so</think><answer>B</answer>",
        "<answer>B</answer>",
        "<think>so</think><answer>B</answer> then more",
    ]
    assert run("format", answers) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert BUILTINS["format"][0].__name__ == "format"  # TRL's metric name for it


@pytest.mark.parametrize(
    ("value", "box"),
    [
        ("[10, 20, 30.5, 40]", (10.0, 20.0, 30.5, 40.0)),
        ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]\n```', (1.0, 2.0, 3.0, 4.0)),
        ("<|box_start|>(1,2),(3,4)<|box_end|>", (1.0, 2.0, 3.0, 4.0)),
        ("<box>(1, 2), (3, 4)</box>", (1.0, 2.0, 3.0, 4.0)),
        ("first (5,6),(7,8) then [1,2,3,4]", (5.0, 6.0, 7.0, 8.0)),  # the first box
        ("<answer>[0, 0, 1, 1]</answer> [2, 2, 3, 3]", (0.0, 0.0, 1.0, 1.0)),
        ("<think>not [0, 0, 1, 1]</think>[2, 2, 3, 3]", (2.0, 2.0, 3.0, 3.0)),
        ([1, 2, 3, 4], (1.0, 2.0, 3.0, 4.0)),
        ({"bbox_2d": [1, 2, 3, 4]}, (1.0, 2.0, 3.0, 4.0)),
        ([1, 2, 3], None),
        ("[1, 2, 3]", None),
        ("no box", None),
        (None, None),
    ],
)
def test_parse_box(value, box):
    assert parse_box(value) == box


def test_iou():
    answers = [
        "[0,0,10,10]",
        "[5,0,15,10]",
        "[20,20,30,30]",
        "none",
        "[10,10,0,0]",
        "<box>(0,0),(5,5)</box>",
        "[0,0,1,1]",
    ]
    solutions = [
        [0, 0, 10, 10],
        "[0, 0, 10, 10]",
        [0, 0, 10, 10],
        [0, 0, 10, 10],
        [0, 0, 10, 10],
        [0, 0, 10, 10],
        [5, 5, 5, 9],
    ]
    # overlap 5×10 = 50, union 100 + 100 − 50: 1/3; the box (0,0),(5,5) is 25 of 100; an inverted
    # prediction has no area: 0; a solution with no area does not apply: None
    assert run("iou", answers, solutions) == [1.0, 1 / 3, 0.0, 0.0, 0.0, 0.25, None]
    assert run("iou", ["[0,0,1,1]"], ["no box"]) == [None]


# ---------------------------------------------------------------- --reward specs

USER_FILE = """
def my_fn(prompts, completions, solution, **kwargs):
    return [float(len(c[0]["content"])) for c in completions]

def keyword(completions, *, answer, scale=2.0, completion_ids=None, trainer_state=None, **kwargs):
    return [1.0] * len(completions)

def strict(completions, solution):
    return [float(s == "x") for s in solution]

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def user_file(tmp_path) -> Path:
    path = tmp_path / "rewards.py"
    path.write_text(USER_FILE)
    return path


def test_builtins_and_weights(user_file):
    rewards = parse_rewards(["exact", "format=0.5", "numeric=-1", f"{user_file}:my_fn=2e-1"])
    assert [(r.name, r.weight, r.columns, r.origin) for r in rewards] == [
        ("exact", 1.0, ("solution",), "built-in"),
        ("format", 0.5, (), "built-in"),
        ("numeric", -1.0, ("solution",), "built-in"),
        ("my_fn", 0.2, ("solution",), "rewards.py"),
    ]
    assert rewards[0].func is BUILTINS["exact"][0] and rewards[3].func.__name__ == "my_fn"
    assert parse_rewards([]) == []


def test_columns_are_the_named_parameters_without_a_default(user_file):
    keyword, strict = parse_rewards([f"{user_file}:keyword", f"{user_file}:strict"])
    assert keyword.columns == ("answer",)  # not scale (a default), nor what TRL passes itself
    assert strict.columns == ("solution",)
    assert missing_columns([keyword, strict], {"solution"}) == [("answer", "keyword")]
    assert missing_columns([keyword, strict], {"solution", "answer", "other"}) == []


@pytest.mark.parametrize(
    ("spec", "what"),
    [
        ("exactt", "--reward exactt: no built-in reward 'exactt'"),
        ("exact=abc", "--reward exact=abc: weight 'abc' is not a finite number"),
        ("exact=nan", "--reward exact=nan: weight 'nan' is not a finite number"),
        ("exact=inf", "--reward exact=inf: weight 'inf' is not a finite number"),
        ("{dir}/missing.py:f", "--reward {dir}/missing.py:f: no such file {dir}/missing.py"),
        ("{dir}/rewards.py", "--reward {dir}/rewards.py: name the function in the file"),
        ("{dir}/rewards.py:nope", "--reward {dir}/rewards.py:nope: {dir}/rewards.py has no 'nope'"),
        (
            "{dir}/rewards.py:NOT_A_FUNCTION",
            "--reward {dir}/rewards.py:NOT_A_FUNCTION: 'NOT_A_FUNCTION' in {dir}/rewards.py is a int, not a function",
        ),
    ],
)
def test_bad_specs_are_bad_input(user_file, spec, what):
    directory = user_file.parent
    with pytest.raises(BadInput) as caught:
        parse_rewards([spec.format(dir=directory)])
    assert caught.value.what == what.format(dir=directory) and caught.value.exit_code == 2
    assert "\n" not in caught.value.line()


def test_duplicates_and_a_file_that_does_not_load(user_file, tmp_path):
    with pytest.raises(BadInput, match=r"^--reward exact=2: a second reward named 'exact'"):
        parse_rewards(["exact", "exact=2"])
    other = tmp_path / "other.py"
    other.write_text("def my_fn(completions, **kwargs):\n    return [0.0] * len(completions)\n")
    with pytest.raises(BadInput, match="a second reward named 'my_fn'"):
        parse_rewards([f"{user_file}:my_fn", f"{other}:my_fn"])
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('boom')\n")
    with pytest.raises(BadInput) as caught:
        parse_rewards([f"{broken}:f"])
    assert caught.value.what == f"--reward {broken}:f: loading {broken} raised ValueError('boom')"


# ---------------------------------------------------------------- score


def test_score_calls_as_trl_does_and_none_is_nan(user_file):
    seen = {}

    def partial(prompts, completions, completion_ids, solution, kind, **kwargs):
        seen.update(prompts=prompts, ids=completion_ids, kind=kind, extra=kwargs)
        return [None if k == "skip" else 0.5 for k in kind]

    rewards = [*parse_rewards(["exact", f"{user_file}:my_fn", f"{user_file}:strict"]), Reward("partial", partial)]
    prompts = [[{"role": "user", "content": "q1"}]] * 2 + [[{"role": "user", "content": "q2"}]] * 2
    completions = [said("x"), said("Y!"), said("abc"), said("x")]
    columns = {"solution": ["x", "x", "y", "x"], "kind": ["a", "skip", "b", "skip"]}
    table = score(rewards, prompts, completions, columns, ["line 1"] * 2 + ["line 3"] * 2, [[1], [2, 3], [4], [5]])
    assert table.dtype == torch.float32 and table.shape == (4, 4)
    expected = [[1, 1, 1, 0.5], [0, 2, 1, math.nan], [0, 3, 0, 0.5], [1, 1, 1, math.nan]]
    assert torch.equal(table.isnan(), torch.tensor(expected).isnan())
    assert torch.equal(table.nan_to_num(-7), torch.tensor(expected).nan_to_num(-7))
    assert seen == {"prompts": prompts, "ids": [[1], [2, 3], [4], [5]], "kind": columns["kind"], "extra": {}}
    empty = score(rewards, [], [], {"solution": [], "kind": []}, [])
    assert empty.shape == (0, 4)


def _fails(func, rows=("line 1", "line 1", "line 2", "line 2"), origin="rewards.py") -> RewardFailed:
    reward = Reward("my_fn", func, origin=origin)
    n = len(rows)
    with pytest.raises(RewardFailed) as caught:
        score([reward], [[]] * n, [said(str(k)) for k in range(n)], {"solution": list(range(n))}, list(rows))
    assert caught.value.exit_code == 2 and isinstance(caught.value, BadInput)
    assert "\n" not in caught.value.line() and "(try: " in caught.value.line()
    return caught.value


def test_a_function_that_raises_is_named_with_the_first_row_it_raises_on():
    def boom(completions, solution, **kwargs):
        if 3 in solution:
            raise ValueError("boom")
        return [0.0] * len(completions)

    rows = ("line 1", "line 1", "line 2", "line 7")
    assert _fails(boom, rows).what == "reward 'my_fn' (rewards.py) raised ValueError('boom') on line 7"

    def batch_only(completions, **kwargs):  # raises on the batch, never on one row alone
        if len(completions) > 1:
            raise RuntimeError("too many")
        return [0.0]

    raised = "reward 'my_fn' (rewards.py) raised RuntimeError('too many') on rows line 1–line 2"
    assert _fails(batch_only).what == raised


RETURNED = "reward 'my_fn' (rewards.py) returned"


@pytest.mark.parametrize(
    ("output", "what"),
    [
        (lambda n: 3.0, "a float, not a list, on rows line 1–line 2"),
        (lambda n: None, "a NoneType, not a list, on rows line 1–line 2"),
        (lambda n: [1.0] * 3, "3 values for 4 completions (rows line 1–line 2)"),
        (lambda n: [1.0, 1.0, "1", 1.0], "'1' (str) on line 2: not a number"),
        (lambda n: [1.0, [1.0], 1.0, 1.0], "[1.0] (list) on line 1: not a number"),
        (lambda n: [1.0, 1.0, 1.0, math.nan], "nan on line 2: a reward must be finite"),
        (lambda n: [-math.inf, 1.0, 1.0, 1.0], "-inf on line 1: a reward must be finite"),
        (lambda n: [None] * n, "None for all 4 completions (rows line 1–line 2): it applies to none of them"),
    ],
)
def test_every_bad_output_is_refused_naming_the_function_and_the_row(output, what):
    assert _fails(lambda completions, **kwargs: output(len(completions))).what == f"{RETURNED} {what}"


def test_numbers_of_any_kind_are_rewards():
    import numpy as np

    reward = Reward("mixed", lambda completions, **kw: [True, 2, np.float32(0.5), torch.tensor(0.25), None])
    table = score([reward], [[]] * 5, [said("a")] * 5, {}, ["line 1"] * 5)
    assert table[:4, 0].tolist() == [1.0, 2.0, 0.5, 0.25] and table[4, 0].isnan()


def test_an_async_reward_is_awaited_and_its_errors_named():
    async def later(completions, solution, **kwargs):
        if "bad" in solution:
            raise KeyError("bad")
        return [float(s == "x") for s in solution]

    table = score([Reward("later", later)], [[]] * 2, [said("a")] * 2, {"solution": ["x", "y"]}, ["line 1", "line 2"])
    assert table[:, 0].tolist() == [1.0, 0.0]
    with pytest.raises(RewardFailed) as caught:
        score([Reward("later", later)], [[]] * 2, [said("a")] * 2, {"solution": ["x", "bad"]}, ["line 1", "line 2"])
    assert caught.value.what == "reward 'later' (built-in) raised KeyError('bad') on line 2"


def test_a_builtin_that_applies_to_no_row_of_a_batch_is_refused_only_when_no_reward_applies():
    """A built-in's None is its documented "does not apply" (numeric on a colour): beside a reward
    that scores the rows it is NaN there; alone, nothing could be learned, and the call stops."""
    rewards = parse_rewards(["numeric"])
    with pytest.raises(RewardFailed) as caught:
        score(rewards, [[]] * 2, [said("1"), said("2")], {"solution": ["red", "blue"]}, ["line 4", "line 5"])
    assert caught.value.what == (
        "no reward applies to any completion of rows line 4–line 5: 'numeric' returned None for every one"
    )
    table = score(
        parse_rewards(["numeric", "exact"]), [[]] * 2, [said("red"), said("2")], {"solution": ["red", "blue"]},
        ["line 4", "line 5"],
    )  # fmt: skip
    assert torch.isnan(table[:, 0]).all() and table[:, 1].tolist() == [1.0, 0.0]
