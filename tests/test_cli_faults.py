"""The command line under faults (issue 13): exit codes that debugging does not change, usage
errors as one line, configs refused before building, paths told from hub ids, hints that name
only what the running command has, strict YAML, and `tiny` outputs that a kill never leaves half
written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.test_hub_cache import hub_cache, populate  # noqa: F401 - fixture
from vlmsurgeon.errors import BadInput


def one_line(err: str, code: int, expected: int) -> str:
    lines = err.strip().splitlines()
    assert code == expected, err
    assert len(lines) == 1 and lines[0].startswith("vlmsurgeon: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---- 1. VLMSURGEON_DEBUG changes what is printed, never the exit code --------------------------


def test_debug_keeps_the_exit_code_of_bad_input(tmp_path, cli, monkeypatch):
    (tmp_path / "config.json").write_text("{bad")
    monkeypatch.setenv("VLMSURGEON_DEBUG", "1")
    code, _, err = cli("inspect", tmp_path)
    assert code == 2
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("vlmsurgeon: error: ")


def test_debug_keeps_the_exit_code_of_a_runtime_failure(tmp_path, cli, monkeypatch):
    from vlmsurgeon.model import inspection

    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke\nsecond line")

    monkeypatch.setattr(inspection, "inspect_model", broken)
    code, _, err = cli("inspect", tmp_path)
    assert "RuntimeError: something inside broke" in one_line(err, code, 3)
    monkeypatch.setenv("VLMSURGEON_DEBUG", "1")
    code, _, err = cli("inspect", tmp_path)
    assert code == 3 and "Traceback" in err


def test_debug_keeps_the_exit_code_of_a_usage_error(cli, monkeypatch):
    monkeypatch.setenv("VLMSURGEON_DEBUG", "1")
    code, _, err = cli("inspect", "--colour")
    assert code == 2 and err.strip().splitlines()[-1].startswith("vlmsurgeon: error: inspect: no such option")


def test_debug_in_a_fresh_process(tmp_path):
    (tmp_path / "config.json").write_bytes(b"\xff\xfe\x00")
    env = {**os.environ, "VLMSURGEON_DEBUG": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "vlmsurgeon.cli", "inspect", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert "not a JSON text file" in proc.stderr.strip().splitlines()[-1]


# ---- 2. usage errors: one line, exit 2; help unchanged --------------------------------------------


@pytest.mark.parametrize(
    "args,expected",
    [
        (["inspect", "x", "--colour"], "inspect: no such option: --colour (try: vlmsurgeon inspect --help)"),
        (["inspect"], "inspect: missing argument 'model' (try: vlmsurgeon inspect --help)"),
        (["frobnicate"], "no such command 'frobnicate' (try: vlmsurgeon --help)"),
        (
            ["budget", "check", "b.yaml", "--junit"],
            "budget check: option '--junit' requires an argument (try: vlmsurgeon budget check --help)",
        ),
        (["inspect", "x", "--depth", "deep"], "inspect: invalid value for '--depth' / '-d': "),
    ],
)
def test_usage_errors_are_one_line(args, expected, cli):
    code, out, err = cli(*args)
    assert expected in one_line(err, code, 2) and out == ""


def test_help_and_version_still_work(cli):
    code, out, err = cli("--help")
    assert code == 0 and "Usage: vlmsurgeon" in out and "inspect" in out and err == ""
    code, out, _ = cli("budget", "check", "--help")
    assert code == 0 and "BUDGET" in out
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("vlmsurgeon ")
    code, out, _ = cli()  # bare: the help, and click's exit code for it
    assert code == 2 and "Usage: vlmsurgeon" in out


# ---- 3. configs refused before anything is built ------------------------------------------------


def test_config_of_random_bytes(tmp_path, cli):
    (tmp_path / "config.json").write_bytes(bytes(range(255, 0, -1)))
    code, _, err = cli("inspect", tmp_path)
    assert "config.json: not a JSON text file (byte 0xff at offset 0 is not UTF-8)" in one_line(err, code, 2)


def test_absurd_layer_count_is_refused_at_once(tmp_path, cli):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llava", "text_config": {"model_type": "llama", "num_hidden_layers": 10**7}})
    )
    start = time.monotonic()
    code, _, err = cli("inspect", tmp_path)
    line = one_line(err, code, 2)
    assert time.monotonic() - start < 20  # import time included; building would take hours
    assert "text_config.num_hidden_layers = 10,000,000" in line and "limit 2,048" in line


def test_layer_bound_leaves_real_models_alone():
    from vlmsurgeon.model.sources import check_scale

    config = json.loads((ROOT / "examples" / "qwen3-vl-235b-a22b" / "config.json").read_text())
    check_scale(config, "qwen3-vl")
    check_scale({"vision_config": {"depth": 32}, "max_depth": 10.0, "use_layers": True}, "x")
    with pytest.raises(BadInput, match="vision_config.depth = 5,000"):
        check_scale({"vision_config": {"depth": 5000}}, "x")


# ---- 4. paths and hub ids --------------------------------------------------------------------------


def test_missing_path_under_an_existing_folder_is_a_path(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    code, _, err = cli("inspect", "models/qwen")
    line = one_line(err, code, 2)
    assert "no such local directory ('models' exists, 'qwen' in it does not)" in line


def test_hub_id_offline_hint_does_not_ask_for_offline(cli):
    code, _, err = cli("inspect", "vlmsurgeon-tests/absent")
    line = one_line(err, code, 2)
    assert "HF_HUB_OFFLINE is set" in line and "hf download vlmsurgeon-tests/absent" in line
    assert "set HF_HUB_OFFLINE" not in line


def test_hub_id_still_resolves_through_the_cache_beside_a_same_named_folder(
    tmp_path,
    hub_cache,  # noqa: F811 - the fixture imported above
    cli,  # noqa: F811
    monkeypatch,
):
    from tests.conftest import save_config

    populate(hub_cache, "llava-hf/tiny", save_config("llava", tmp_path / "llava"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llava-hf").mkdir()  # a folder named like the org: the cached id still wins
    code, out, err = cli("inspect", "llava-hf/tiny", "--json")
    assert code == 0, err
    assert json.loads(out)["model_type"] == "llava"


@pytest.mark.parametrize(
    "text,kind",
    [
        ("org/name", "hub"),
        ("./org/name", None),
        ("org/name/x", None),
        ("org/config.json", None),
        ("~/org", None),
        ("/org/name", None),
    ],
)
def test_reference_shapes(text, kind):
    from vlmsurgeon.model.sources import resolve

    if kind is None:
        with pytest.raises(BadInput, match="no such file or directory"):
            resolve(text)
    else:
        assert resolve(text).kind == kind


# ---- 5. hints name only what the running command has --------------------------------------------


def test_remote_code_hint_follows_the_command(tmp_path, cli):
    folder = tmp_path / "phi"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "phi3_v", "auto_map": {"AutoConfig": "c.C"}}')
    code, _, err = cli("plan", folder, "--freeze", "vision")
    assert "(try: pass --trust-remote-code if you trust the repo's code)" in one_line(err, code, 2)
    budget = tmp_path / "budget.yaml"
    budget.write_text(f"models:\n  - model: {folder}\n    freeze: vision\n    limits:\n      total: 1B\n")
    code, _, err = cli("budget", "check", budget)
    line = one_line(err, code, 2)
    assert "trust_remote_code: true" in line and "--trust-remote-code" not in line


def test_hint_for_a_command_without_the_setting():
    from vlmsurgeon.errors import how_to_set, offer_settings, withdraw_settings
    from vlmsurgeon.model.sources import remote_code_hint

    assert how_to_set("trust_remote_code", "--trust-remote-code") == "pass --trust-remote-code"  # library use
    token = offer_settings({"dtype": "pass --dtype"})  # what `merge` offers: no remote code
    try:
        assert how_to_set("trust_remote_code", "--trust-remote-code") is None
        assert "--trust-remote-code" not in remote_code_hint()
        assert remote_code_hint("pass a local directory") == "pass a local directory"
    finally:
        withdraw_settings(token)


def test_each_command_offers_its_own_options():
    import typer

    from vlmsurgeon.cli.app import _offer_settings, app
    from vlmsurgeon.errors import how_to_set

    seen = {}
    command = typer.main.get_command(app)
    for name in ("inspect", "merge"):
        sub = command.commands[name]
        sub.callback = lambda *a, _name=name, **k: seen.setdefault(
            _name, how_to_set("trust_remote_code", "--trust-remote-code")
        )
    _offer_settings(command)
    command.commands["inspect"].callback(model="x")
    command.commands["merge"].callback(source="x")
    assert seen == {"inspect": "pass --trust-remote-code", "merge": None}


# ---- 6. YAML: a key given twice is an error ---------------------------------------------------


def test_duplicate_keys_everywhere_yaml_is_read(tmp_path):
    from vlmsurgeon.recipe.preset import load_yaml_text, read_yaml

    path = tmp_path / "x.yaml"
    path.write_text("a: 1\nb:\n  c: 2\n  c: 3\n")
    with pytest.raises(BadInput, match=r"x.yaml: line 4: duplicate key 'c' \(first at line 3"):
        read_yaml(path)
    # anchors and merge keys are not duplicates; a later key overrides a merged one
    assert load_yaml_text("a: &x {b: 1}\nc:\n  <<: *x\n  b: 2\n") == {"a": {"b": 1}, "c": {"b": 2}}
    assert load_yaml_text("- {a: 1}\n- {a: 2}\n") == [{"a": 1}, {"a": 2}]


def test_builtin_presets_have_no_duplicate_keys():
    from vlmsurgeon.recipe.preset import builtin_names, load_preset

    for name in builtin_names():
        load_preset(name)


# ---- 7. tiny: leftovers, modes, kills -------------------------------------------------------------


def test_tiny_removes_what_killed_runs_left(tmp_path, cli):
    out = tmp_path / "t"
    dead = tmp_path / ".t.tiny-999999999-abc"  # no such pid
    legacy = tmp_path / ".t.k3j_9x0a"  # an older version's mkdtemp folder, half written
    mine = tmp_path / ".t.notes123"  # shaped like an old staging folder, but holds something else
    for folder in (dead, legacy, mine):
        folder.mkdir()
    (dead / "config.json").write_text("{}")
    (legacy / "model.safetensors").write_bytes(b"x")
    (mine / "notes.md").write_text("keep")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = tmp_path / f".t.tiny-{alive.pid}-xyz"  # a build still in progress
        running.mkdir()
        code, out_text, err = cli("tiny", "qwen2_vl", "-o", out)
        assert code == 0, err
        assert not dead.exists() and not legacy.exists()
        assert mine.exists() and running.exists()
    finally:
        alive.kill()
        alive.wait()
    assert (out / "model.safetensors").is_file() and err == ""


@pytest.mark.parametrize("umask,dirs,files", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_tiny_output_honours_the_umask(tmp_path, umask, dirs, files):
    from vlmsurgeon.tiny.build import build_tiny

    old = os.umask(umask)
    try:
        out = build_tiny("qwen2_vl", tmp_path / "t")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == dirs
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {p.name: files for p in out.iterdir()}


def test_tiny_killed_leaves_no_partial_output_and_the_rerun_succeeds(tmp_path, cli):
    out = tmp_path / "t"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlmsurgeon.cli", "tiny", "qwen2_vl", "-o", str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    try:  # kill it once it has started writing: its staging folder exists, the model is being built
        while time.monotonic() < deadline and proc.poll() is None:
            if any(tmp_path.glob(".t.tiny-*")):
                break
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    if out.exists():  # it finished first: then it is whole
        assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
        pytest.skip("tiny finished before it could be killed")
    assert list(tmp_path.glob(".t.tiny-*")), "the kill should have left its staging folder"
    code, _, err = cli("tiny", "qwen2_vl", "-o", out)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    assert (out / "config.json").is_file()


# ---- 8. images the processor would misread or refuse -------------------------------------------


def test_degenerate_images_are_bad_rows_before_training(tmp_path, tiny_models, cli, monkeypatch):
    from PIL import Image

    from vlmsurgeon.train import loop as train

    monkeypatch.setattr(train, "load_for_training", lambda *a, **k: pytest.fail("loaded weights"))
    (tmp_path / "img").mkdir()
    rows = []
    for name, size in (("ok.png", (32, 32)), ("dot.png", (1, 1)), ("strip.png", (4000, 3))):
        Image.new("RGB", size, (200, 30, 30)).save(tmp_path / "img" / name)
        rows.append(
            {
                "messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "Red."}],
                "images": [f"img/{name}"],
            }
        )
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        data,
        "-o",
        tmp_path / "run",
        "--freeze",
        "vision",
        "--steps",
        "1",
    )
    line = one_line(err, code, 2)
    assert "2 bad row(s) of 3, first: line 2: image of 1×1 pixels" in line
    report = (tmp_path / "run" / "bad_rows.txt").read_text()
    assert "line 3: image of 4000×3 pixels: aspect ratio over 200" in report
    code, out, err = cli("data", "check", data, "--model", tiny_models("qwen2_vl"), "--json")
    assert [b.split(":")[0] for b in json.loads(out)["bad_rows"]] == ["line 2", "line 3"]
