"""`finetune` when things go wrong (issue 13): a resume with other inputs, two runs on one
directory, a kill at start, a batch with no label, bad -o, a full disk, a damaged checkpoint.
Each asserts the exit code and the one error line, and what is left on disk."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from vlmsurgeon.train.loop import finetune
from vlmsurgeon.train.runconfig import RunOptions

VLMSURGEON = str(Path(sys.executable).parent / "vlmsurgeon")
COMMON = ("--freeze", "vision", "--batch-size", "2", "--seq-len", "512", "--lr", "5e-3", "--quantize", "none")


def error_line(err: str) -> str:
    """The one `vlmsurgeon: error:` line (and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("vlmsurgeon: error:")]
    assert len(lines) == 1, err
    return lines[0]


def log_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def no_weights(monkeypatch) -> None:
    """Loading weights fails the test (exit 3 instead of the expected 2): the check came first."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr("vlmsurgeon.train.loop.load_for_training", refuse)


@pytest.fixture(scope="module")
def trained(tiny_models, shapes, tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4, written under umask 022."""
    run = tmp_path_factory.mktemp("trained") / "run"
    previous = os.umask(0o022)
    try:
        finetune(
            RunOptions(
                model=str(tiny_models("qwen2_vl")),
                data=str(shapes),
                output=str(run),
                freeze="vision",
                steps=4,
                save_every=2,
                batch_size=2,
                seq_len=512,
                lr=5e-3,
                quantize="none",
            )
        )
    finally:
        os.umask(previous)
    return run


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def test_outputs_honour_the_umask(trained):
    for entry in ("adapter", "processor", "vlmsurgeon.json", "run.json", "log.jsonl", "checkpoints"):
        path = trained / entry
        for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
            want = 0o755 if item.is_dir() else 0o644
            assert stat.S_IMODE(item.stat().st_mode) == want, (item, oct(item.stat().st_mode))
    assert not (trained / ".lock").exists()
    assert not list(trained.glob(".final-*")) and not list(trained.glob(".run.json.*"))


def test_resume_with_other_inputs_exits_2_before_loading(run_copy, tiny_models, shapes, cli, monkeypatch):
    other = shapes.parent / "other.jsonl"
    other.write_text("".join(shapes.read_text().splitlines(keepends=True)[:11]))
    before = (run_copy / "vlmsurgeon.json").read_text()
    no_weights(monkeypatch)
    code, _, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        other,
        "-o",
        run_copy,
        "--freeze",
        "vision,merger",
        "--batch-size",
        "2",
        "--seq-len",
        "400",
        "--lr",
        "1e-3",
        "--quantize",
        "4bit",
        "--steps",
        "6",
        "--resume",
    )
    assert code == 2, err
    line = error_line(err)
    assert line.startswith(
        f"vlmsurgeon: error: --resume: {run_copy} was started with other inputs: data {shapes.resolve()} (sha256 "
    ), line
    for said in (
        f"→ {other.resolve()} (sha256 ",
        "lr 0.005 → 0.001",
        "preset 'freeze:vision' → 'freeze:vision,merger'",
        'quantize "none" → "4bit"',
        "seq_len 512 → 400",
        "(try: resume with the options it was started with, or pass --resume-changed "
        "data,lr,preset,quantize,seq_len to train on with the new ones (recorded in vlmsurgeon.json))",
    ):
        assert said in line, (said, line)
    assert "steps" not in line  # a longer run is what resume is for
    assert (run_copy / "vlmsurgeon.json").read_text() == before


def test_resume_with_no_more_steps_than_done_exits_2_before_loading(run_copy, tiny_models, shapes, cli, monkeypatch):
    """Checkpoints at 2 and 4: --steps 2 (fewer) or 4 (the same) has nothing to train. Trainer would
    take a 5th step at learning rate 0 and write the run's outputs over the finished ones."""
    before = (run_copy / "vlmsurgeon.json").read_text()
    no_weights(monkeypatch)
    for steps, left in (("2", ""), ("4", "; nothing left to train")):
        code, _, err = cli(
            "finetune",
            tiny_models("qwen2_vl"),
            "--data",
            shapes,
            "-o",
            run_copy,
            *COMMON,
            "--save-every",
            "2",
            "--steps",
            steps,
            "--resume",
        )
        assert code == 2, err
        assert error_line(err) == (
            f"vlmsurgeon: error: --steps {steps}: run '{run_copy}' has already done 4 steps "
            f"(checkpoint-4){left} (try: pass --steps above 4 to train it on, or another -o "
            "to start a new run)"
        )
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (run_copy / "vlmsurgeon.json").read_text() == before


def test_resume_changed_trains_on_with_the_new_rate_and_records_it(run_copy, tiny_models, shapes, cli):
    code, _, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        shapes,
        "-o",
        run_copy,
        *COMMON[:-4],
        "--lr",
        "1e-3",
        "--quantize",
        "none",
        "--steps",
        "6",
        "--save-every",
        "2",
        "--resume",
        "--resume-changed",
        "lr",
    )
    assert code == 0, err
    record = json.loads((run_copy / "vlmsurgeon.json").read_text())
    assert record["resumed"] == [{"step": 4, "changed": {"lr": [0.005, 0.001], "steps": [4, 6]}}]
    assert record["training"]["global_step"] == 6 and record["training"]["lr"] == 0.001
    step5 = [r for r in log_records(run_copy) if r.get("step") == 5 and "loss" in r]
    # linear decay over 6 steps from the new rate: step 5 trains at 2/6 of it (the saved state: 2/6 of 5e-3)
    assert step5 and step5[-1]["learning_rate"] == pytest.approx(1e-3 * 2 / 6, rel=1e-6)
    assert json.loads((run_copy / "run.json").read_text())["inputs"]["lr"] == 0.001


def test_resume_changed_names_only_known_keys(run_copy, tiny_models, shapes, cli):
    code, _, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        shapes,
        "-o",
        run_copy,
        *COMMON,
        "--resume",
        "--resume-changed",
        "lr,colour",
    )
    assert code == 2
    assert error_line(err).startswith("vlmsurgeon: error: --resume-changed: unknown key(s) colour (try: valid: base,")
    code, _, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        shapes,
        "-o",
        run_copy.parent / "new",
        *COMMON,
        "--resume-changed",
        "lr",
    )
    assert code == 2
    assert error_line(err) == (
        "vlmsurgeon: error: --resume-changed only applies with --resume (try: add --resume, or drop --resume-changed)"
    )


def test_resume_of_a_run_without_run_json_warns_and_goes_on(run_copy, tiny_models, shapes, cli):
    (run_copy / "run.json").unlink()  # a run started by an older vlmsurgeon
    code, _, err = cli(
        "finetune", tiny_models("qwen2_vl"), "--data", shapes, "-o", run_copy, *COMMON, "--steps", "5", "--resume"
    )
    assert code == 0, err
    assert (
        f"vlmsurgeon: warning: {run_copy} has no run.json (started by an older vlmsurgeon): resuming without checking"
    ) in err
    record = json.loads((run_copy / "vlmsurgeon.json").read_text())
    assert record["resumed"] == [{"step": 4, "changed": None}] and record["training"]["global_step"] == 5
    assert (run_copy / "run.json").is_file()  # the next resume is checked


def test_damaged_optimizer_state_exits_2_naming_the_checkpoint(run_copy, tiny_models, shapes, cli, monkeypatch):
    checkpoint = run_copy / "checkpoints" / "checkpoint-4"
    optimizer = checkpoint / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])  # marked complete, torn
    args = ("finetune", tiny_models("qwen2_vl"), "--data", shapes, "-o", run_copy, *COMMON, "--steps", "6", "--resume")
    hint = f"(try: delete it (rm -r {checkpoint}); --resume then continues from checkpoint-2)"
    with monkeypatch.context() as patch:
        no_weights(patch)  # found before any weight loads
        code, _, err = cli(*args)
    assert code == 2, err
    line = error_line(err)
    assert line.startswith(
        f"vlmsurgeon: error: --resume: checkpoint {checkpoint} is damaged (optimizer.pt unreadable: "
    ) and line.endswith(hint), line
    # what the file check cannot see, Trainer's loading finds: said the same way
    monkeypatch.setattr("vlmsurgeon.train.resume.check_checkpoint", lambda checkpoint: None)
    code, _, err = cli(*args)
    assert code == 2, err
    line = error_line(err)
    assert line.startswith(f"vlmsurgeon: error: --resume: checkpoint {checkpoint} is damaged (") and line.endswith(hint)
    assert not (run_copy / "checkpoints" / "checkpoint-6").exists() and (checkpoint / "optimizer.pt").is_file()


def test_second_run_on_a_locked_directory_exits_2_and_the_first_finishes(tiny_models, shapes, tmp_path):
    run = tmp_path / "run"
    cmd = [
        VLMSURGEON,
        "finetune",
        str(tiny_models("qwen2_vl")),
        "--data",
        str(shapes),
        "-o",
        str(run),
        *COMMON,
        "--steps",
        "30",
    ]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run / ".lock").is_file() and first.poll() is None:
            time.sleep(0.02)
        assert (run / ".lock").is_file(), first.communicate()[1]
        second = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, second.stderr
    assert error_line(second.stderr) == (
        f"vlmsurgeon: error: run directory {run} is in use by pid {first.pid} (try: wait for that run to "
        f"finish, or choose another -o; if it is gone, delete {run / '.lock'})"
    )
    # refused at the lock, before the data pre-pass or any weight: no status line of a starting run
    assert "data:" not in second.stderr and "loading weights" not in second.stderr, second.stderr
    assert first.returncode == 0, err
    steps = [r["step"] for r in log_records(run) if "loss" in r]
    assert steps == list(range(1, 31))  # one line per step: the second run wrote nothing
    assert json.loads((run / "vlmsurgeon.json").read_text())["training"]["global_step"] == 30
    assert not (run / ".lock").exists()


def test_a_kill_at_start_leaves_nothing_that_blocks_the_next_run(tiny_models, shapes, tmp_path, cli):
    run = tmp_path / "run"
    cmd = [
        VLMSURGEON,
        "finetune",
        str(tiny_models("qwen2_vl")),
        "--data",
        str(shapes),
        "-o",
        str(run),
        *COMMON,
        "--steps",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "run.json").is_file() and proc.poll() is None:
        time.sleep(0.01)  # run.json is written after validation, just before the weights load
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (run / ".lock").is_file() and (run / "run.json").is_file()
    assert not list(run.glob("checkpoints/*/.vlmsurgeon-complete"))
    code, out, err = cli("finetune", tiny_models("qwen2_vl"), "--data", shapes, "-o", run, *COMMON, "--steps", "2")
    assert code == 0, err
    assert (
        f"vlmsurgeon: warning: run directory {run} was locked by pid {proc.pid}, which is gone: taking it over" in err
    )
    assert json.loads((run / "vlmsurgeon.json").read_text())["training"]["global_step"] == 2
    assert not (run / ".lock").exists()


def test_a_batch_with_no_trained_token_stops_the_run(tiny_models, shapes, tmp_path, cli, monkeypatch):
    from vlmsurgeon.data.collate import Collator

    calls = []
    collate = Collator.__call__

    def third_batch_unlabelled(self, samples):
        batch = collate(self, samples)
        calls.append(len(samples))
        if len(calls) == 3:
            batch["labels"].fill_(-100)  # what the pre-pass refuses, reaching the loop anyway
        return batch

    monkeypatch.setattr(Collator, "__call__", third_batch_unlabelled)
    run = tmp_path / "run"
    code, _, err = cli(
        "finetune", tiny_models("qwen2_vl"), "--data", shapes, "-o", run, *COMMON, "--steps", "4", "--save-every", "2"
    )
    assert code == 3, err
    assert error_line(err) == (
        "vlmsurgeon: error: step 3: a batch with no trained token (every label is -100), "
        "stopped before it counted (try: run `vlmsurgeon data check` on the data; report it "
        "if the check passes)"
    )
    records = [r for r in log_records(run) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] > 0 for r in records)
    assert not (run / "vlmsurgeon.json").exists() and not (run / ".lock").exists()


def test_freezing_every_component_exits_2_before_loading(tiny_models, shapes, tmp_path, cli, monkeypatch):
    no_weights(monkeypatch)
    run = tmp_path / "run"
    code, _, err = cli(
        "finetune", tiny_models("qwen2_vl"), "--data", shapes, "-o", run, "--freeze", "vision,merger,lm,head"
    )
    assert code == 2, err
    assert error_line(err) == (
        f"vlmsurgeon: error: preset 'freeze:vision,merger,lm,head' freezes every component of "
        f"'{tiny_models('qwen2_vl')}' (head, lm, merger, vision): nothing would train (try: leave at least "
        "one component to train, e.g. --freeze vision)"
    )
    assert not run.exists()


def test_output_that_is_a_file_exits_2(tiny_models, shapes, tmp_path, cli):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code, _, err = cli("finetune", tiny_models("qwen2_vl"), "--data", shapes, "-o", target, *COMMON)
    assert code == 2
    assert error_line(err) == (
        f"vlmsurgeon: error: -o {target}: exists and is not a directory (try: choose another -o)"
    )
    assert target.read_text() == "mine"


def read_only(monkeypatch, folder: Path) -> None:
    """chmod 0555; as root (which writes anyway), os.mkdir / os.open under it fail as they would."""
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):

        def guard(real):
            def call(path, *args, **kwargs):
                if Path(os.fsdecode(path)).parent == folder:
                    raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
                return real(path, *args, **kwargs)

            return call

        monkeypatch.setattr(os, "mkdir", guard(os.mkdir))
        monkeypatch.setattr(os, "open", guard(os.open))


@pytest.mark.parametrize("inside", [True, False], ids=["new-run-in-read-only-folder", "read-only-run-folder"])
def test_read_only_output_exits_2_naming_the_folder(tiny_models, shapes, tmp_path, cli, monkeypatch, inside):
    folder = tmp_path / "ro"
    folder.mkdir()
    read_only(monkeypatch, folder)
    run = folder / "run" if inside else folder
    try:
        code, _, err = cli("finetune", tiny_models("qwen2_vl"), "--data", shapes, "-o", run, *COMMON)
    finally:
        folder.chmod(0o755)
    assert code == 2, err
    assert error_line(err) == (
        f"vlmsurgeon: error: -o {run}: cannot write in {folder} (Permission denied) "
        "(try: choose a directory you can write to with -o)"
    )
    assert list(folder.iterdir()) == []


def test_disk_full_while_saving_a_checkpoint_exits_3_and_leaves_nothing(
    tiny_models, shapes, tmp_path, cli, monkeypatch
):
    import torch

    save = torch.save

    def full(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4352 vs 4240")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    run = tmp_path / "run"
    code, _, err = cli(
        "finetune", tiny_models("qwen2_vl"), "--data", shapes, "-o", run, *COMMON, "--steps", "2", "--save-every", "1"
    )
    assert code == 3, err
    line = error_line(err)
    assert line.startswith(f"vlmsurgeon: error: disk full while saving checkpoint-1: no space left in {run} ("), line
    assert line.endswith("free now) (try: free space on that disk (or choose another -o), then run again)")
    assert not run.exists()  # failed before its first checkpoint: nothing left to block the retry


def test_disk_full_while_writing_outputs_exits_3(tiny_models, shapes, tmp_path, cli, monkeypatch):
    run = tmp_path / "run"

    def full(staging, target):
        raise OSError(errno.ENOSPC, "No space left on device", str(target / "adapter"))

    monkeypatch.setattr("vlmsurgeon.ship.provenance.replace_into", full)
    code, _, err = cli("finetune", tiny_models("qwen2_vl"), "--data", shapes, "-o", run, *COMMON, "--steps", "1")
    assert code == 3, err
    assert error_line(err).startswith(
        f"vlmsurgeon: error: disk full while writing the run's outputs: no space left in {run} ("
    )


def bad_data(shapes: Path) -> Path:
    path = shapes.parent / "with_bad_row.jsonl"
    row = {
        "messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "A dot."}],
        "images": ["img/missing.png"],
    }
    path.write_text(shapes.read_text() + json.dumps(row) + "\n")
    return path


def test_bad_rows_leave_only_their_report_and_do_not_block_the_retry(tiny_models, shapes, tmp_path, cli):
    from vlmsurgeon.train.loop import _check_run_dir

    run = tmp_path / "run"
    code, _, err = cli("finetune", tiny_models("qwen2_vl"), "--data", bad_data(shapes), "-o", run, *COMMON)
    assert code == 2
    assert "1 bad row(s) of 13" in error_line(err)
    assert sorted(p.name for p in run.iterdir()) == ["bad_rows.txt"]
    assert _check_run_dir(run, resume=False) is None  # the retry may use this -o


def test_a_failed_start_keeps_what_was_there_before(tiny_models, shapes, tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    code, _, err = cli("finetune", tiny_models("qwen2_vl"), "--data", shapes, "-o", run, *COMMON, "--resume")
    assert code == 2
    assert error_line(err).startswith(f"vlmsurgeon: error: --resume: no complete checkpoint in {run / 'checkpoints'}")
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
