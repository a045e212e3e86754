"""Preference data (pairs for dpo / ipo / orpo / simpo, labelled rows for kto) as the peers ship
it: each fixture under tests/fixtures/preference/ (LLaMA-Factory ranking and kto_tag entries, TRL
preference and unpaired rows, ms-swift rejected_response / rejected_messages / KTO rows) read into
the exact Sample; every bad-row kind reported by row and reason; rows read as another kind named
with the objective that reads them; and the pre-pass measuring both sides of a pair through a
real tiny processor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import ROOT
from vlmsurgeon.data.check import check_rows
from vlmsurgeon.data.collate import IGNORE, Collator
from vlmsurgeon.data.preference import (
    AS_LABEL_PAIR,
    AS_PAIR_LABELLED,
    AS_SFT,
    NO_LABEL,
    NO_REJECTED,
    NO_USER,
    SAME_ANSWER,
)
from vlmsurgeon.data.rows import load_dataset_rows
from vlmsurgeon.errors import BadInput

FIXTURES = ROOT / "tests" / "fixtures" / "preference"
LF = FIXTURES / "llamafactory"
TRL = FIXTURES / "trl"
SWIFT = FIXTURES / "swift"


def text(role: str, value: str, train: bool = False, image: bool = False) -> dict[str, Any]:
    """A message in the internal shape: an image part first when `image`."""
    parts = [{"type": "image"}] if image else []
    return {"role": role, "content": [*parts, {"type": "text", "text": value}], "train": train}


def user(value: str, image: bool = False) -> dict[str, Any]:
    return text("user", value, image=image)


def answer(value: str) -> dict[str, Any]:
    """A final answer (chosen, rejected or a KTO completion): the only trained message."""
    return text("assistant", value, train=True)


def context(value: str) -> dict[str, Any]:
    """An earlier assistant turn of a preference row: context, not trained."""
    return text("assistant", value)


# (line, format, messages, rejected, label, image paths relative to the fixture folder)
Expected = tuple[int, str, list[dict[str, Any]], dict[str, Any] | None, bool | None, list[str]]
AQI = (
    "According to the weather forecast tool, the air quality index (AQI) in Beijing is 10, which indicates good "
    "air quality; whereas in Shanghai, the AQI is 72, indicating mild pollution."
)
PEERS: dict[str, tuple[str, str, list[Expected]]] = {
    "llamafactory-ranking-sharegpt": (
        f"{LF}/dataset_info.json:dpo_demo",
        "pair",
        [
            (
                1,
                "llamafactory-ranking-sharegpt",
                [user("What colour is the square?", image=True), answer("The square is red.")],
                answer("The square is green."),
                None,
                ["mllm_demo_data/1.png"],
            ),
            (
                2,
                "llamafactory-ranking-sharegpt",
                [user("Name a primary colour."), context("Red."), user("Another one?"), answer("Blue.")],
                answer("Red again."),
                None,
                [],
            ),
        ],
    ),
    "llamafactory-ranking-alpaca": (
        f"{LF}/dataset_info.json:dpo_alpaca",
        "pair",
        [
            (
                1,
                "llamafactory-ranking-alpaca",
                [user("Describe the image.", image=True), answer("A blue square.")],
                answer("A red circle."),
                None,
                ["mllm_demo_data/2.png"],
            ),
            (
                2,
                "llamafactory-ranking-alpaca",
                [user("Translate to French.\nGood morning"), answer("Bonjour")],
                answer("Buenos dias"),
                None,
                [],
            ),
        ],
    ),
    "llamafactory-kto-sharegpt": (
        f"{LF}/dataset_info.json:kto_demo",
        "label",
        [
            (
                1,
                "llamafactory-kto-sharegpt",
                [user("What colour is the square?", image=True), answer("It is red.")],
                None,
                True,
                ["mllm_demo_data/1.png"],
            ),
            (2, "llamafactory-kto-sharegpt", [user("What is 2 + 2?"), answer("5")], None, False, []),
        ],
    ),
    "llamafactory-kto-alpaca": (
        f"{LF}/dataset_info.json:kto_alpaca",
        "label",
        [
            (1, "llamafactory-kto-alpaca", [user("Name a fruit."), answer("An apple.")], None, True, []),
            (2, "llamafactory-kto-alpaca", [user("Name a fruit."), answer("A carrot.")], None, False, []),
        ],
    ),
    "trl-preference": (
        str(TRL / "preference.jsonl"),
        "pair",
        [
            (1, "trl-preference", [user("The sky is"), answer(" blue.")], answer(" green."), None, []),
            (
                2,
                "trl-preference",
                [user("What colour is the square?", image=True), answer("It is red.")],
                answer("It is green."),
                None,
                ["images/red.png"],
            ),
            # implicit prompt: TRL's extract_prompt keeps the space before the answer with it
            (3, "trl-preference-implicit", [user("The sky is"), answer(" blue.")], answer(" green."), None, []),
            (
                4,
                "trl-preference-implicit",
                [user("What colour is the square?", image=True), answer("It is red.")],
                answer("It is green."),
                None,
                ["images/red.png"],
            ),
        ],
    ),
    "trl-kto": (
        str(TRL / "kto.jsonl"),
        "label",
        [
            (1, "trl-kto", [user("The sky is"), answer(" blue.")], None, True, []),
            (2, "trl-kto", [user("What color is the sky?"), answer("It is green.")], None, False, []),
            (
                3,
                "trl-kto",
                [user("What colour is the square?", image=True), answer("It is red.")],
                None,
                True,
                ["images/red.png"],
            ),
        ],
    ),
    "swift-rlhf": (
        str(SWIFT / "dpo.jsonl"),
        "pair",
        [
            (
                1,
                "swift-rejected_response",
                [
                    text("system", "You are a useful and harmless assistant"),
                    user("Tell me tomorrow's weather"),
                    answer("Tomorrow's weather will be sunny"),
                ],
                answer("I don't know"),
                None,
                [],
            ),
            (
                2,
                "swift-rejected_response",
                [
                    text("system", "You are a useful and harmless math calculator"),
                    user("What is 1 + 1?"),
                    context("It equals 2"),
                    user("What about adding 1?"),
                    answer("It equals 3"),
                ],
                answer("I don't know"),
                None,
                [],
            ),
            (
                3,
                "swift-rejected_messages",
                [user("What is this?", image=True), answer("This is a kitten.")],
                answer("This is a puppy."),
                None,
                ["kitten.png"],
            ),
            (
                4,
                "swift-rejected_response",
                [user("What is this?", image=True), answer("This is a kitten.")],
                answer("This is a puppy."),
                None,
                ["kitten.png"],
            ),
            (
                5,  # the agent row: the tool calls are context, the answer after the last tool result is scored
                "swift-rejected_response",
                [
                    user("What is the weather like in Beijing and Shanghai today?"),
                    context('{"name": "realtime_aqi", "arguments": {"city": "Beijing"}}'),
                    context('{"name": "realtime_aqi", "arguments": {"city": "Shanghai"}}'),
                    text("tool", '{"city": "Beijing", "aqi": "10", "unit": "celsius"}'),
                    text("tool", '{"city": "Shanghai", "aqi": "72", "unit": "fahrenheit"}'),
                    answer(AQI),
                ],
                answer("I don't know."),
                None,
                [],
            ),
        ],
    ),
    "swift-kto": (
        str(SWIFT / "kto.jsonl"),
        "label",
        [
            (
                1,
                "swift-kto",
                [
                    text("system", "You are a useful and harmless assistant"),
                    user("Tell me tomorrow's weather"),
                    answer("I don't know"),
                ],
                None,
                False,
                [],
            ),
            (
                2,
                "swift-kto",
                [
                    text("system", "You are a useful and harmless math calculator"),
                    user("What is 1 + 1?"),
                    context("It equals 2"),
                    user("What about adding 1?"),
                    answer("It equals 3"),
                ],
                None,
                True,
                [],
            ),
        ],
    ),
}


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_peer_fixture_gives_the_exact_samples(peer):
    ref, kind, expected = PEERS[peer]
    data = load_dataset_rows(ref, kind=kind)
    assert data.bad == [] and data.unused == {} and data.row_kind == kind
    folder = Path(ref.split(":")[0]).parent if ":" in ref else Path(ref).parent
    got = [
        (s.line, s.format, s.messages, s.rejected, s.label, [str(Path(p).relative_to(folder)) for p in s.images])
        for s in data.samples
    ]
    assert got == expected
    assert all(s.videos == [] for s in data.samples)
    names = [e[1] for e in expected]
    assert data.formats == {name: names.count(name) for name in names}


def test_swift_agent_row_keeps_its_tools():
    sample = load_dataset_rows(SWIFT / "dpo.jsonl", kind="pair").samples[4]
    assert [t["function"]["name"] for t in sample.tools] == ["realtime_aqi"]


def test_preference_rows_say_their_context_turns():
    data = load_dataset_rows(SWIFT / "dpo.jsonl", kind="pair")
    assert data.messages() == ["3 earlier assistant turn(s) are context only (preference rows train the final answer)"]


# ---------------------------------------------------------------- bad rows


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32), (220, 30, 30)).save(tmp_path / "img" / "red.png")
    Image.new("RGB", (32, 32), (30, 30, 220)).save(tmp_path / "img" / "blue.png")
    return tmp_path


def write_rows(folder: Path, rows: list[Any], name: str = "train.jsonl") -> Path:
    path = folder / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD_PAIR = {"prompt": "<image>Colour?", "chosen": "Red.", "rejected": "Blue.", "images": ["img/red.png"]}
GOOD_KTO = {"prompt": "<image>Colour?", "completion": "Red.", "label": True, "images": ["img/red.png"]}
SWIFT_Q = [{"role": "user", "content": "<image>What is this?"}, {"role": "assistant", "content": "Red."}]
MEDIA = "the model reads media, it does not write them"

BAD_PAIRS = [
    ({"prompt": "Hi", "chosen": "Hello.", "rejected": "Hello."}, SAME_ANSWER),
    ({"prompt": "Hi", "chosen": "Hello.", "rejected": " Hello. "}, SAME_ANSWER),
    (
        {
            "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
        },
        SAME_ANSWER,
    ),
    ({"messages": SWIFT_Q, "images": ["img/red.png"], "rejected_response": "Red."}, SAME_ANSWER),
    ({"prompt": "Hi", "chosen": "  ", "rejected": "No."}, "empty chosen answer"),
    ({"messages": SWIFT_Q, "images": ["img/red.png"], "rejected_response": ""}, "empty rejected answer"),
    ({"messages": SWIFT_Q, "images": ["img/red.png"], "rejected_response": None}, "empty rejected answer"),
    (
        {"prompt": "<image>Colour?", "chosen": "<image>Like this.", "rejected": "Blue.", "images": ["img/red.png"]},
        f"media inside the chosen answer: {MEDIA}",
    ),
    (
        {
            "prompt": [{"role": "user", "content": "Colour?"}],
            "chosen": [{"role": "assistant", "content": "Red."}],
            "rejected": [
                {
                    "role": "assistant",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "img/blue.png"}},
                        {"type": "text", "text": "B"},
                    ],
                }
            ],
        },
        f"media inside the rejected answer: {MEDIA}",
    ),
    (
        {"prompt": "<image><image>Both?", "chosen": "Red.", "rejected": "Blue.", "images": ["img/red.png"]},
        "2 image placeholder(s) but 1 image(s)",
    ),
    (
        {"prompt": "<image>Colour?", "chosen": "Red.", "rejected": "Blue.", "images": ["img/missing.png"]},
        "image not found: img/missing.png (relative to {folder})",
    ),
    ({"prompt": [{"role": "system", "content": "Be brief."}], "chosen": "Yes.", "rejected": "No."}, NO_USER),
    ({"chosen": "Yes.", "rejected": "No."}, NO_USER),  # implicit prompt, nothing shared: no prompt at all
    # TRL reads a text prompt beside conversational answers as an implicit-prompt row (extract_prompt)
    (
        {"prompt": "Hi", "chosen": [{"role": "assistant", "content": "Hello."}], "rejected": "No."},
        "'chosen' and 'rejected' must both be text or both lists of messages",
    ),
    (
        {
            "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
            "chosen": [{"role": "assistant", "content": "Bye."}],
            "rejected": [{"role": "assistant", "content": "Later."}],
        },
        "the prompt ends with an assistant turn: the answer must follow a user turn",
    ),
    (
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hello."}, {"role": "assistant", "content": "Again."}],
            "rejected": [{"role": "assistant", "content": "No."}],
        },
        "'chosen' must be one assistant message, not 2",
    ),
    (
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "user", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "No."}],
        },
        "'chosen' is a 'user' message, not an assistant answer",
    ),
    # ms-swift's second multimodal example: the same answer, other images
    (
        {
            "messages": SWIFT_Q,
            "images": ["img/red.png"],
            "rejected_messages": SWIFT_Q,
            "rejected_images": ["img/blue.png"],
        },
        "'rejected_images' differ from 'images': a pair here shares its prompt's media between both answers",
    ),
    (
        {"messages": SWIFT_Q, "images": ["img/red.png"], "rejected_images": ["img/blue.png"]},
        "'rejected_images' but no 'rejected_response': pairs that differ only in their images are not supported "
        "(the media belong to the prompt, shared by both answers)",
    ),
    (
        {
            "messages": SWIFT_Q,
            "images": ["img/red.png"],
            "rejected_messages": [{"role": "user", "content": "<image>Who?"}, {"role": "assistant", "content": "B"}],
        },
        "'rejected_messages' has another prompt than 'messages': a pair shares one prompt",
    ),
    (
        {
            "messages": [*SWIFT_Q, {"role": "assistant", "content": "More."}],
            "images": ["img/red.png"],
            "rejected_response": "No.",
        },
        "'messages' has 2 messages after its last user turn: the answer must be one assistant message",
    ),
    ({"messages": SWIFT_Q, "images": ["img/red.png"]}, NO_REJECTED),  # an SFT row
    ({"messages": SWIFT_Q, "images": ["img/red.png"], "label": True}, AS_PAIR_LABELLED),
    ({"prompt": "Hi", "completion": "Hello.", "label": False}, AS_PAIR_LABELLED),
]

BAD_LABELLED = [
    ({"prompt": "Hi", "completion": "Hello.", "label": "yes"}, "'label' must be true or false (or 1 / 0), not 'yes'"),
    ({"prompt": "Hi", "completion": "Hello.", "label": "true"}, "'label' must be true or false (or 1 / 0), not 'true'"),
    ({"prompt": "Hi", "completion": "Hello.", "label": 2}, "'label' must be true or false (or 1 / 0), not 2"),
    ({"prompt": "Hi", "completion": "Hello.", "label": None}, "'label' must be true or false (or 1 / 0), not None"),
    (
        {"messages": SWIFT_Q, "images": ["img/red.png"], "label": 0.5},
        "'label' must be true or false (or 1 / 0), not 0.5",
    ),
    ({"prompt": "Hi", "completion": " ", "label": True}, "empty completion answer"),
    (
        {"prompt": "Hi", "completion": "<image>", "label": True, "images": ["img/red.png"]},
        f"media inside the completion answer: {MEDIA}",
    ),
    ({"prompt": [{"role": "system", "content": "Be brief."}], "completion": "Yes.", "label": True}, NO_USER),
    ({"messages": SWIFT_Q, "images": ["img/red.png"]}, NO_LABEL),  # an SFT row
    (GOOD_PAIR, AS_LABEL_PAIR),
]


@pytest.mark.parametrize("row,reason", BAD_PAIRS)
def test_each_bad_pair_is_reported_with_its_line(folder, row, reason):
    data = load_dataset_rows(write_rows(folder, [GOOD_PAIR, row, GOOD_PAIR]), kind="pair")
    assert [str(b) for b in data.bad] == [f"line 2: {reason.replace('{folder}', str(folder))}"]
    assert [s.line for s in data.samples] == [1, 3]


@pytest.mark.parametrize("row,reason", BAD_LABELLED)
def test_each_bad_labelled_row_is_reported_with_its_line(folder, row, reason):
    data = load_dataset_rows(write_rows(folder, [GOOD_KTO, row, GOOD_KTO]), kind="label")
    assert [str(b) for b in data.bad] == [f"line 2: {reason}"]
    assert [s.label for s in data.samples] == [True, True]


def test_kto_labels_one_and_zero_are_read_as_trl_and_ms_swift_sum_them(folder):
    rows = [
        {"prompt": "Hi", "completion": "Hello.", "label": 1},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}], "label": 0},
    ]
    data = load_dataset_rows(write_rows(folder, rows), kind="label")
    assert data.bad == [] and [(s.format, s.label) for s in data.samples] == [("trl-kto", True), ("swift-kto", False)]


def test_llamafactory_kto_tag_must_be_a_boolean(folder):
    """LLaMA-Factory takes a row as KTO only when its kto_tag is a bool (else it trains it as SFT,
    silently); here any other value is a bad row."""
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], "label": True},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}], "label": 1},
    ]
    write_rows(folder, rows, "kto.json")
    info = json.loads((LF / "dataset_info.json").read_text())["kto_demo"]
    (folder / "dataset_info.json").write_text(json.dumps({"kto": {**info, "file_name": "kto.json"}}))
    data = load_dataset_rows(folder / "dataset_info.json", kind="label")
    assert [str(b) for b in data.bad] == ["row 2: 'label' must be true or false, not 1"]


# ---------------------------------------------------------------- kinds


def test_preference_rows_read_for_sft_are_bad_rows_naming_the_objective(folder):
    rows = [
        {"messages": SWIFT_Q, "images": ["img/red.png"]},
        GOOD_PAIR,
        {"messages": SWIFT_Q, "images": ["img/red.png"], "rejected_response": "Blue."},
        GOOD_KTO,
        {"messages": SWIFT_Q, "images": ["img/red.png"], "label": False},
    ]
    data = load_dataset_rows(write_rows(folder, rows))
    assert [str(b) for b in data.bad] == [
        "line 2: a preference pair (chosen and rejected): train it with --objective dpo (or ipo, orpo, simpo)",
        "line 3: a preference pair (chosen and rejected): train it with --objective dpo (or ipo, orpo, simpo)",
        "line 4: a KTO row (completion with a true/false label): train it with --objective kto",
        "line 5: a KTO row (completion with a true/false label): train it with --objective kto",
    ]
    assert AS_SFT["pair"] in data.bad[0].reason and AS_SFT["label"] in data.bad[2].reason
    sample = data.samples[0]
    assert (sample.line, sample.rejected, sample.label, data.row_kind) == (1, None, None, "sft")


def test_an_sft_label_column_that_is_not_true_or_false_stays_a_column(folder):
    """A category `label` beside SFT messages is no KTO label: read as today, and said unused."""
    data = load_dataset_rows(write_rows(folder, [{"messages": SWIFT_Q, "images": ["img/red.png"], "label": "cat"}]))
    assert data.bad == [] and data.formats == {"messages": 1}
    assert data.messages() == ["column 'label' is not used (1 row(s) have it)"]


@pytest.mark.parametrize(
    "entry,kind,what,hint",
    [
        ("dpo_demo", "sft", "is a preference (ranking) dataset", "--objective dpo (or ipo, orpo, simpo)"),
        ("dpo_alpaca", "label", "is a preference (ranking) dataset", "--objective dpo (or ipo, orpo, simpo)"),
        ("kto_demo", "sft", "is a KTO dataset (kto_tag)", "--objective kto"),
        ("kto_alpaca", "pair", "is a KTO dataset (kto_tag)", "--objective kto"),
    ],
)
def test_a_dataset_info_entry_of_another_kind_is_refused_naming_the_objective(entry, kind, what, hint):
    with pytest.raises(BadInput) as caught:
        load_dataset_rows(f"{LF}/dataset_info.json:{entry}", kind=kind)
    assert caught.value.what == f"{LF}/dataset_info.json:{entry} {what}"
    assert caught.value.hint == f"train on it with {hint}"


def test_an_sft_entry_read_for_pairs_or_labels_gives_bad_rows():
    pairs = load_dataset_rows(f"{LF}/dataset_info.json:sft_demo", kind="pair")
    labelled = load_dataset_rows(f"{LF}/dataset_info.json:sft_demo", kind="label")
    assert [str(b) for b in pairs.bad] == [f"row 1: {NO_REJECTED}"] and pairs.samples == []
    assert [str(b) for b in labelled.bad] == [f"row 1: {NO_LABEL}"] and labelled.samples == []
    assert load_dataset_rows(f"{LF}/dataset_info.json:sft_demo").bad == []


def test_an_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError, match="row kind 'dpo': one of sft, pair, label"):
        load_dataset_rows(TRL / "preference.jsonl", kind="dpo")


# ---------------------------------------------------------------- the pre-pass


@pytest.fixture(scope="module")
def qwen(tiny_models):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_models("qwen2_vl"))


def _length(processor: Any, messages: list[dict[str, Any]], generation_prompt: bool = False) -> int:
    """Tokens of a text-only conversation, from the chat template and tokenizer alone."""
    rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return len(processor.tokenizer(rendered, add_special_tokens=False)["input_ids"])


def test_check_rows_reports_the_preference_figures(qwen, tmp_path):
    folder = tmp_path / "trl"
    shutil.copytree(TRL, folder)
    identical = {"prompt": "The sky is", "chosen": " blue.", "rejected": " blue."}
    with (folder / "preference.jsonl").open("a") as fh:
        fh.write(json.dumps(identical) + "\n")
    report, usable = check_rows(load_dataset_rows(folder / "preference.jsonl", kind="pair"), Collator(qwen, 1024))
    # row 1 worked out independently: the prompt up to the assistant header, each answer after it
    prompt = [{"role": "user", "content": [{"type": "text", "text": "The sky is"}]}]
    side = lambda value: _length(qwen, [*prompt, {"role": "assistant", "content": value}])  # noqa: E731
    head = _length(qwen, prompt, generation_prompt=True)
    assert (head, side(" blue.") - head, side(" green.") - head) == (29, 8, 9)
    assert report.preference_tokens == {
        "prompt": [29, 63, 29, 63],
        "chosen": [8, 12, 8, 12],
        "rejected": [9, 14, 9, 14],
    }
    assert report.tokens["total"] == [38, 77, 38, 77]  # each pair's longer side: its rejected one
    assert (report.rows, report.pairs, report.identical, report.truncated) == (4, 4, 1, 0)
    assert [s.line for s in usable] == [1, 2, 3, 4]
    assert [str(b) for b in report.bad] == [f"line 5: {SAME_ANSWER}"]
    figures = report.to_json()["preference"]
    assert figures == {
        "kind": "pair",
        "pairs": 4,
        "identical": 1,
        "tokens": {
            "prompt": {"p50": 63, "p95": 63, "max": 63},
            "chosen": {"p50": 12, "p95": 12, "max": 12},
            "rejected": {"p50": 14, "p95": 14, "max": 14},
        },
    }
    assert report.record()["preference"] == figures


def test_check_rows_reports_the_kto_label_balance(qwen):
    report, usable = check_rows(load_dataset_rows(TRL / "kto.jsonl", kind="label"), Collator(qwen, 1024))
    assert (report.rows, report.desirable, report.undesirable) == (3, 2, 1)
    assert report.preference_tokens == {"prompt": [29, 41, 63], "completion": [8, 14, 12]}
    assert report.to_json()["preference"] == {
        "kind": "label",
        "desirable": 2,
        "undesirable": 1,
        "tokens": {"prompt": {"p50": 41, "p95": 63, "max": 63}, "completion": {"p50": 12, "p95": 14, "max": 14}},
    }


def test_sft_reports_keep_their_keys(qwen, folder):
    rows = [{"messages": SWIFT_Q, "images": ["img/red.png"]}]
    report, _ = check_rows(load_dataset_rows(write_rows(folder, rows)), Collator(qwen, 1024))
    assert "preference" not in report.to_json() and "preference" not in report.record()


def test_a_pair_whose_rejected_side_is_past_seq_len_is_refused(qwen, folder):
    long = " green, then grey, then a deep violet blue as the evening comes on."
    rows = [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": long},
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " red."},
    ]
    prompt = [{"role": "user", "content": "The sky is"}]
    chosen = _length(qwen, [*prompt, {"role": "assistant", "content": " blue."}])
    rejected = _length(qwen, [*prompt, {"role": "assistant", "content": long}])
    assert (chosen, rejected) == (37, 98)
    report, usable = check_rows(load_dataset_rows(write_rows(folder, rows), kind="pair"), Collator(qwen, 60))
    assert [str(b) for b in report.over_limit] == [
        "line 1: rejected: 98 tokens, 38 past --seq-len 60: the rejected answer would be cut, and a preference "
        "answer is scored whole (raise --seq-len, or shorten the answer)"
    ]
    assert [s.line for s in usable] == [2] and report.truncated == 0 and report.pairs == 1


def test_a_pair_whose_prompt_is_past_seq_len_names_the_chosen_side(qwen):
    report, usable = check_rows(load_dataset_rows(TRL / "preference.jsonl", kind="pair"), Collator(qwen, 30))
    assert usable == [] and report.skipped == 4
    assert str(report.over_limit[1]) == (
        "line 2: chosen: 75 tokens: its first trained token is at position 63, so --seq-len 30 would cut every label"
    )


def test_only_the_final_answer_is_labelled_on_each_side(qwen):
    """The chosen conversation and the rejected one (`messages[:-1] + [rejected]`) through the SFT
    collator: the labels cover the final answer only, never the context turn before it."""
    from tests.test_formats import expected_labels

    sample = load_dataset_rows(f"{LF}/dataset_info.json:dpo_demo", kind="pair").samples[1]
    rejected = type(sample)(sample.line, [*sample.messages[:-1], sample.rejected], format=sample.format)
    for conversation, final in ((sample, "Blue."), (rejected, "Red again.")):
        batch = Collator(qwen, 1024)([conversation])
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        trained = [i for i, label in enumerate(labels) if label != IGNORE]
        everything = expected_labels(qwen.tokenizer, ids, ["Red.", final])
        assert trained == everything[len(expected_labels(qwen.tokenizer, ids, ["Red."])) :]
