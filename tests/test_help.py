"""`--help` of every command and group, as a user reads it (COLUMNS=100): flags show no value
type, every option says what it does, defaults are written one way and match what the command
really uses, and no help imports torch."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vlmsurgeon.cli.app import app
from vlmsurgeon.train.runconfig import RunOptions

from .conftest import ROOT


def _paths() -> list[tuple[str, ...]]:
    """Every group and command of the app, as argument lists: (), ("inspect",), ("budget", "check"), …"""
    import typer

    found: list[tuple[str, ...]] = []

    def walk(command: object, path: tuple[str, ...]) -> None:
        found.append(path)
        for name in sorted(getattr(command, "commands", {})):
            walk(command.commands[name], (*path, name))

    walk(typer.main.get_command(app), ())
    return found


PATHS = _paths()


def _help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return result.output


def _option_rows(text: str) -> dict[str, str]:
    """The Options panel as {--long-name: the row's text, wrapped lines joined}."""
    rows: dict[str, str] = {}
    inside, current = False, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("╭─"):
            inside, current = stripped.startswith("╭─ Options"), None
            continue
        if not inside or not stripped.startswith("│"):
            continue
        content = stripped[1:-1] if stripped.endswith("│") else stripped[1:]
        start = re.match(r"^\s{0,4}\*?\s{0,4}(--[\w-]+)", content)  # wrapped lines start far right
        if start:
            current = start.group(1)
            rows[current] = content
        elif current is not None:
            rows[current] += " " + content
    return {name: " ".join(row.replace("*", " ", 1).split()) for name, row in rows.items()}


def _help_text(row: str) -> str:
    """What a row says after its names, value type and range."""
    rest = re.sub(r"^--[\w-]+(\s+-\w)?", "", row).strip()
    rest = re.sub(r"^<[^>]*>(\s+\[x[^\]]*\])?", "", rest)
    return rest.strip()


def test_every_command_and_group_is_covered():
    assert {p[0] for p in PATHS if p} >= {
        "inspect",
        "presets",
        "plan",
        "finetune",
        "merge",
        "diff",
        "tiny",
        "generate",
        "chat",
        "eval",
        "budget",
        "data",
    }
    assert ("budget", "check") in PATHS and ("data", "check") in PATHS and () in PATHS


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "vlmsurgeon")
def test_help_reads_one_way(path):
    text = _help(path)
    rows = _option_rows(text)
    assert "--help" in rows, text
    assert "<bool>" not in text  # a flag takes no value
    for name, row in rows.items():
        assert _help_text(row), f"{' '.join(path)} {name}: no help text: {row!r}"
        # one format for defaults: `[default: X]`, never a bare `[2048]` nor a "default: X" in prose
        assert not re.search(r"\[[\w.+-]+\]", _help_text(row).replace("[required]", "")), (name, row)
        assert row.count("default:") == row.count("[default: "), (name, row)


def test_flags_show_no_type_and_values_show_theirs():
    rows = _option_rows(_help(("plan",)))
    assert rows["--json"] == "--json Print the plan as JSON only."
    assert rows["--trust-remote-code"] == "--trust-remote-code Allow code from the model repo (auto_map)."
    assert rows["--help"] == "--help -h Show this message and exit."
    assert rows["--seq-len"] == "--seq-len <int> Tokens per sample (text + image). [default: 2048]"
    assert rows["--revision"] == "--revision <str> Hub revision: a branch, tag or commit."
    root = _option_rows(_help(()))
    assert root == {
        "--version": "--version Print the version and exit.",
        "--help": "--help -h Show this message and exit.",
    }


# options whose flag is None (so that --config can set them) and whose default lives in RunOptions
FROM_RUN_OPTIONS = {
    "plan": {
        "--seq-len": "seq_len",
        "--batch-size": "batch_size",
        "--image-tokens": "image_tokens",
        "--quantize": "quantize",
        "--objective": "objective",
    },
    "finetune": {
        "--epochs": "epochs",
        "--lr": "lr",
        "--batch-size": "batch_size",
        "--grad-accum": "grad_accum",
        "--seq-len": "seq_len",
        "--seed": "seed",
        "--quantize": "quantize",
        "--dtype": "dtype",
        "--report-to": "report_to",
        "--objective": "objective",
    },
}


SCALE_OUT = {"plan": ("--strategy", "--gpu-memory")}
# grpo's knobs are None in RunOptions (a knob the objective does not read is refused): the values a
# grpo run takes are plan's GRPO_DEFAULTS, kept equal to train's by tests/test_plan_objective.py
GRPO_FLAGS = ("--num-generations", "--max-completion-length", "--temperature", "--epsilon", "--loss-type")
GRPO_FLAGS += ("--importance-sampling", "--completions-every")


@pytest.mark.parametrize("command", sorted(FROM_RUN_OPTIONS))
def test_stated_defaults_are_the_ones_used(command):
    rows = _option_rows(_help((command,)))
    shown = {
        name: re.search(r"\[default: ([^\]]+)\]", row).group(1) for name, row in rows.items() if "[default: " in row
    }
    expected = FROM_RUN_OPTIONS[command]
    assert set(shown) == set(expected) | set(SCALE_OUT.get(command, ())) | set(GRPO_FLAGS)
    from vlmsurgeon.plan.objective import GRPO_DEFAULTS

    for flag in GRPO_FLAGS:
        real = GRPO_DEFAULTS[flag[2:].replace("-", "_")]
        assert (float(shown[flag]) == real) if isinstance(real, (int, float)) else shown[flag] == real, flag
    for flag, field in expected.items():
        real = RunOptions.model_fields[field].default
        assert (float(shown[flag]) == real) if isinstance(real, (int, float)) else shown[flag] == real, flag
    if command == "plan":  # scale-out: what scale_request fills in when only --gpus is given
        from vlmsurgeon.plan.memory import scale_request

        used = scale_request(8, None, None)
        assert used.strategy == shown["--strategy"]
        assert used.gpu_memory == scale_request(8, None, shown["--gpu-memory"]).gpu_memory


def test_no_default_is_swallowed_as_markup():
    """typer renders help as rich markup: an unescaped `[default: x]` in a help string vanishes."""
    import typer

    def walk(command):
        yield from getattr(command, "params", [])
        for sub in getattr(command, "commands", {}).values():
            yield from walk(sub)

    helps = [p.help for p in walk(typer.main.get_command(app)) if getattr(p, "help", None)]
    assert len(helps) > 60
    assert [h for h in helps if re.search(r"(?<!\\)\[default", h)] == []


def test_no_help_imports_torch():
    """Every command's --help, in one process: none of them may import the heavy libraries."""
    code = (
        "import sys\nfrom vlmsurgeon.cli import main\n"
        f"for path in {[list(p) for p in PATHS]!r}:\n"
        "    sys.argv = ['vlmsurgeon', *path, '--help']\n"
        "    try:\n        main()\n    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), (path, exc.code)\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={"COLUMNS": "100", "PATH": ""}
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stderr
    assert proc.stdout.count("Usage: vlmsurgeon") == len(PATHS)


def test_docs_budget_example_is_the_shipped_budget_file():
    """The budget page's example (docs/budget.md), copied as is, is examples/budgets.yaml (which the
    budget tests check passes): the same models and limits, comments aside."""
    import yaml

    readme = (ROOT / "docs" / "budget.md").read_text()
    block = readme.split("# `budget check`", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert block.startswith("# examples/budgets.yaml\n")
    shipped = yaml.safe_load((ROOT / "examples" / "budgets.yaml").read_text())
    assert yaml.safe_load(block) == shipped
    assert len(shipped["models"]) == 2
