"""Output a person reads: every main command fits 80 columns (or $COLUMNS) when piped, with no
trailing spaces and no box characters; shares follow one rule; tree lines agree with the table;
a percent budget limit shows its share, its count and the margin."""

from __future__ import annotations

import pytest
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from tests.conftest import ROOT

QWEN3 = ROOT / "examples" / "qwen3-vl-235b-a22b"
BUDGETS = ROOT / "examples" / "budgets.yaml"


@pytest.fixture
def piped(monkeypatch, cli):
    """cli at a given width, stdout not a terminal (capsys), colours not forced."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)

    def run(*args, columns: int = 80):
        monkeypatch.setenv("COLUMNS", str(columns))
        return cli(*args)

    return run


def assert_fits(out: str, width: int = 80) -> list[str]:
    lines = out.splitlines()
    assert lines, "no output"
    too_wide = [line for line in lines if cell_len(line) > width]
    assert too_wide == []
    assert [line for line in lines if line != line.rstrip()] == []
    assert not set("┏┃━┡┩└┘┌┐╇╈") & set("".join(line for line in lines if not line.startswith(("│", "├", "└"))))
    return lines


def test_percent_is_one_rule():
    from vlmsurgeon.model.report import percent

    cases = [
        (0, 7),
        (7, 7),
        (50_823_168, 235_670_022_896),
        (160_496_896, 235_670_022_896),
        (234_471_304_704, 235_670_022_896),
        (1, 3),
        (9_995, 10_000),
        (996, 100_000),
        (-3, 100),
        (5, 0),
    ]
    assert [percent(a, b) for a, b in cases] == [
        "0%",
        "100%",
        "0.022%",
        "0.068%",
        "99.5%",
        "33.3%",
        ">99.9%",
        "1.0%",
        "-3.0%",
        "-",
    ]


def test_ellipsis_in_the_middle_and_wrap_between_words():
    from vlmsurgeon.cli.layout import ellipsize, wrap

    assert ellipsize(Text("model.visual.deepstack_merger_list"), 15).plain == "model.v…er_list"
    assert ellipsize(Text("short"), 15).plain == "short"
    lines = [t.plain for t in wrap("  model.visual.merger, model.visual.deepstack_merger_list", 24)]
    assert lines == ["  model.visual.merger,", "  model.visua…erger_list"]


def test_table_shrinks_the_text_column_not_the_numbers():
    from vlmsurgeon.cli.layout import table_lines

    table = Table(title="a title that is long enough to need two lines at this width")
    table.add_column("name")
    table.add_column("count", justify="right")
    table.add_column("roots")
    table.add_row("merger", "160,496,896", "model.visual.merger, model.visual.deepstack_merger_list")
    table.add_row("a heading row spans all columns", "", "")
    lines = [t.plain for t in table_lines(table, 42, plain=True)]
    assert lines == [
        "a title that is long enough to need two",
        "lines at this width",
        "name          count  roots",
        "------  -----------  ---------------------",
        "merger  160,496,896  model.visual.merger,",
        "                     model.visu…erger_list",
        "a heading row spans all columns",
    ]


def test_tree_line_of_a_nested_component_adds_up_to_the_table(piped):
    code, out, err = piped("inspect", QWEN3, "--depth", "4")
    assert code == 0, err
    lines = assert_fits(out)
    assert "│   ├── visual: Qwen3VLMoeVisionModel · 576.4M  [vision 415.9M + merger 160.5M]" in lines
    assert "│   │   ├── merger: Qwen3VLMoeVisionPatchMerger · 40.1M  [merger]" in lines
    assert "│   └── language_model: Qwen3VLMoeTextModel · 234.5B  [lm]" in lines
    assert "vision                     415,891,440   0.18%  793.25 MiB  793.25 MiB" in lines
    assert "merger                     160,496,896  0.068%  306.12 MiB  306.12 MiB" in lines
    assert "total                  235,670,022,896    100%  438.97 GiB  429.71 GiB" in lines
    assert "merger     model.visual.merger, model.visual.deepstack_merger_list" in lines


def test_plan_and_memory_table_fit(piped):
    code, out, err = piped("plan", QWEN3, "--preset", "lm-lora")
    assert code == 0, err
    lines = assert_fits(out)
    assert "training memory estimate · batch 1 × seq 2048, 256 image tokens/sample" in lines
    row = next(line for line in lines if line.startswith("lm "))
    assert row.split()[:4] == ["lm", "234,471,304,704", "50,823,168", "0.022%"]
    total = next(line for line in lines if line.startswith("total "))
    assert total.split() == ["total", "235,670,022,896", "50,823,168", "0.022%"]


def test_budget_percent_limit_shows_share_count_and_margin(piped):
    code, out, err = piped("budget", "check", BUDGETS)
    assert code == 0, err
    lines = assert_fits(out)
    at = lines.index("  trainable <= 0.05%                 0.022%       0.028%  ok")
    assert lines[at + 1] == "    = 117,835,011                50,823,168   67,011,843"
    assert "  lm.trainable <= 60M            50,823,168    9,176,832  ok" in lines
    assert "  memory <= 440GiB               432.59 GiB     7.41 GiB  ok" in lines
    assert "qwen3-vl-235b stage 2 (--freeze vision)" in lines


def test_violated_percent_limit_in_junit_names_share_count_and_excess(tmp_path):
    import xml.etree.ElementTree as ET

    from vlmsurgeon.plan.budget import check_budget, junit_xml

    budget = tmp_path / "budget.yaml"
    budget.write_text(
        f"models:\n  - model: {QWEN3}\n    preset: lm-lora\n"
        "    limits:\n      trainable: 0.02%\n      lm.trainable: {min: 60M}\n"
    )
    result = check_budget(budget)
    [pct, low] = result.failures
    assert (pct.edge, pct.margin, low.edge, low.margin) == (47_134_004, -3_689_164, 60_000_000, -9_176_832)
    messages = [f.get("message") for f in ET.fromstring(junit_xml(result)).iter("failure")]
    assert messages == [
        "trainable = 0.022% = 50,823,168 violates trainable <= 0.02% = 47,134,004 (over by 0.0016% = 3,689,164)",
        "lm.trainable = 50,823,168 violates lm.trainable >= 60M (under by 9,176,832)",
    ]


def test_columns_variable_sets_the_width(piped):
    code, out, err = piped("presets", columns=60)
    assert code == 0, err
    lines = assert_fits(out, 60)
    assert "per-modality-lora" in out and "  every component in full, 16-bit weights" in lines


@pytest.fixture(scope="module")
def tiny_run(tiny_models, tmp_path_factory):
    """The cheapest real run: a tiny Qwen2-VL, two QLoRA steps with the vision tower frozen."""
    import subprocess
    import sys

    from tests.test_finetune import options
    from vlmsurgeon.train.loop import finetune

    base = tmp_path_factory.mktemp("width")
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_shapes.py"), str(base / "shapes")],
        check=True,
        capture_output=True,
    )
    finetune(options(tiny_models("qwen2_vl"), base / "shapes" / "train.jsonl", base / "run", steps=2))
    return tiny_models("qwen2_vl"), base / "run"


def test_merge_sentence_and_diff_fit(piped, tiny_run, tmp_path):
    model, run = tiny_run
    out_dir = tmp_path / "merged"
    code, out, err = piped("merge", run, "-o", out_dir)
    assert code == 0, err
    lines = assert_fits(out)
    assert lines == [
        f"{out_dir}:",  # the path on its own line, the rest broken between words
        "  merged 14 LoRA modules and 6 trained tensors into the dequantized weights, 1",
        "  shard(s), bf16",
    ]
    code, out, err = piped("diff", model, run)
    assert code == 0, err
    lines = assert_fits(out)
    rule = next(i for i, line in enumerate(lines) if line.startswith("---------  "))
    assert lines[rule - 1].split()[:3] == ["component", "tensors", "changed"]
    assert sorted(line.split()[0] for line in lines[rule + 1 : rule + 5]) == ["head", "lm", "merger", "vision"]
