"""merge and diff on missing, damaged or misplaced inputs: exit 2 and one stderr line naming what
is wrong (DESIGN §4), never the plain base exported or diffed as if it were the trained model;
exports staged beside -o, cleaned after a killed merge, published under the user's umask."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import stat
import struct
import tempfile
from pathlib import Path

import pytest

from vlmsurgeon.train.loop import finetune
from vlmsurgeon.train.runconfig import RunOptions

RESAVE = "(try: re-download or re-save the file)"


def train(model: Path, shapes: Path, out: Path, freeze: str) -> Path:
    finetune(
        RunOptions(
            model=str(model), data=str(shapes), output=str(out), freeze=freeze, steps=2, batch_size=2, seq_len=1024
        )
    )
    return out


@pytest.fixture(scope="module")
def trained_run(tiny_models, shapes, tmp_path_factory) -> Path:
    """QLoRA --freeze vision on tiny qwen2_vl: LoRA on the LM, the merger trained in full."""
    return train(tiny_models("qwen2_vl"), shapes, tmp_path_factory.mktemp("faults") / "run", "vision")


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A copy of the run that a test may damage (its base stays the shared tiny model)."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture
def base(tiny_models, tmp_path) -> Path:
    """A copy of the run's base that a test may damage (pass it as --base)."""
    return Path(shutil.copytree(tiny_models("qwen2_vl"), tmp_path / "base"))


def error_line(err: str) -> str:
    """The one line DESIGN §4 allows, without its prefix."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlmsurgeon: error: "), err
    return lines[0].removeprefix("vlmsurgeon: error: ")


def nothing_beside(out: Path) -> None:
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.merge-*"))


def rewrite_header(path: Path, change) -> None:
    """Edit a safetensors header in place (its data stays as it was)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    change(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + length :])


# --- 1. no silent wrong result -------------------------------------------------------------


def test_run_without_its_adapter_is_not_exported_as_the_base(run, tmp_path, cli):
    shutil.rmtree(run / "adapter")
    code, out, err = cli("merge", run, "-o", tmp_path / "out")
    assert code == 2 and out == ""
    assert error_line(err) == (
        f"run '{run}' lacks 'adapter', which its vlmsurgeon.json records "
        "(try: restore it from where the run was trained, or re-run finetune)"
    )
    nothing_beside(tmp_path / "out")


def test_adapter_folder_without_its_weights(run, tmp_path, cli):
    (run / "adapter" / "adapter_model.safetensors").unlink()
    code, _, err = cli("merge", run, "-o", tmp_path / "out")
    assert code == 2
    assert error_line(err).startswith(f"run '{run}' lacks 'adapter/adapter_model.safetensors', which")


def test_run_without_its_processor(run, tmp_path, cli):
    shutil.rmtree(run / "processor")  # the base's processor files may differ from the run's
    code, _, err = cli("merge", run, "-o", tmp_path / "out")
    assert code == 2
    assert error_line(err) == (
        f"run '{run}' lacks 'processor', which its vlmsurgeon.json records "
        "(try: restore it from where the run was trained)"
    )
    nothing_beside(tmp_path / "out")


def test_diff_with_a_run_missing_its_adapter_does_not_say_unchanged(run, tiny_models, cli):
    shutil.rmtree(run / "adapter")
    code, out, err = cli("diff", tiny_models("qwen2_vl"), run, "--json")
    assert code == 2 and out == ""
    assert error_line(err).startswith(f"run '{run}' lacks 'adapter', which its vlmsurgeon.json records")


def test_run_whose_adapter_holds_nothing(run, tiny_models, tmp_path, cli):
    from safetensors.torch import save_file

    save_file({}, str(run / "adapter" / "adapter_model.safetensors"))
    code, out, err = cli("diff", tiny_models("qwen2_vl"), run)
    assert code == 2 and out == ""
    recorded = json.loads((run / "vlmsurgeon.json").read_text())["trainable_params"]
    assert error_line(err) == (
        f"run '{run}' records {recorded} trainable parameters but holds no trained "
        "tensors (try: restore the run's adapter/ and trained_components.safetensors)"
    )
    code, out, err = cli("merge", run, "-o", tmp_path / "out")
    assert code == 2 and out == ""
    assert error_line(err) == (
        f"'{run}' holds no LoRA modules and no trained tensors: nothing to merge "
        "(try: point at a run or adapter that trained something)"
    )
    nothing_beside(tmp_path / "out")


def test_empty_adapter_is_nothing_to_merge(tiny_models, tmp_path, cli):
    from safetensors.torch import save_file

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(tiny_models("qwen2_vl")), "lora_alpha": 16})
    )
    save_file({}, str(adapter / "adapter_model.safetensors"))
    code, _, err = cli("merge", adapter, "-o", tmp_path / "out")
    assert code == 2 and error_line(err).startswith(f"'{adapter}' holds no LoRA modules and no trained tensors")


def test_only_a_component_the_run_did_not_train(run, tmp_path, cli):
    code, out, err = cli("merge", run, "-o", tmp_path / "out", "--only", "vision")
    assert code == 2 and out == ""
    assert error_line(err) == (
        "--only vision: nothing was trained there (the run changed lm, merger) (try: --only lm,merger)"
    )
    nothing_beside(tmp_path / "out")


def test_identical_sides_may_say_unchanged(tiny_models, cli):
    code, out, err = cli("diff", tiny_models("qwen2_vl"), tiny_models("qwen2_vl"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert all(
        c["changed"] == c["cast_only"] == 0 and c["unchanged"] == c["tensors"] > 0
        for c in result["components"].values()
    )
    assert result["casts"] == {}


def test_a_merged_export_is_not_merged_again(run, tmp_path, cli):
    code, _, err = cli("merge", run, "-o", tmp_path / "once")
    assert code == 0, err
    code, _, err = cli("merge", tmp_path / "once", "-o", tmp_path / "twice")
    assert code == 2
    assert error_line(err) == (
        f"'{tmp_path / 'once'}' is a merged export: its changes are already in its "
        "weights (try: merge the run directory or adapter it was made from)"
    )


# --- 2. corrupt inputs ---------------------------------------------------------------------

DAMAGE = {  # what is done to the file's bytes -> what the error says about it
    "short": (lambda raw: raw[:6], "truncated safetensors header (6 of 8 length bytes)"),
    "random": (lambda raw: random.Random(0).randbytes(len(raw)), "corrupt safetensors header"),
    "not-json": (lambda raw: raw[:8] + b"\x01" + raw[9:], "corrupt safetensors header (not JSON)"),
    "data-cut": (lambda raw: raw[:-64], "truncated safetensors file (header needs"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize(
    "target", ["adapter/adapter_model.safetensors", "trained_components.safetensors", "base/model.safetensors"]
)
def test_damaged_safetensors_is_named(run, base, tmp_path, cli, damage, target):
    path = tmp_path / target if target.startswith("base/") else run / target
    source = run / "adapter" / "adapter_model.safetensors"
    raw = (path if path.exists() else source).read_bytes()
    change, says = DAMAGE[damage]
    path.write_bytes(change(raw))
    code, out, err = cli("merge", run, "--base", base, "-o", tmp_path / "out")
    assert code == 2 and out == ""
    line = error_line(err)
    assert line.startswith(f"{path}: {says}") and line.endswith(RESAVE), line
    nothing_beside(tmp_path / "out")


def test_damaged_base_in_diff(base, tiny_models, cli):
    path = base / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-64])
    code, out, err = cli("diff", base, tiny_models("qwen2_vl"))
    assert code == 2 and out == ""
    assert error_line(err).startswith(f"{path}: truncated safetensors file (header needs")


@pytest.mark.parametrize("where", ["adapter", "base"])
def test_unknown_dtype_is_named(run, base, tmp_path, cli, where):
    path = run / "adapter" / "adapter_model.safetensors" if where == "adapter" else base / "model.safetensors"
    names = []

    def banana(header):
        names.append(next(k for k in header if k != "__metadata__"))
        header[names[0]]["dtype"] = "BANANA16"

    rewrite_header(path, banana)
    code, _, err = cli("merge", run, "--base", base, "-o", tmp_path / "out")
    assert code == 2
    assert error_line(err) == f"{path}: tensor '{names[0]}' has unknown dtype 'BANANA16' {RESAVE}"
    if where == "base":
        code, _, err = cli("diff", base, run)
        assert code == 2 and error_line(err).startswith(f"{path}: tensor '{names[0]}' has unknown dtype")


@pytest.mark.parametrize("where", ["adapter", "base"])
def test_header_offsets_that_do_not_fit_the_shape(run, base, tmp_path, cli, where):
    path = run / "adapter" / "adapter_model.safetensors" if where == "adapter" else base / "model.safetensors"
    rewrite_header(path, lambda h: h[next(k for k in h if k != "__metadata__")].update(shape=[1]))
    code, _, err = cli("merge", run, "--base", base, "-o", tmp_path / "out")
    assert code == 2
    line = error_line(err)
    assert line.startswith(f"{path}: corrupt safetensors ") and line.endswith(RESAVE), line


@pytest.mark.parametrize("name", ["vlmsurgeon.json", "adapter/adapter_config.json"])
@pytest.mark.parametrize("command", ["merge", "diff"])
def test_corrupt_json_names_file_line_and_column(run, tiny_models, tmp_path, cli, name, command):
    (run / name).write_text('{\n  "base": ,\n}\n')
    args = ("merge", run, "-o", tmp_path / "out") if command == "merge" else ("diff", tiny_models("qwen2_vl"), run)
    code, out, err = cli(*args)
    assert code == 2 and out == ""
    assert error_line(err).startswith(f"{run / name}: invalid JSON at line 2 column 11")


def test_base_without_weights(run, base, tmp_path, cli):
    for weights in base.glob("*.safetensors"):
        weights.unlink()
    code, _, err = cli("merge", run, "--base", base, "-o", tmp_path / "out")
    assert code == 2
    assert error_line(err) == (
        f"checkpoint '{base}' has no *.safetensors weights "
        "(try: pass --base DIR, a checkpoint saved with save_pretrained)"
    )
    code, _, err = cli("diff", base, run)
    assert code == 2
    assert error_line(err) == (
        f"checkpoint '{base}' has no *.safetensors weights (try: use checkpoints saved "
        "with save_pretrained; a run's base is base.reference in its vlmsurgeon.json)"
    )


# --- 3. -o problems ------------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_output_that_is_a_file_is_never_replaced(run, tmp_path, cli, force):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"keep me")
    code, _, err = cli("merge", run, "-o", target, *(["--force"] if force else []))
    assert code == 2
    assert error_line(err) == (
        f"output '{target}' is a file, not a folder (try: choose a folder path for -o; --force replaces only a folder)"
    )
    assert target.read_bytes() == b"keep me" and not list(tmp_path.glob(".model.safetensors.merge-*"))


def test_output_that_holds_the_input_is_never_replaced(run, tmp_path, cli):
    for target in (run, tmp_path):
        code, _, err = cli("merge", run, "-o", target, "--force")
        assert code == 2
        assert error_line(err) == f"output '{target}' holds the merge's input '{run}' (try: choose another -o)"
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_output_in_a_read_only_folder(run, tmp_path, cli, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores the mode: fail where the folder would refuse
        make = tempfile.mkdtemp

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == folder:
                raise PermissionError(errno.EACCES, "Permission denied", str(folder))
            return make(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    try:
        code, out, err = cli("merge", run, "-o", folder / "out")
    finally:
        folder.chmod(0o755)
    assert code == 2 and out == ""
    assert error_line(err) == (
        f"cannot write the output in '{folder}' (Permission denied) "
        "(try: choose another -o, or make that folder writable)"
    )
    assert list(folder.iterdir()) == []


def test_leftovers_of_a_killed_merge_are_removed_by_the_next(run, tmp_path, cli):
    out = tmp_path / "out"
    leftovers = [tmp_path / ".out.merge-k1ll3d", tmp_path / ".out.merge-k1ll3d-old"]
    for folder in leftovers:
        folder.mkdir()
        (folder / ".part-00001.safetensors").write_bytes(b"half a shard")
    other = tmp_path / ".other.merge-abc123"  # another output's staging is not ours to remove
    other.mkdir()
    code, _, err = cli("merge", run, "-o", out)
    assert code == 0, err
    assert out.is_dir() and not any(p.exists() for p in leftovers) and other.is_dir()


# --- 4. modes under the umask --------------------------------------------------------------


def modes(root: Path) -> set[tuple[str, int]]:
    return {("dir" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("mask, folder, file", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)], ids=["022", "077"])
def test_exports_honour_the_umask(run, tmp_path, cli, mask, folder, file):
    old = os.umask(mask)
    try:
        results = [
            cli("merge", run, "-o", tmp_path / "out")[0],
            cli("merge", run, "-o", tmp_path / "lm", "--adapter-only", "--only", "lm")[0],
        ]
        assert modes(tmp_path / "out") == modes(tmp_path / "lm") == {("dir", folder), ("file", file)}
        results.append(cli("merge", run, "-o", tmp_path / "out", "--force")[0])  # replacing keeps them
    finally:
        os.umask(old)
    assert results == [0, 0, 0]
    assert modes(tmp_path / "out") == {("dir", folder), ("file", file)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm", "out", "run"]  # no .out.merge-old


# --- 5. hints name only options the command has --------------------------------------------


def test_hints_name_only_the_commands_own_options(run, base, tiny_models, tmp_path, cli):
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "model_type": "banana_vl"}))
    for args in (("merge", run, "--base", base, "-o", tmp_path / "out"), ("diff", base, run)):
        code, _, err = cli(*args)
        line = error_line(err)
        assert code == 2 and "banana_vl" in line and "--trust-remote-code" not in line, line
    record = json.loads((run / "vlmsurgeon.json").read_text())
    record["base"]["reference"] = str(tmp_path / "gone")
    (run / "vlmsurgeon.json").write_text(json.dumps(record))
    code, _, err = cli("merge", run, "-o", tmp_path / "out")
    assert code == 2 and error_line(err) == (
        f"base model '{tmp_path / 'gone'}' is not a local directory "
        "(try: pass --base DIR, a checkpoint saved with save_pretrained)"
    )
    code, _, err = cli("diff", tiny_models("qwen2_vl"), run)
    assert code == 2 and error_line(err) == (
        f"base model '{tmp_path / 'gone'}' is not a local directory (try: use checkpoints saved with "
        "save_pretrained; a run's base is base.reference in its vlmsurgeon.json)"
    )


# --- verify on a run without a peft adapter ------------------------------------------------


def test_verify_a_run_trained_without_lora(tiny_models, shapes, tmp_path, cli):
    run = train(tiny_models("qwen2_vl"), shapes, tmp_path / "run", "vision,lm")  # merger in full only
    assert not (run / "adapter").exists() and (run / "trained_components.safetensors").is_file()
    code, out, err = cli("merge", run, "-o", tmp_path / "out", "--dtype", "fp32", "--verify")
    assert code == 0, err
    assert "merged 0 LoRA modules and 6 trained tensors" in out and "verify: " in out
