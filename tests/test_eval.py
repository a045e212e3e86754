"""`eval`: the metrics on fixed strings (figures worked by hand), prompts and references from data,
skipped rows counted, the report folder (JSON, JSONL, HTML parsed with the stdlib) with a fake
model, and a model overfit on four rows scoring above its base in one --compare report."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from vlmsurgeon.data.rows import load_dataset_rows
from vlmsurgeon.use import answer as answering
from vlmsurgeon.use import generation
from vlmsurgeon.use.evaluate import exact_match, normalize_answer, rouge_l, split_sample, token_f1

# ---------------------------------------------------------------- metrics


def test_normalisation_is_squad_style():
    assert normalize_answer("  The  Cat, sat!  ") == "cat sat"
    assert normalize_answer("An apple; a pear.") == "apple pear"
    assert normalize_answer("Theater") == "theater"  # only whole-word articles go


def test_exact_match():
    assert exact_match("a red circle", "A red circle.") == 1.0
    assert exact_match("red circles", "A red circle.") == 0.0
    assert exact_match("", "The.") == 1.0  # both normalise to nothing


def test_token_f1_by_hand():
    # [red, big, circle] vs [red, circle]: 2 common, P = 2/3, R = 1, F1 = 0.8
    assert token_f1("a red big circle", "the red circle.") == pytest.approx(0.8)
    # a repeated word counts once per occurrence in the reference: 1 common, P = 1/3, R = 1/2, F1 = 0.4
    assert token_f1("red red red", "red circle") == pytest.approx(0.4)
    assert token_f1("blue square", "red circle") == 0.0
    assert token_f1("", "red circle") == 0.0
    assert token_f1("The.", "a") == 1.0


def test_rouge_l_by_hand():
    # LCS "the cat on mat" = 4 of 4 predicted and 6 reference words: P = 1, R = 2/3, F = 0.8
    assert rouge_l("the cat on mat", "the cat sat on the mat") == pytest.approx(0.8)
    # LCS 2 ("the cat" or "on the"): P = 1/2, R = 1/3, F = 0.4
    assert rouge_l("mat on the cat", "the cat sat on the mat") == pytest.approx(0.4)
    assert rouge_l("The Cat.", "the cat") == 1.0  # case and punctuation, not articles
    assert rouge_l("猫 坐", "猫 坐 了") == pytest.approx(0.8)  # words in any script count


# ---------------------------------------------------------------- rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prompt_is_everything_before_the_last_assistant_turn(tmp_path):
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "Hi."},
                    {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "Colour?"},
                    {"role": "assistant", "content": " Blue. "},
                ]
            }
        ],
    )
    prompt, reference = split_sample(load_dataset_rows(data).samples[0])
    assert [m["role"] for m in prompt] == ["user", "assistant", "user"]
    assert prompt[-1]["content"] == [{"type": "text", "text": "Colour?"}]
    assert reference == "Blue."


def test_a_reference_after_a_tool_result_is_skipped_with_its_reason(tmp_path):
    from vlmsurgeon.use.evaluate import load_rows

    call = {"type": "function", "function": {"name": "weather", "arguments": "{}"}}
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "content": "sunny"},
                    {"role": "assistant", "content": "Sunny."},
                ]
            },
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
        ],
    )
    rows, skipped = load_rows(str(data))
    assert [row.line for _, row in rows] == [2] and rows[0][1].reference == "Hello."
    assert [str(b) for b in skipped] == [
        "line 1: the last assistant turn follows a 'tool' turn, not a user turn: no prompt to answer"
    ]


class FakeModel:
    """Stands in for generation: answers from a table keyed by the last user text."""

    def __init__(self, replies: dict[str, dict[str, str]]):
        self.replies, self.calls = replies, []

    def install(self, monkeypatch):
        monkeypatch.setattr(generation, "source_kind", lambda source: "model")
        monkeypatch.setattr(generation, "check_source", lambda source, **kwargs: "model")
        monkeypatch.setattr(generation, "load_for_inference", self.load)
        monkeypatch.setattr(answering, "answer", self.answer)

    def load(self, source, *, base=None, trust_remote_code=False):
        return answering.Loaded(None, None, "model", source, False)

    def answer(self, loaded, messages, images=(), videos=(), *, max_new_tokens=128, temperature=0.0, on_text=None):
        self.calls.append((loaded.source, len(images), temperature))
        text = messages[-1]["content"][-1]["text"]
        return answering.Answer(self.replies[loaded.source][text], 3, 10, 0.01)


@pytest.fixture
def picture_data(tmp_path):
    from PIL import Image

    Image.new("RGB", (300, 200), (200, 30, 30)).save(tmp_path / "red.png")
    rows = [
        {
            "messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Red."}],
            "images": ["red.png"],
        },
        {"messages": [{"role": "user", "content": "Say <b>hi</b> & go"}]},  # no assistant turn: skipped
        {"messages": [{"role": "user", "content": "Shape?"}, {"role": "assistant", "content": "A <square>."}]},
    ]
    return write_jsonl(tmp_path / "d.jsonl", rows)


REPLIES = {
    "tuned": {"Colour?": "red", "Shape?": "a square"},
    "base": {"Colour?": "blue <script>x</script>", "Shape?": "<square>"},
}


class Page(HTMLParser):
    """The parts of report.html a test looks at: table rows per table id, cell texts, image sources."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.table = None
        self.cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table = self.tables.setdefault(attrs.get("id", ""), [])
        elif tag == "tr" and self.table is not None:
            self.table.append([])
        elif tag in ("td", "th") and self.table is not None:
            self.cell = []
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "script":
            raise AssertionError("a <script> tag reached the page unescaped")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.table[-1].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "table":
            self.table = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_report_with_a_fake_model(cli, monkeypatch, picture_data, tmp_path):
    fake = FakeModel(REPLIES)
    fake.install(monkeypatch)
    code, out, err = cli("eval", "tuned", "--data", picture_data, "--compare", "base", "-o", tmp_path / "rep", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["rows"] == 2 and [s["row"] for s in result["skipped"]] == [2]
    assert "no assistant turn" in result["skipped"][0]["reason"] and "skipped line 2" in err
    assert result["totals"]["model"] == {"exact_match": 1.0, "f1": 1.0, "rouge_l": 1.0}
    # base: "blue script x script" vs "red" scores 0; "<square>" vs "A <square>." matches after
    # normalisation, but ROUGE-L keeps the article: [square] vs [a, square], P = 1, R = 1/2, F = 2/3
    assert result["totals"]["compare"] == pytest.approx({"exact_match": 0.5, "f1": 0.5, "rouge_l": 1 / 3})
    assert result["delta"] == pytest.approx({"exact_match": 0.5, "f1": 0.5, "rouge_l": 2 / 3})
    assert {c[0] for c in fake.calls} == {"tuned", "base"} and {c[2] for c in fake.calls} == {0.0}
    assert sorted(c[1] for c in fake.calls) == [0, 0, 1, 1]  # the image reaches the model

    folder = tmp_path / "rep"
    assert sorted(p.name for p in folder.iterdir()) == ["predictions.jsonl", "report.html", "report.json"]
    assert not list(tmp_path.glob(".rep.*"))  # no staging left beside it
    assert json.loads((folder / "report.json").read_text()) == result
    lines = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
    assert [x["row"] for x in lines] == [1, 3]
    assert lines[0]["prompt"] == "user: <image>Colour?" and lines[0]["reference"] == "Red."
    assert lines[1]["predictions"] == {"model": "a square", "compare": "<square>"}

    page = parse(folder / "report.html")
    totals = page.tables["totals"]
    assert totals[1][0] == "model: tuned" and totals[1][1:] == ["1.000"] * 3
    assert totals[2][0] == "compare: base" and totals[2][1:] == ["0.500", "0.500", "0.333"]
    assert totals[3][1:] == ["+0.500", "+0.500", "+0.667"]
    rows = page.tables["rows"][1:]
    assert [r[0] for r in rows] == ["line 1", "line 3"]
    assert rows[1][2] == "user: Shape?" and rows[1][3] == "A <square>."  # escaped, so read back as text
    assert rows[0][5].startswith("blue <script>x</script>")
    assert len(page.images) == 1 and page.images[0].startswith("data:image/jpeg;base64,")
    import base64
    import io

    from PIL import Image

    thumb = Image.open(io.BytesIO(base64.b64decode(page.images[0].split(",", 1)[1])))
    assert max(thumb.size) == 128 and thumb.size == (128, 85)
    assert "no assistant turn" in (folder / "report.html").read_text()


def test_table_on_stdout_and_no_files_without_o(cli, monkeypatch, picture_data, tmp_path):
    FakeModel(REPLIES).install(monkeypatch)
    code, out, err = cli("eval", "base", "--data", picture_data, "--limit", "1")
    assert code == 0, err
    assert "exact match" in out and "model: base" in out and "1 row(s), 1 skipped" in out
    assert "delta" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "red.png"]


def test_bad_input_exits_2_before_loading(cli, monkeypatch, tmp_path, picture_data):
    fake = FakeModel(REPLIES)
    fake.install(monkeypatch)
    loads = []
    monkeypatch.setattr(generation, "load_for_inference", lambda *a, **k: loads.append(a))
    only_bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    code, _, err = cli("eval", "base", "--data", only_bad)
    assert code == 2 and err.count("\n") == 1
    assert "no row to evaluate: 1 of 1 row(s) are prompts with no answer to compare with (first: line 1)" in err
    assert "(try: score the answers with --reward" in err
    (tmp_path / "empty.jsonl").write_text("")
    code, _, err = cli("eval", "base", "--data", tmp_path / "empty.jsonl")
    assert code == 2 and err.startswith("vlmsurgeon: error:") and err.count("\n") == 1
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    code, _, err = cli("eval", "base", "--data", picture_data, "-o", tmp_path / "taken")
    assert code == 2 and "already exists" in err
    assert (tmp_path / "taken" / "x").read_text() == "keep"
    assert not loads


# ---------------------------------------------------------------- a real fine-tune


def test_overfit_model_beats_its_base(cli, tiny_models, shapes, tmp_path):
    from vlmsurgeon.train.loop import finetune
    from vlmsurgeon.train.runconfig import RunOptions

    four = tmp_path / "four.jsonl"
    # the tiny tokenizer spells bytes: "A red triangle." and its end token take 17 new tokens
    four.write_text("".join(shapes.read_text().splitlines(keepends=True)[:4]))
    for image in (shapes.parent / "img").iterdir():  # the rows' relative image paths
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / "img" / image.name).write_bytes(image.read_bytes())
    base = tiny_models("qwen2_vl")
    finetune(
        RunOptions(
            model=str(base),
            data=str(four),
            output=str(tmp_path / "run"),
            freeze="vision",
            steps=40,
            lr=5e-3,
            batch_size=2,
            seq_len=512,
            seed=0,
        )
    )
    code, out, err = cli(
        "eval",
        tmp_path / "run",
        "--data",
        four,
        "--compare",
        base,
        "--max-new-tokens",
        "20",
        "-o",
        tmp_path / "report",
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    tuned, untuned = result["totals"]["model"]["exact_match"], result["totals"]["compare"]["exact_match"]
    print(f"exact match: tuned {tuned:.3f}, base {untuned:.3f}")
    assert tuned > untuned, result["totals"]
    assert result["delta"]["exact_match"] == pytest.approx(tuned - untuned)
    page = parse(tmp_path / "report" / "report.html")
    rows = page.tables["rows"]
    assert len(rows) == 5 and [r[0] for r in rows[1:]] == [f"line {n}" for n in range(1, 5)]
    assert [r[3] for r in rows[1:]] == ["A red circle.", "A red square.", "A red triangle.", "A green circle."]
    assert len(page.images) == 4 and all(src.startswith("data:image/jpeg;base64,") for src in page.images)
    totals = page.tables["totals"]
    assert totals[1][1] == f"{tuned:.3f}" and totals[2][1] == f"{untuned:.3f}"
    assert totals[3][0].startswith("delta") and totals[3][1] == f"{tuned - untuned:+.3f}"


def test_an_unwritable_report_is_refused_before_loading(cli, monkeypatch, picture_data, tmp_path):
    """-o is probed (a staging-named folder made and removed) before any model loads."""
    import os

    from vlmsurgeon.errors import BadInput
    from vlmsurgeon.use.eval_report import write_report
    from vlmsurgeon.use.evaluate import EvalResult, Model

    fake = FakeModel(REPLIES)
    fake.install(monkeypatch)
    before = sorted(p.name for p in tmp_path.iterdir())
    long = tmp_path / ("r" * 250)  # fits a name, but not its staging folder .NAME.XXXXXXXX
    targets = [(long, "name too long for the file system (250 bytes")]
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        targets.append((tmp_path / "ro" / "rep", "cannot write the report in"))
    for target, what in targets:
        code, out, err = cli("eval", "tuned", "--data", picture_data, "-o", target)
        assert (code, out) == (2, "") and what in err and len(err.splitlines()) == 1, err
        assert "(try: " in err and "Errno" not in err, err
    assert not fake.calls  # nothing generated
    assert sorted(p.name for p in tmp_path.iterdir()) == before + (["ro"] if len(targets) > 1 else [])
    with pytest.raises(BadInput, match="name too long"):
        write_report(EvalResult("d", [Model("model", "m")], [], []), long)


def test_a_missing_compare_is_refused_before_generating(cli, monkeypatch, picture_data, tiny_models):
    """--compare is resolved with SOURCE, before any row is answered; offline, without the network."""
    import huggingface_hub.constants

    model = tiny_models("llava")
    fake = FakeModel({str(model): REPLIES["tuned"]})
    monkeypatch.setattr(answering, "answer", fake.answer)  # SOURCE itself loads for real
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, out, err = cli("eval", model, "--data", picture_data, "--compare", "org/no-such-model")
    assert (code, out) == (2, "") and len(err.splitlines()) == 1, err
    assert "--compare model 'org/no-such-model': no such local directory" in err, err
    assert "HF_HUB_OFFLINE is set" in err and "connect" not in err, err
    assert not fake.calls  # SOURCE answered nothing
