"""GRPO's prompt rows as the peers ship them: each fixture under tests/fixtures/grpo/ (TRL
prompt-only rows, ms-swift GRPO rows) and the other readers' rows read into the exact Sample
(prompt messages, media, the columns the rewards read); every bad-row kind reported by row and
reason; rows read as another kind named with the objective that reads them; the collator's
prompt encoding; the pre-pass and `data check --objective grpo` through a real tiny processor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import ROOT
from vlmsurgeon.data.check import check_rows
from vlmsurgeon.data.collate import Collator
from vlmsurgeon.data.preference import ANSWERLESS, AS_SFT
from vlmsurgeon.data.prompts import EMPTY_PROMPT, NO_USER, TRL_PREFILL
from vlmsurgeon.data.rows import load_dataset_rows

FIXTURES = ROOT / "tests" / "fixtures" / "grpo"
TRL = FIXTURES / "trl"
SWIFT = FIXTURES / "swift"
LF = ROOT / "tests" / "fixtures" / "preference" / "llamafactory"
DROPPED = "final assistant turn(s) dropped: GRPO generates the answer"
CONTEXT = "1 earlier assistant turn(s) are context only (GRPO generates the answer)"


def text(role: str, value: str, images: int = 0) -> dict[str, Any]:
    """A prompt message in the internal shape, `images` image parts first; nothing trains."""
    parts = [{"type": "image"}] * images
    return {"role": role, "content": [*parts, {"type": "text", "text": value}], "train": False}


def user(value: str, images: int = 0) -> dict[str, Any]:
    return text("user", value, images)


# (line, format, messages, image paths relative to the fixture folder, columns)
Expected = tuple[int, str, list[dict[str, Any]], list[str], dict[str, Any]]
PEERS: dict[str, tuple[Path, list[Expected], list[str]]] = {
    "trl": (
        TRL / "prompts.jsonl",
        [
            (1, "trl-prompt", [user("Two plus five is")], [], {"solution": "7"}),
            (
                2,
                "trl-prompt",
                [text("system", "Answer in one word."), user("What colour is a ripe lemon?")],
                [],
                {"solution": "yellow"},
            ),
            (3, "trl-prompt", [user("What colour is the square?", 1)], ["images/red.png"], {"solution": "red"}),
            (
                4,  # string content and an images list: the images at the start of the first user turn
                "trl-prompt",
                [user("Which image is blue, the first or the second?", 2)],
                ["images/red.png", "images/blue.png"],
                {"solution": "second", "task": "compare"},
            ),
            # a text prompt with images (TRL refuses it): one user turn, its images before the text
            (5, "trl-prompt", [user("Which colour is this square?", 1)], ["images/blue.png"], {"solution": "blue"}),
            # trl-lib/tldr's shape: GRPOTrainer does not read the completion
            (
                6,
                "trl-prompt",
                [user("Summarise: the cat slept on the warm mat all afternoon.")],
                [],
                {"keyword": "cat"},
            ),
        ],
        [f"1 {DROPPED}"],
    ),
    "swift": (
        SWIFT / "grpo.jsonl",
        [
            (
                1,
                "swift-prompt",
                [text("system", "You are a careful calculator."), user("What is 6 times 7?")],
                [],
                {"solution": "42"},
            ),
            (
                2,
                "swift-prompt",
                [
                    text("system", "You are a careful calculator."),
                    user("What is 9 minus 4?"),
                    text("assistant", "It is 5."),
                    user("And that plus 10?"),
                ],
                [],
                {"solution": "15"},
            ),
            (
                3,  # the final assistant turn is dropped, as ms-swift's GRPOTrainer drops it
                "swift-prompt",
                [user("How many shapes are in the image? Give the number in <answer> </answer> tags.", 1)],
                ["green.png"],
                {"solution": "<answer> 1 </answer>"},
            ),
            (
                4,
                "swift-prompt",
                [user("Name the colour of this picture.", 1)],
                ["green.png"],
                {"solution": "green", "difficulty": 1},
            ),
        ],
        [f"1 {DROPPED}", CONTEXT],
    ),
}


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_peer_fixture_gives_the_exact_prompts(peer):
    path, expected, said = PEERS[peer]
    data = load_dataset_rows(path, kind="prompt")
    assert data.bad == [] and data.unused == {} and data.row_kind == "prompt"
    got = [
        (s.line, s.format, s.messages, [str(Path(p).relative_to(path.parent)) for p in s.images], s.columns)
        for s in data.samples
    ]
    assert got == expected
    assert all(s.videos == [] and s.rejected is None and s.label is None for s in data.samples)
    names = [e[1] for e in expected]
    assert data.formats == {name: names.count(name) for name in names}
    assert data.messages() == said


def test_other_readers_rows_are_prompts_without_their_final_answer(tmp_path):
    rows = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}], "answer": "x"},
        {"instruction": "Name a fruit.", "input": "Red ones.", "output": "Apple.", "solution": "apple"},
        {"query": "What is 1 + 1?", "response": "2", "history": [["Hi", "Hello."]], "solution": "2"},
        {"conversations": [{"from": "human", "value": "Count to two."}]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_dataset_rows(path, kind="prompt")
    assert data.bad == []
    assert [(s.format, s.messages, s.columns) for s in data.samples] == [
        ("sharegpt", [user("Hi")], {"answer": "x"}),
        ("alpaca", [user("Name a fruit.\nRed ones.")], {"solution": "apple"}),
        ("query-response", [user("Hi"), text("assistant", "Hello."), user("What is 1 + 1?")], {"solution": "2"}),
        ("sharegpt", [user("Count to two.")], {}),
    ]
    assert data.messages() == [f"3 {DROPPED}", CONTEXT]


def test_a_llamafactory_entry_is_read_as_its_formatting_names_it():
    data = load_dataset_rows(f"{LF}/dataset_info.json:sft_demo", kind="prompt")
    assert [(s.format, s.messages, [p.name for p in s.images]) for s in data.samples] == [
        ("sharegpt", [user("What colour is the square?", 1)], ["1.png"])
    ]
    assert data.messages() == [f"1 {DROPPED}"]


def test_a_true_false_label_beside_a_prompt_is_a_column_not_a_kto_label(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Is it red?"}], "label": True}) + "\n")
    data = load_dataset_rows(path, kind="prompt")
    assert data.bad == [] and [s.columns for s in data.samples] == [{"label": True}]


# ---------------------------------------------------------------- bad rows


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32), (220, 30, 30)).save(tmp_path / "img" / "red.png")
    return tmp_path


def write_rows(folder: Path, rows: list[Any], name: str = "train.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"messages": [{"role": "user", "content": "<image>Colour?"}], "images": ["img/red.png"], "solution": "red"}
Q = {"role": "user", "content": "Colour?"}
A = {"role": "assistant", "content": "Red."}
MEDIA = "the model reads media, it does not write them"
ENDS = "the prompt ends with {} turn: the generated answer must follow a user turn"
IMG = ["img/red.png"]

BAD = [
    ({"prompt": "Hi", "chosen": "Hello.", "rejected": "Bye."}, AS_SFT["pair"]),
    ({"messages": [Q, A], "rejected_response": "Blue."}, AS_SFT["pair"]),
    ({"prompt": "Hi", "completion": "Hello.", "label": True}, AS_SFT["label"]),
    ({"messages": [Q, A], "label": False}, AS_SFT["label"]),
    ({"messages": [Q], "images": ["img/missing.png"]}, "image not found: img/missing.png (relative to {folder})"),
    (
        {"messages": [{"role": "user", "content": "<image><image>Both?"}], "images": IMG},
        "2 image placeholder(s) but 1 image(s)",
    ),
    ({"prompt": "<image>Colour?"}, "1 image placeholder(s) but 0 image(s)"),
    ({"prompt": ""}, EMPTY_PROMPT),
    ({"messages": [{"role": "user", "content": "  "}]}, EMPTY_PROMPT),
    ({"messages": [Q, A, {"role": "user", "content": ""}]}, EMPTY_PROMPT),
    ({"prompt": []}, NO_USER),
    ({"messages": [{"role": "system", "content": "Be brief."}]}, NO_USER),
    ({"messages": [{"role": "system", "content": "Be brief."}, A]}, NO_USER),
    # after the final assistant turn is dropped, the prompt must still end with a user turn
    ({"messages": [Q, A, {"role": "assistant", "content": "More."}]}, ENDS.format("an assistant")),
    ({"messages": [Q, {"role": "system", "content": "Be brief."}]}, ENDS.format("a system")),
    ({"prompt": [Q, A]}, TRL_PREFILL),
    (
        {"messages": [Q, {"role": "assistant", "content": "<image>"}], "images": IMG},
        f"media inside an assistant turn (message 1): {MEDIA}",
    ),
    (
        {
            "messages": [Q, {"role": "assistant", "content": "<image>Here."}, {"role": "user", "content": "And?"}],
            "images": IMG,
        },
        f"media inside an assistant turn (message 1): {MEDIA}",
    ),
    ({"prompt": 3}, "'prompt' must be text or a list of messages"),
]


@pytest.mark.parametrize("row,reason", BAD)
def test_each_bad_prompt_row_is_reported_with_its_line(folder, row, reason):
    data = load_dataset_rows(write_rows(folder, [GOOD, row, GOOD]), kind="prompt")
    assert [str(b) for b in data.bad] == [f"line 2: {reason.replace('{folder}', str(folder))}"]
    assert [s.line for s in data.samples] == [1, 3]


@pytest.mark.parametrize("kind", ["sft", "pair", "label"])
def test_prompt_rows_read_as_another_kind_name_grpo(folder, kind):
    rows = [
        GOOD,
        {"prompt": "Two plus five is", "solution": "7"},
        {"prompt": [Q], "image": "img/red.png"},
        {"conversations": [{"from": "human", "value": "Hi"}]},
    ]
    data = load_dataset_rows(write_rows(folder, rows), kind=kind)
    assert ANSWERLESS == "no assistant turn: a prompt-only row, train it with --objective grpo"
    assert [str(b) for b in data.bad] == [f"line {n}: {ANSWERLESS}" for n in (1, 2, 3, 4)]


def test_a_preference_entry_is_refused_for_grpo():
    from vlmsurgeon.errors import BadInput

    with pytest.raises(BadInput) as caught:
        load_dataset_rows(f"{LF}/dataset_info.json:dpo_demo", kind="prompt")
    assert caught.value.hint == "train on it with --objective dpo (or ipo, orpo, simpo)"


# ---------------------------------------------------------------- collation and the pre-pass


@pytest.fixture(scope="module")
def qwen(tiny_models):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_models("qwen2_vl"))


def _prompt_length(processor: Any, messages: list[dict[str, Any]]) -> int:
    """Tokens of a text-only prompt with the generation prompt, from the template and tokenizer alone."""
    rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(processor.tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_prompt_encoding_is_the_processor_on_the_prompt_asked(qwen):
    sample = load_dataset_rows(TRL / "prompts.jsonl", kind="prompt").samples[2]
    encoding = Collator(qwen, 1024).prompt_encoding(sample)
    rendered = qwen.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered.endswith("<|im_start|>assistant\n")
    expected = qwen(text=[rendered], images=[Image.open(TRL / "images" / "red.png")], return_tensors="pt")
    assert sorted(encoding) == sorted(expected) and "labels" not in encoding
    for key, value in expected.items():
        assert encoding[key].equal(value), key
    stats = Collator(qwen, 1024).measure(sample)
    assert (stats.tokens, stats.image_tokens, stats.first_label) == (expected["input_ids"].shape[1], 16, stats.tokens)
    assert stats.media_end == int((expected["input_ids"][0] == qwen.image_token_id).nonzero().max()) + 1


def test_check_rows_reports_the_prompt_figures(qwen):
    data = load_dataset_rows(SWIFT / "grpo.jsonl", kind="prompt")
    report, usable = check_rows(data, Collator(qwen, 1024), completion_tokens=64)
    first = _prompt_length(
        qwen, [{"role": "system", "content": "You are a careful calculator."}, Q | {"content": "What is 6 times 7?"}]
    )
    second = _prompt_length(
        qwen,
        [
            {"role": "system", "content": "You are a careful calculator."},
            Q | {"content": "What is 9 minus 4?"},
            {"role": "assistant", "content": "It is 5."},
            Q | {"content": "And that plus 10?"},
        ],
    )
    assert (first, second) == (76, 122)
    assert report.tokens["total"] == [76, 122, 114, 69] and report.tokens["image"] == [0, 0, 16, 16]
    assert [s.line for s in usable] == [1, 2, 3, 4] and report.skipped == 0 and report.truncated == 0
    figures = report.to_json()["prompts"]
    assert figures == {
        "kind": "prompt",
        "prompts": 4,
        "completion_tokens": 64,
        "columns": {"difficulty": 1, "solution": 4},
        "tokens": {"prompt": {"p50": 114, "p95": 122, "max": 122}},
    }
    assert report.record()["prompts"] == figures and "preference" not in report.to_json()
    assert report.notes == [f"1 {DROPPED}", CONTEXT]


def test_a_prompt_without_room_for_the_answer_is_over_the_limit(qwen):
    data = load_dataset_rows(SWIFT / "grpo.jsonl", kind="prompt")
    report, usable = check_rows(data, Collator(qwen, 160), completion_tokens=48)
    assert [str(b) for b in report.over_limit] == [
        "line 2: prompt 122 tokens + --max-completion-length 48 > --seq-len 160",
        "line 3: prompt 114 tokens + --max-completion-length 48 > --seq-len 160",
    ]
    assert [s.line for s in usable] == [1, 4] and report.bad == [] and report.truncated == 0
    report, usable = check_rows(data, Collator(qwen, 114))  # no answer room asked: the prompt alone, 114 fits
    assert [str(b) for b in report.over_limit] == ["line 2: prompt 122 tokens > --seq-len 114"]
    assert [s.line for s in usable] == [1, 3, 4]


def test_a_video_prompt_is_measured_with_its_video_tokens(qwen, tmp_path):
    from tests.test_formats import write_video

    write_video(tmp_path / "clip.mp4")
    row = {"messages": [{"role": "user", "content": "<video>What moves?"}], "videos": ["clip.mp4"], "solution": "bar"}
    data = load_dataset_rows(write_rows(tmp_path, [row]), kind="prompt")
    sample = data.samples[0]
    assert sample.messages == [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}], "train": False}
    ]
    assert [p.name for p in sample.videos] == ["clip.mp4"] and sample.columns == {"solution": "bar"}
    collator = Collator(qwen, 1024)
    stats = collator.measure(sample)
    encoding = collator.prompt_encoding(sample)
    assert (
        stats.tokens == encoding["input_ids"].shape[1] and stats.video_tokens > 0 and "pixel_values_videos" in encoding
    )
    report, usable = check_rows(data, Collator(qwen, stats.tokens + 9), completion_tokens=10)
    assert [str(b) for b in report.over_limit] == [
        f"line 1: prompt {stats.tokens} tokens + --max-completion-length 10 > --seq-len {stats.tokens + 9}"
    ]
    report, usable = check_rows(data, Collator(qwen, stats.tokens + 10), completion_tokens=10)
    assert len(usable) == 1 and report.tokens["video"] == [stats.video_tokens]


def test_a_row_without_a_column_its_reward_reads_is_a_bad_row(qwen):
    data = load_dataset_rows(TRL / "prompts.jsonl", kind="prompt")
    needs = {"exact": ("solution",), "mine": ("solution", "task")}
    report, usable = check_rows(data, Collator(qwen, 1024), required_columns=needs)
    assert [str(b) for b in report.bad] == [
        "line 1: reward 'mine' needs column 'task'",
        "line 2: reward 'mine' needs column 'task'",
        "line 3: reward 'mine' needs column 'task'",
        "line 5: reward 'mine' needs column 'task'",
        "line 6: reward 'exact' needs column 'solution'; reward 'mine' needs column 'solution'; "
        "reward 'mine' needs column 'task'",
    ]
    assert [s.line for s in usable] == [4] and report.to_json()["prompts"]["columns"] == {"solution": 1, "task": 1}


# ---------------------------------------------------------------- data check


def test_data_check_objective_grpo_json(tiny_models, cli):
    code, out, err = cli(
        "data", "check", SWIFT / "grpo.jsonl", "-m", tiny_models("qwen2_vl"), "--objective", "grpo",
        "--reward", "exact", "--max-completion-length", "100", "--seq-len", "240", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert (report["rows"], report["formats"], report["skipped"], report["images"]) == (4, {"swift-prompt": 4}, 0, 2)
    assert report["prompts"] == {
        "kind": "prompt",
        "prompts": 4,
        "completion_tokens": 100,
        "columns": {"difficulty": 1, "solution": 4},
        "tokens": {"prompt": {"p50": 114, "p95": 122, "max": 122}},
    }
    assert report["notes"] == [f"1 {DROPPED}", CONTEXT]


def test_data_check_objective_grpo_report_and_failure(tiny_models, cli, tmp_path):
    data = tmp_path / "grpo.jsonl"
    rows = (SWIFT / "grpo.jsonl").read_text().splitlines()
    data.write_text("\n".join([*rows, json.dumps({"messages": [Q]})]) + "\n")
    (tmp_path / "green.png").write_bytes((SWIFT / "green.png").read_bytes())
    model = tiny_models("qwen2_vl")
    code, out, err = cli("data", "check", data, "-m", model, "--objective", "grpo", "--reward", "exact")
    assert code == 1
    assert (
        "4 prompt(s): 114 tokens p50, 122 max, each with room for --max-completion-length 512; "
        "columns for the rewards: difficulty (1), solution (4)"
    ) in out
    assert "line 5: reward 'exact' needs column 'solution'" in out
    assert "data check: 1 row(s) of 5 would not train, first: line 5: reward 'exact' needs column 'solution'" in err
    code, out, err = cli("data", "check", data, "-m", model, "--objective", "grpo")
    assert code == 0, err  # no reward named: no column required
    assert "5 prompt(s): 76 tokens p50, 122 max, each with room for --max-completion-length 512;" in out


@pytest.mark.parametrize(
    "args,line",
    [
        (
            ["--reward", "exact"],
            "data check: --max-completion-length and --reward apply to --objective grpo (try: pass --objective "
            "grpo, or leave them out)",
        ),
        (
            ["--objective", "dpo", "--max-completion-length", "8"],
            "data check: --max-completion-length and --reward apply to --objective grpo (try: pass --objective "
            "grpo, or leave them out)",
        ),
        (
            ["--objective", "grpo", "--max-completion-length", "0"],
            "data check: --max-completion-length 0: must be at least 1 (try: see vlmsurgeon data check --help)",
        ),
    ],
)
def test_data_check_grpo_options_are_checked_before_anything_loads(cli, tmp_path, args, line):
    code, out, err = cli("data", "check", SWIFT / "grpo.jsonl", "-m", tmp_path / "no-model", *args)
    assert code == 2 and out == "" and line in err


def test_make_shapes_writes_grpo_prompts(shapes):
    for name, folder in (("grpo.jsonl", "img"), ("eval_grpo.jsonl", "eval")):
        data = load_dataset_rows(shapes.parent / name, kind="prompt")
        assert data.bad == [] and data.formats == {"swift-prompt": 12} and data.messages() == []
        assert [s.columns for s in data.samples] == [
            {"solution": colour} for colour in ("red", "green", "blue", "yellow") for _ in range(3)
        ]
        assert all(s.messages == [user("What colour is the shape? Answer in one word.", 1)] for s in data.samples)
        assert [p.relative_to(shapes.parent).parts[0] for s in data.samples for p in s.images] == [folder] * 12
