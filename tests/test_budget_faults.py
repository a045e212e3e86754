"""`budget check` when things go wrong: a model that fails to load between others (its entry is
an error, the rest are still checked, exit 2), impossible limits refused before any model loads,
hints that name only what a budget file can say, and a JUnit file that is always written, whole
or not at all (a failure mid-write, a SIGKILL)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import ROOT
from vlmsurgeon.errors import BadInput, RuntimeFailure
from vlmsurgeon.plan import budget as budget_mod
from vlmsurgeon.plan.budget import BudgetResult, EntryError, _entry_error, write_junit

# The issue's example: three models, the middle one fails to load. The first one violates a limit
# (found before the failure, it must be kept), the third one passes (checked after it).
ISSUE_EXAMPLE = """models:
  - name: llava-lm-lora
    model: {llava}
    preset: lm-lora
    limits:
      total: 137536
      trainable: 20%
      lm.trainable: 32768
  - name: broken
    model: {broken}
    freeze: vision
    limits:
      trainable: 1M
      lm.params: 1B
  - name: qwen-stage2
    model: {qwen}
    freeze: vision
    limits:
      merger.trainable: {{min: 100%, max: 100%}}
      trainable: {{min: 57600, max: 57600}}
"""


def write(tmp_path, text: str, name: str = "budget.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _broken(kind: str, tmp_path):
    """A model reference that fails to load in the way `kind` says."""
    folder = tmp_path / kind
    if kind == "missing-dir":
        return folder
    folder.mkdir()
    configs = {
        "invalid-json": '{"model_type": "llava", ',
        "unknown-model-type": '{"model_type": "frobnicator_vl"}',
        "remote-code": '{"model_type": "frob_vl", "auto_map": {"AutoConfig": "configuration_frob.FrobConfig"}}',
        "bad-config-value": '{"model_type": "llava", "text_config": {"model_type": "llama", "hidden_size": -3}}',
    }
    if kind in configs:
        (folder / "config.json").write_text(configs[kind])
    return folder  # "no-config": an empty directory


REASONS = {
    "missing-dir": "no such file or directory",
    "no-config": "no config.json",
    "invalid-json": "invalid JSON",
    "unknown-model-type": "'frobnicator_vl'",
    "remote-code": "needs code from the model repo",
    "bad-config-value": "invalid llava config",
}


def _issue_example(tmp_path, tiny_models, kind: str):
    text = ISSUE_EXAMPLE.format(
        llava=tiny_models("llava"), qwen=tiny_models("qwen2_vl"), broken=_broken(kind, tmp_path)
    )
    return write(tmp_path, text)


def _suites(junit) -> dict[str, ET.Element]:
    root = ET.parse(junit).getroot()  # must parse
    return {s.get("name"): s for s in root.findall("testsuite")}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_a_model_failing_to_load_mid_file_leaves_the_others_checked(tmp_path, cli, tiny_models, kind):
    junit = tmp_path / "out" / "report.xml"
    code, out, err = cli("budget", "check", _issue_example(tmp_path, tiny_models, kind), "--junit", junit)
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("vlmsurgeon: error:")]
    assert len(errors) == 1 and errors[0].startswith("vlmsurgeon: error: models.1 'broken': ")
    assert REASONS[kind] in errors[0]
    # the violation found before the failure is kept, the model after it is still checked
    assert "vlmsurgeon: budget violated: llava-lm-lora: trainable = 32,768 (limit trainable <= 20%)" in err
    assert "llava-lm-lora" in out and "qwen-stage2" in out and "ERROR" in out and "FAIL" in out
    assert len(err.strip().splitlines()) == 2
    suites = _suites(junit)
    assert list(suites) == ["budget: llava-lm-lora", "budget: broken", "budget: qwen-stage2"]
    verdicts = {
        name: [(c.get("name"), [child.tag for child in c]) for c in s.findall("testcase")] for name, s in suites.items()
    }
    assert verdicts == {
        "budget: llava-lm-lora": [
            ("total <= 137536", []),
            ("trainable <= 20%", ["failure"]),
            ("lm.trainable <= 32768", []),
        ],
        "budget: broken": [("trainable <= 1M", ["error"]), ("lm.params <= 1B", ["error"])],
        "budget: qwen-stage2": [
            ("merger.trainable >= 100%", []),
            ("merger.trainable <= 100%", []),
            ("trainable >= 57600", []),
            ("trainable <= 57600", []),
        ],
    }
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("9", "1", "2")
    assert REASONS[kind] in suites["budget: broken"].find("testcase/error").get("message")
    assert [p.name for p in junit.parent.iterdir()] == ["report.xml"]


def test_json_lists_the_error_and_keeps_every_verdict(tmp_path, cli, tiny_models):
    code, out, _ = cli("budget", "check", _issue_example(tmp_path, tiny_models, "missing-dir"), "--json")
    assert code == 2
    data = json.loads(out)
    assert not data["ok"] and data["checked"] == 7 and data["failed"] == 1
    assert [(e["model"], e["entry"]) for e in data["errors"]] == [("broken", 1)]
    status = [(r["model"], r["limit"], r["status"]) for r in data["results"]]
    assert status[:5] == [
        ("llava-lm-lora", "total", "ok"),
        ("llava-lm-lora", "trainable", "fail"),
        ("llava-lm-lora", "lm.trainable", "ok"),
        ("broken", "trainable", "error"),
        ("broken", "lm.params", "error"),
    ]
    assert all(s == "ok" for _, _, s in status[5:]) and len(status) == 9
    assert data["results"][3]["figure"] is None and "no such file" in data["results"][3]["error"]


def test_an_entry_without_limits_that_fails_to_load_still_shows(tmp_path, cli, tiny_models):
    text = f"""models:
  - model: {tiny_models("llava")}
    limits: {{total: 1B}}
  - name: only-loads
    model: {tmp_path / "nowhere"}
    limits: {{}}
"""
    junit = tmp_path / "report.xml"
    code, out, err = cli("budget", "check", write(tmp_path, text), "--junit", junit)
    assert code == 2 and "models.1 'only-loads'" in err and "load model" in out
    case = _suites(junit)["budget: only-loads"].find("testcase")
    assert case.get("name") == "load model" and case.find("error") is not None


def test_a_limit_on_a_component_the_model_lacks_is_an_error(tmp_path, cli, tiny_models):
    text = f"""models:
  - name: llava
    model: {tiny_models("llava")}
    freeze: vision
    limits:
      generator.trainable: 0
      vision.trainable: 0
"""
    junit = tmp_path / "report.xml"
    code, _, err = cli("budget", "check", write(tmp_path, text), "--junit", junit)
    assert code == 2
    assert (
        "vlmsurgeon: error: models.0 'llava': limit generator.trainable: the model has no "
        "generator component (it has vision, merger, lm, head)"
    ) in err
    cases = {c.get("name"): [x.tag for x in c] for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases == {"generator.trainable <= 0": ["error"], "vision.trainable <= 0": []}


def test_an_unexpected_failure_is_a_runtime_error_and_the_rest_still_run(tmp_path, cli, tiny_models, monkeypatch):
    import vlmsurgeon.plan.plan as plan

    real = plan.plan_model

    def flaky(reference, **kwargs):
        if str(reference).endswith("no-config"):
            raise RuntimeError("boom\nsecond line")
        return real(reference, **kwargs)

    monkeypatch.setattr(plan, "plan_model", flaky)
    path = _issue_example(tmp_path, tiny_models, "no-config")
    code, out, err = cli("budget", "check", path)
    assert code == 3 and "qwen-stage2" in out
    assert (
        "vlmsurgeon: error: models.1 'broken': RuntimeError: boom (try: VLMSURGEON_DEBUG=1 for the traceback)"
    ) in err and "Traceback" not in err
    monkeypatch.setenv("VLMSURGEON_DEBUG", "1")
    code, _, err = cli("budget", "check", path)
    assert code == 3 and "Traceback" in err and "RuntimeError: boom" in err


def test_hints_name_budget_keys_not_options(tmp_path, cli, tiny_models):
    code, _, err = cli("budget", "check", _issue_example(tmp_path, tiny_models, "remote-code"))
    assert code == 2 and "--trust-remote-code" not in err
    assert "trust_remote_code: true" in err.splitlines()[0]
    # called as a library, outside the CLI, too
    error = budget_mod.check_budget(tmp_path / "budget.yaml").errors[0]
    assert "--trust-remote-code" not in error.line() and "trust_remote_code: true" in error.hint
    # an option that budget check lacks drops the hint; its own options stay
    assert _entry_error(0, "m", BadInput("boom", "pass --revision main")).hint is None
    assert (
        _entry_error(0, "m", BadInput("--freeze: x", "or --junit")).line()
        == "models.0 'm': freeze: x (try: or --junit)"
    )


IMPOSSIBLE = [
    ("trainable: {min: 10M, max: 1M}", "models.0.limits.trainable: min 10M is above max 1M"),
    ("trainable: {min: 10%, max: 1%}", "models.0.limits.trainable: min 10% is above max 1%"),
    ("trainable: 150%", "models.0.limits.trainable: '150%': a share cannot be over 100%"),
    ("lm.trainable: {min: 101%}", "models.0.limits.lm.trainable: '101%': a share cannot be over 100%"),
    ("trainable: -5%", "models.0.limits.trainable: '-5%': a limit is a finite number >= 0"),
    ("total: -1", "models.0.limits.total: '-1': a limit is a finite number >= 0"),
    ("lm.params: {min: -2M}", "models.0.limits.lm.params: '-2M': a limit is a finite number >= 0"),
    ("memory: 1e400", "models.0.limits.memory: '1e400': a limit is a finite number >= 0"),
    ("total: 50%", "models.0.limits.total: total takes a count, not a percent"),
    ("trainable: {}", "models.0.limits.trainable: give max and/or min"),
    ("trainable: {most: 5M}", "models.0.limits.trainable.most: use max or min"),
    ("visual.params: 5M", "models.0.limits.visual.params: unknown limit"),
    ("lm.frozen: 5M", "models.0.limits.lm.frozen: unknown limit"),
    ("trainable: true", "models.0.limits.trainable: 'True' is not a number"),
]


@pytest.mark.parametrize("limit,needle", IMPOSSIBLE)
def test_impossible_limits_are_bad_input_before_any_model_loads(tmp_path, cli, monkeypatch, limit, needle):
    import vlmsurgeon.plan.plan as plan

    monkeypatch.setattr(plan, "plan_model", lambda *a, **k: pytest.fail("a model was loaded"))
    path = write(tmp_path, f"models:\n  - model: some/model\n    freeze: vision\n    limits:\n      {limit}\n")
    code, out, err = cli("budget", "check", path)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"vlmsurgeon: error: {path}: ") and needle in err


def test_entry_names_are_checked_before_any_model_loads(tmp_path, cli, monkeypatch):
    import vlmsurgeon.plan.plan as plan

    monkeypatch.setattr(plan, "plan_model", lambda *a, **k: pytest.fail("a model was loaded"))
    text = """models:
  - model: a/b
    freeze: vision,visoin
    limits: {total: 1B}
  - model: a/b
    preset: no-such-preset
    limits: {total: 1B}
"""
    code, _, err = cli("budget", "check", write(tmp_path, text))
    assert code == 2 and "2 problem(s)" in err
    assert "models.0.freeze: unknown component(s) 'visoin' (valid: vision, merger" in err
    assert "models.1.preset: preset 'no-such-preset': neither a built-in nor a file" in err


@pytest.mark.parametrize(
    "limit",
    [
        "trainable: 100%",
        "trainable: 0",
        "trainable: {min: 5, max: 5}",
        "memory: {min: 1KiB, max: 1GiB}",
        "trainable: {min: 1%, max: 100000}",
    ],
)
def test_possible_edge_limits_are_accepted(tmp_path, limit):
    path = write(tmp_path, f"models:\n  - model: some/model\n    freeze: vision\n    limits:\n      {limit}\n")
    budget_mod.load_budget(path)


@pytest.mark.parametrize("what", ["invalid", "missing"])
def test_junit_is_written_even_when_the_budget_file_is_refused(tmp_path, cli, what):
    junit = tmp_path / "report.xml"
    junit.write_text("<testsuites tests='1' failures='0'/>")  # an earlier run's green report
    path = write(tmp_path, "models: []\n") if what == "invalid" else tmp_path / "nope.yaml"
    code, _, err = cli("budget", "check", path, "--junit", junit)
    assert code == 2 and len(err.strip().splitlines()) == 1
    root = ET.parse(junit).getroot()
    assert root.get("errors") == "1"
    case = root.find("testsuite/testcase")
    assert case.get("name") == "budget file" and case.find("error") is not None


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_an_unwritable_junit_path_is_bad_input_before_the_check(tmp_path, cli, tiny_models, where):
    path = write(tmp_path, f"models:\n  - model: {tiny_models('llava')}\n    limits: {{total: 1B}}\n")
    if where == "a directory":
        junit = tmp_path / "report.xml"
        junit.mkdir()
    else:
        (tmp_path / "file").write_text("x")
        junit = tmp_path / "file" / "report.xml"
    code, out, err = cli("budget", "check", path, "--junit", junit)
    assert (code, out) == (2, "")  # refused before any model is checked: no table, then an error
    why = "is a folder" if where == "a directory" else f"'{tmp_path / 'file'}' is a file, not a folder"
    assert err.startswith(f"vlmsurgeon: error: --junit {junit}: {why}") and err.count("\n") == 1
    assert not list(tmp_path.glob(".report.xml.*"))


def _result() -> BudgetResult:
    return BudgetResult(errors=[EntryError(0, "m", "boom")])


class _Dies:
    """A file object that writes half of what it is given, then fails like `failure`."""

    def __init__(self, fh, failure: BaseException):
        self.fh, self.failure = fh, failure

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def write(self, data: bytes) -> int:
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        raise self.failure


@pytest.mark.parametrize(
    "failure,raised",
    [
        (OSError(errno.ENOSPC, "No space left on device"), RuntimeFailure),
        (OSError(errno.EACCES, "Permission denied"), BadInput),
        (KeyboardInterrupt(), KeyboardInterrupt),
    ],
)
@pytest.mark.parametrize("old", [True, False])
def test_a_failure_mid_write_leaves_the_old_report_and_no_staging(tmp_path, monkeypatch, failure, raised, old):
    junit = tmp_path / "report.xml"
    if old:
        junit.write_bytes(b"old report")
    real = os.fdopen
    monkeypatch.setattr(budget_mod.os, "fdopen", lambda fd, mode: _Dies(real(fd, mode), failure))
    with pytest.raises(raised):
        write_junit(_result(), junit)
    assert [p.name for p in tmp_path.iterdir()] == (["report.xml"] if old else [])
    if old:
        assert junit.read_bytes() == b"old report"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_junit_modes_follow_the_umask(tmp_path, umask, mode):
    junit = tmp_path / "report.xml"
    old = os.umask(umask)
    try:
        write_junit(_result(), junit)
    finally:
        os.umask(old)
    assert junit.stat().st_mode & 0o777 == mode
    ET.parse(junit)


def test_a_killed_runs_staging_file_is_removed_by_the_next_write(tmp_path):
    junit = tmp_path / "report.xml"
    (tmp_path / ".report.xml.abc123.tmp").write_bytes(b"<testsuites><testsu")
    (tmp_path / ".report.xml.keep").write_bytes(b"not ours")
    write_junit(_result(), junit)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".report.xml.keep", "report.xml"]


# Killed with SIGKILL where a kill does the most harm: the report is fully staged, not yet renamed.
KILL_BEFORE_RENAME = """
import os, signal, sys
import vlmsurgeon.fsutil as fsutil
fsutil.publish = lambda staging, target: os.kill(os.getpid(), signal.SIGKILL)
from vlmsurgeon.cli import main
sys.argv = ["vlmsurgeon", "budget", "check", sys.argv[1], "--junit", sys.argv[2]]
main()
"""


def test_sigkill_during_junit_write_leaves_the_old_report_and_the_rerun_succeeds(tmp_path, cli, tiny_models):
    path = write(tmp_path, f"models:\n  - model: {tiny_models('llava')}\n    limits: {{total: 1B}}\n")
    junit = tmp_path / "report.xml"
    junit.write_bytes(b"old report")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_BEFORE_RENAME, str(path), str(junit)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert junit.read_bytes() == b"old report"
    staged = list(tmp_path.glob(".report.xml.*.tmp"))
    assert len(staged) == 1  # the kill came mid-publish: the staged file is what it left
    code, _, err = cli("budget", "check", path, "--junit", junit)
    assert code == 0, err
    assert ET.parse(junit).getroot().get("tests") == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["budget.yaml", "report.xml"]
