"""`budget check`: pass, fail (exit 1), invalid file (exit 2, every problem), units, several
models, and a JUnit report that a JUnit parser reads back."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from vlmsurgeon.plan.budget import parse_amount


def write(tmp_path, text: str):
    path = tmp_path / "budget.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text,key,value,percent",
    [
        ("50M", "trainable", 50e6, False),
        ("1.5B", "total", 1.5e9, False),
        ("1%", "trainable", 0.01, True),
        ("12GiB", "memory", 12 * 2**30, False),
        ("3GB", "memory", 3e9, False),
        ("2K", "lm.params", 2000, False),
        (0, "vision.trainable", 0, False),
        ("7e3", "total", 7000, False),
        ("512MiB", "memory", 2**29, False),
    ],
)
def test_units(text, key, value, percent):
    assert parse_amount(text, key) == (value, percent)


@pytest.mark.parametrize("text,key", [("12GiB", "total"), ("5%", "memory"), ("lots", "total"), ("3Q", "trainable")])
def test_bad_units(text, key):
    with pytest.raises(ValueError):
        parse_amount(text, key)


def _models(tiny_models) -> str:
    llava, qwen = tiny_models("llava"), tiny_models("qwen2_vl")
    return f"""models:
  - name: llava-lm-lora
    model: {llava}
    preset: lm-lora
    limits:
      total: 137536
      trainable: 24%
      lm.trainable: 32768
      vision.trainable: 0
      memory: 1GiB
  - name: qwen-stage2
    model: {qwen}
    freeze: vision
    limits:
      merger.trainable: {{min: 100%, max: 100%}}
      trainable: {{min: 57600, max: 57600}}
"""


def test_pass_several_models(tmp_path, cli, tiny_models):
    code, out, err = cli("budget", "check", write(tmp_path, _models(tiny_models)), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["ok"] and data["checked"] == 9 and data["failed"] == 0
    assert {r["model"] for r in data["results"]} == {"llava-lm-lora", "qwen-stage2"}


def test_fail_names_the_limit_with_its_figure_and_junit(tmp_path, cli, tiny_models):
    text = (
        _models(tiny_models)
        .replace("lm.trainable: 32768", "lm.trainable: 30K")
        .replace("trainable: 24%", "trainable: 20%")
    )
    junit = tmp_path / "report.xml"
    code, out, err = cli("budget", "check", write(tmp_path, text), "--junit", junit)
    assert code == 1
    assert "FAIL" in out
    assert "llava-lm-lora: lm.trainable = 32,768 (limit lm.trainable <= 30K)" in err
    assert "llava-lm-lora: trainable = 32,768 (limit trainable <= 20%)" in err
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "9" and root.get("failures") == "2"
    cases = root.findall(".//testcase")
    assert len(cases) == 9
    failed = sorted(c.get("name") for c in cases if c.find("failure") is not None)
    assert failed == ["lm.trainable <= 30K", "trainable <= 20%"]
    suites = {s.get("name"): s.get("failures") for s in root.findall("testsuite")}
    assert suites == {"budget: llava-lm-lora": "2", "budget: qwen-stage2": "0"}


def test_invalid_file_lists_every_problem(tmp_path, cli):
    text = """models:
  - model: some/model
    limits:
      trainabel: 5M
      memory: 5%
      lm.trainable: lots
  - colour: red
    limits: {}
"""
    code, _, err = cli("budget", "check", write(tmp_path, text))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    for needle in (
        "models.0.limits.trainabel: unknown limit",
        "models.0.limits.memory",
        "models.0.limits.lm.trainable: 'lots'",
        "models.0: trainable/memory limits need a preset",
        "models.1.model: Field required",
        "models.1.colour",
    ):
        assert needle in err, needle


def test_missing_budget_file_is_bad_input(tmp_path, cli):
    code, _, err = cli("budget", "check", tmp_path / "nope.yaml")
    assert code == 2 and "no such file" in err


def test_shipped_example_budget_passes(cli):
    from tests.conftest import ROOT

    code, out, err = cli("budget", "check", ROOT / "examples" / "budgets.yaml", "--json")
    assert code == 0, err
    assert json.loads(out)["checked"] == 11
