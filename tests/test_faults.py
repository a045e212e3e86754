"""The fault suite: every command driven through bad inputs and faults, one table. Each case sets
up what it needs, runs the real CLI in-process, and asserts the contract of DESIGN §4: the exit
code (2 bad input, 1 a check failed, 3 runtime failure), exactly one stderr line
"vlmsurgeon: error: what (try: fix)" and never a traceback. Tiny models come from the session
fixtures; one 1-step run is trained for the cases that need a run (merge, resume, lock)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

RANDOM = bytes(range(256))[::-1] * 4  # not UTF-8, not JSON, not a safetensors header


@dataclass
class World:
    """What a case may use: a scratch folder and read-only shared fixtures (copy before changing)."""

    tmp: Path
    qwen: Path  # tiny qwen2_vl model directory
    shapes: Path  # shapes train.jsonl (12 image rows)
    trained: Callable[[], Path]  # trains (once per module) the run that `run` names
    held: int | None = None  # a lock file descriptor a case holds while the command runs

    @property
    def run(self) -> Path:
        """A finished 1-step finetune of `qwen` (adapter, checkpoint-1, vlmsurgeon.json)."""
        return self.trained()

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def folder(self, name: str) -> Path:
        (self.tmp / name).mkdir(parents=True)
        return self.tmp / name

    def config_dir(self, name: str, content: str | bytes) -> Path:
        self.write(f"{name}/config.json", content)
        return self.tmp / name

    def copy(self, source: Path, name: str) -> Path:
        target = self.tmp / name
        shutil.copytree(source, target)
        return target

    def rows(self, name: str, rows: list[dict]) -> Path:
        """A JSONL file beside a copy of the shapes images (relative paths resolve)."""
        if not (self.tmp / "img").exists():
            shutil.copytree(self.shapes.parent / "img", self.tmp / "img")
        return self.write(name, "".join(json.dumps(r) + "\n" for r in rows))

    def row(self, image: str = "img/red_circle.png") -> dict:
        return {
            "messages": [
                {"role": "user", "content": "<image>What is it?"},
                {"role": "assistant", "content": "A shape."},
            ],
            "images": [image],
        }

    def budget(self, body: str) -> Path:
        return self.write("budget.yaml", body)


def safetensors(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def image(world: World, name: str, size: tuple[int, int]) -> str:
    from PIL import Image

    world.rows("unused.jsonl", [])  # copies the images folder
    Image.new("RGB", size, (200, 30, 30)).save(world.tmp / "img" / name)
    return f"img/{name}"


def readonly_dir(world: World) -> Path:
    """A directory this process cannot write in (chmod 555; as root, chmod does not stop us: /sys)."""
    folder = world.tmp / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").mkdir()
    except OSError:
        return folder
    (folder / "probe").rmdir()
    folder.chmod(0o755)
    try:
        (Path("/sys") / "vlmsurgeon-probe").mkdir()
    except OSError:
        return Path("/sys")
    pytest.skip("no read-only directory available")


def config_only(world: World) -> Path:
    """The tiny model's config.json alone: no processor files, no weights."""
    return world.config_dir("config-only", (world.qwen / "config.json").read_text())


def remote_code_config(world: World) -> Path:
    return world.config_dir("phi", '{"model_type": "phi3_v", "auto_map": {"AutoConfig": "c.C"}}')


CASES = []
COMMANDS: dict[str, str] = {}  # case id -> the command it drives
_section = ""


def section(command: str) -> None:
    global _section
    _section = command


def case(
    code: int, *needles: str, hint: bool = True, prefix: str = "vlmsurgeon: error: ", absent: tuple[str, ...] = ()
) -> Callable:
    """Register a case: a function World -> argv, the exit code, and text the line must hold
    (and must not: `absent`)."""

    def register(fn: Callable[[World], list]) -> Callable:
        CASES.append(pytest.param(fn, code, needles, hint, prefix, absent, id=fn.__name__))
        COMMANDS[fn.__name__] = _section
        return fn

    return register


# ---- usage errors (click, one line instead of a panel) -----------------------------------------

section("usage")


@case(2, "no such command 'frobnicate'", "vlmsurgeon --help")
def unknown_command(w):
    return ["frobnicate"]


@case(2, "inspect: no such option: --colour", "vlmsurgeon inspect --help")
def unknown_option(w):
    return ["inspect", w.qwen, "--colour"]


@case(2, "inspect: missing argument", "vlmsurgeon inspect --help")
def missing_argument(w):
    return ["inspect"]


@case(2, "'--depth'", "valid integer")
def depth_not_a_number(w):
    return ["inspect", w.qwen, "--depth", "deep"]


@case(2, "'--depth'", "greater than or equal to 0")
def depth_negative(w):
    return ["inspect", w.qwen, "--depth", "-1"]


@case(2, "budget: no such command 'verify'", "vlmsurgeon budget --help")
def unknown_subcommand(w):
    return ["budget", "verify"]


@case(2, "data check: missing option '--model'", "vlmsurgeon data check --help")
def data_check_without_model(w):
    return ["data", "check", w.shapes]


@case(2, "finetune", "'--steps'")
def steps_not_a_number(w):
    return ["finetune", w.qwen, "--steps", "many"]


@case(2, "merge: missing option '--out'")
def merge_without_out(w):
    return ["merge", w.run]


@case(2, "tiny: option '-o' requires an argument")
def tiny_o_without_value(w):
    return ["tiny", "qwen2_vl", "-o"]


# ---- inspect: model references and configs ---------------------------------------------------

section("inspect")


@case(2, "config.json", "not a JSON text file", "0x")
def config_random_bytes(w):
    return ["inspect", w.config_dir("rnd", RANDOM)]


@case(2, "config.json", "invalid JSON at line 2 column 1")
def config_not_json(w):
    return ["inspect", w.config_dir("nj", '{"model_type": "llava",\n}')]


@case(2, "JSON nested too deeply")
def config_nested_too_deep(w):
    return ["inspect", w.config_dir("deep", "[" * 100_000 + "]" * 100_000)]


@case(2, "expected a JSON object, found list")
def config_json_array(w):
    return ["inspect", w.config_dir("arr", "[1, 2]")]


@case(2, "no model_type and there are no weights")
def config_without_model_type(w):
    return ["inspect", w.config_dir("nomt", '{"hidden_size": 8}')]


@case(2, "unknown model_type 'frobnicator_vl'")
def unknown_model_type(w):
    return ["inspect", w.config_dir("unk", '{"model_type": "frobnicator_vl"}')]


@case(2, "invalid llava config")
def invalid_config_value(w):
    return [
        "inspect",
        w.config_dir("badval", '{"model_type": "llava", "text_config": {"model_type": "llama", "hidden_size": -3}}'),
    ]


@case(2, "num_hidden_layers = 10,000,000", "limit 2,048")
def absurd_layer_count(w):
    config = json.loads((w.qwen / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 10**7
    config["text_config"].pop("layer_types", None)
    return ["inspect", w.config_dir("huge", json.dumps(config))]


@case(2, "needs code from the model repo", "--trust-remote-code")
def remote_code_without_trust(w):
    return ["inspect", remote_code_config(w)]


@case(2, "no config.json and no *.safetensors")
def empty_directory(w):
    return ["inspect", w.folder("empty")]


@case(2, "no such file or directory", "exists", "'nothing' in it does not")
def missing_path_under_existing_folder(w):
    (w.tmp / "models").mkdir()
    return ["inspect", w.tmp / "models" / "nothing"]


@case(2, "no such file or directory")
def missing_relative_path(w):
    return ["inspect", "./no/such/model"]


@case(2, "no such local directory", "not in the local cache", "hf download", absent=("set HF_HUB_OFFLINE",))
def hub_id_offline_not_cached(w):
    return ["inspect", "vlmsurgeon-tests/no-such-model"]


@case(2, "not a valid hub id")
def invalid_hub_id(w):
    return ["inspect", "org/name..bad"]


@case(2, "is a file")
def path_through_a_file(w):
    return ["inspect", w.shapes / "model"]


@case(2, "truncated safetensors header")
def truncated_safetensors(w):
    folder = remote_code_config(w)
    (folder / "model.safetensors").write_bytes(b"\x10\x00")
    return ["inspect", folder]


@case(2, "corrupt safetensors header")
def random_safetensors(w):
    folder = remote_code_config(w)
    (folder / "model.safetensors").write_bytes(RANDOM)
    return ["inspect", folder]


@case(2, "unknown dtype")
def unknown_header_dtype(w):
    folder = remote_code_config(w)
    (folder / "model.safetensors").write_bytes(
        safetensors({"model.embed_tokens.weight": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
    )
    return ["inspect", folder]


# ---- presets and YAML files ------------------------------------------------------------------

section("presets")


@case(2, "preset 'nope': neither a built-in nor a file", "lm-lora")
def unknown_preset(w):
    return ["presets", "nope"]


@case(2, "dup.yaml: line 3: duplicate key 'name'", "first at line 1")
def preset_duplicate_key(w):
    return ["presets", w.write("dup.yaml", "name: a\ncomponents: {}\nname: b\n")]


@case(2, "line 5: duplicate key 'lm'")
def preset_nested_duplicate_key(w):
    return [
        "presets",
        w.write("dup.yaml", "name: a\ncomponents:\n  lm: {mode: lora}\n  vision: {mode: full}\n  lm: {mode: full}\n"),
    ]


@case(2, "invalid YAML at line 2")
def preset_bad_syntax(w):
    return ["presets", w.write("bad.yaml", "name: [a\n")]


@case(2, "not a UTF-8 text file")
def preset_not_utf8(w):
    return ["presets", w.write("bin.yaml", RANDOM)]


@case(2, "components.lm.mode")
def preset_unknown_mode(w):
    return ["presets", w.write("m.yaml", "name: a\ncomponents:\n  lm: {mode: half}\n")]


@case(2, "a 4-bit component cannot train in full")
def preset_full_and_4bit(w):
    return ["presets", w.write("q.yaml", "name: a\ncomponents:\n  lm: {mode: full}\n")]


@case(2, "a preset is a YAML mapping")
def preset_not_a_mapping(w):
    return ["presets", w.write("l.yaml", "- a\n- b\n")]


# ---- plan ------------------------------------------------------------------------------------

section("plan")


@case(2, "exactly one of --preset or --freeze")
def plan_without_preset(w):
    return ["plan", w.qwen]


@case(2, "exactly one of --preset or --freeze")
def plan_with_both(w):
    return ["plan", w.qwen, "--preset", "lm-lora", "--freeze", "vision"]


@case(2, "--freeze: unknown component(s) eyes")
def plan_unknown_component(w):
    return ["plan", w.qwen, "--freeze", "eyes"]


@case(2, "--config", "no such file")
def plan_missing_config(w):
    return ["plan", "--config", w.tmp / "run.yaml"]


@case(2, "run.yaml: line 2: duplicate key 'model'")
def plan_config_duplicate_key(w):
    return ["plan", "--config", w.write("run.yaml", f"model: {w.qwen}\nmodel: {w.qwen}\nfreeze: vision\n")]


@case(2, "no model given", "set `model:`")
def plan_config_without_model(w):
    return ["plan", "--config", w.write("run.yaml", "freeze: vision\n")]


@case(2, "needs code from the model repo", "pass --trust-remote-code")
def plan_remote_code(w):
    return ["plan", remote_code_config(w), "--freeze", "vision"]


@case(2, "not a JSON text file")
def plan_config_random_bytes(w):
    return ["plan", w.config_dir("rnd", RANDOM), "--freeze", "vision"]


@case(2, "limit 2,048")
def plan_absurd_layers(w):
    return ["plan", w.config_dir("deep", '{"model_type": "llama", "num_hidden_layers": 500000}'), "--freeze", "vision"]


# ---- budget check ----------------------------------------------------------------------------

section("budget check")


@case(2, "no such file")
def budget_missing_file(w):
    return ["budget", "check", w.tmp / "budget.yaml"]


@case(2, "budget.yaml: line 3: duplicate key 'models'")
def budget_duplicate_key(w):
    return ["budget", "check", w.budget("models: []\n\nmodels: []\n")]


@case(2, "not a UTF-8 text file")
def budget_not_utf8(w):
    return ["budget", "check", w.budget(RANDOM)]


@case(2, "lots")
def budget_bad_unit(w):
    return [
        "budget",
        "check",
        w.budget(f"models:\n  - model: {w.qwen}\n    preset: lm-lora\n    limits:\n      total: lots\n"),
    ]


@case(1, "budget violated", "trainable", prefix="vlmsurgeon: budget violated: ", hint=False)
def budget_violated(w):
    return [
        "budget",
        "check",
        w.budget(f"models:\n  - model: {w.qwen}\n    preset: lm-lora\n    limits:\n      trainable: 1\n"),
    ]


@case(2, "min", "max")
def budget_impossible_limits(w):
    return [
        "budget",
        "check",
        w.budget(
            f"models:\n  - model: {w.qwen}\n    preset: lm-lora\n    limits:\n      trainable: {{min: 10M, max: 1M}}\n"
        ),
    ]


@case(2, "needs code from the model repo", "trust_remote_code: true", absent=("--trust-remote-code",))
def budget_remote_code_names_the_key(w):
    return [
        "budget",
        "check",
        w.budget(f"models:\n  - model: {remote_code_config(w)}\n    freeze: vision\n    limits:\n      total: 1B\n"),
    ]


@case(2, "--junit")
def budget_junit_into_a_file(w):
    body = f"models:\n  - model: {w.qwen}\n    preset: lm-lora\n    limits:\n      total: 1B\n"
    return ["budget", "check", w.budget(body), "--junit", w.write("afile", "x") / "report.xml"]


# ---- finetune (all refused before any weight is loaded) --------------------------------------

section("finetune")


@case(2, "no model given")
def finetune_without_model(w):
    return ["finetune", "--data", w.shapes, "-o", w.tmp / "run", "--freeze", "vision"]


@case(2, "no data given", "--data")
def finetune_without_data(w):
    return ["finetune", w.qwen, "-o", w.tmp / "run", "--freeze", "vision"]


@case(2, "no output given", "-o")
def finetune_without_output(w):
    return ["finetune", w.qwen, "--data", w.shapes, "--freeze", "vision"]


@case(2, "not a directory")
def finetune_out_is_a_file(w):
    return ["finetune", w.qwen, "--data", w.shapes, "-o", w.write("afile", "x"), "--freeze", "vision", "--steps", "1"]


@case(2, "cannot write")
def finetune_out_read_only(w):
    return ["finetune", w.qwen, "--data", w.shapes, "-o", readonly_dir(w) / "run", "--freeze", "vision", "--steps", "1"]


@case(2, "is not empty", "--resume")
def finetune_out_not_empty(w):
    w.write("run/notes.txt", "mine")
    return ["finetune", w.qwen, "--data", w.shapes, "-o", w.tmp / "run", "--freeze", "vision", "--steps", "1"]


@case(2, "--resume: no complete checkpoint")
def resume_without_checkpoint(w):
    return ["finetune", w.qwen, "--data", w.shapes, "-o", w.tmp / "run", "--freeze", "vision", "--resume"]


@case(2, "in use by pid")
def two_finetunes_on_one_run(w):
    run = w.tmp / "run"
    run.mkdir()
    fd = os.open(run / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until the case ends (fd closed below)
    os.write(fd, json.dumps({"pid": os.getpid()}).encode())
    w.held = fd
    return ["finetune", w.qwen, "--data", w.shapes, "-o", run, "--freeze", "vision", "--steps", "1"]


@case(2, "--resume", "lr")
def resume_with_changed_inputs(w):
    run = w.copy(w.run, "run")
    return [
        "finetune",
        w.qwen,
        "--data",
        w.shapes,
        "-o",
        run,
        "--freeze",
        "vision",
        "--resume",
        "--lr",
        "0.5",
        "--steps",
        "2",
        "--seq-len",
        "256",
        "--save-every",
        "1",
    ]


@case(2, "checkpoint-1")
def resume_from_a_corrupt_checkpoint(w):
    run = w.copy(w.run, "run")
    (run / "checkpoints" / "checkpoint-1" / "adapter_model.safetensors").write_bytes(RANDOM)
    return [
        "finetune",
        w.qwen,
        "--data",
        w.shapes,
        "-o",
        run,
        "--freeze",
        "vision",
        "--resume",
        "--steps",
        "2",
        "--seq-len",
        "256",
        "--save-every",
        "1",
    ]


@case(2, "checkpoint-1", "trainer_state.json")
def resume_from_a_checkpoint_with_corrupt_state(w):
    run = w.copy(w.run, "run")
    (run / "checkpoints" / "checkpoint-1" / "trainer_state.json").write_text("{")
    return [
        "finetune",
        w.qwen,
        "--data",
        w.shapes,
        "-o",
        run,
        "--freeze",
        "vision",
        "--resume",
        "--steps",
        "2",
        "--seq-len",
        "256",
        "--save-every",
        "1",
    ]


@case(2, "no such file or directory")
def finetune_missing_data(w):
    return ["finetune", w.qwen, "--data", w.tmp / "none.jsonl", "-o", w.tmp / "run", "--freeze", "vision"]


@case(2, "no rows")
def finetune_empty_data(w):
    return ["finetune", w.qwen, "--data", w.write("e.jsonl", "\n"), "-o", w.tmp / "run", "--freeze", "vision"]


@case(2, "bad row(s)", "line 2", "not UTF-8", "--skip-bad-rows")
def finetune_non_utf8_row(w):
    data = w.rows("d.jsonl", [w.row()])
    data.write_bytes(data.read_bytes() + b'{"messages": "\xff\xfe"}\n')
    return ["finetune", w.qwen, "--data", data, "-o", w.tmp / "run", "--freeze", "vision", "--steps", "1"]


@case(2, "bad row(s)", "line 1", "invalid JSON")
def finetune_row_not_json(w):
    data = w.write("d.jsonl", "{nope\n")
    return ["finetune", w.qwen, "--data", data, "-o", w.tmp / "run", "--freeze", "vision", "--steps", "1"]


@case(2, "bad row(s)", "line 2", "URL", "download first")
def finetune_url_image(w):
    data = w.rows("d.jsonl", [w.row(), w.row("https://example.com/cat.png")])
    return ["finetune", w.qwen, "--data", data, "-o", w.tmp / "run", "--freeze", "vision", "--steps", "1"]


@case(2, "bad row(s)", "line 2", "image not found")
def finetune_missing_image(w):
    data = w.rows("d.jsonl", [w.row(), w.row("img/none.png")])
    return ["finetune", w.qwen, "--data", data, "-o", w.tmp / "run", "--freeze", "vision", "--steps", "1"]


@case(2, "2 bad row(s) of 3", "first: line 2", "1×1 pixels")
def finetune_degenerate_images(w):
    rows = [w.row(), w.row(image(w, "dot.png", (1, 1))), w.row(image(w, "strip.png", (4000, 3)))]
    return [
        "finetune",
        w.qwen,
        "--data",
        w.rows("d.jsonl", rows),
        "-o",
        w.tmp / "run",
        "--freeze",
        "vision",
        "--steps",
        "1",
    ]


@case(2, "bad row(s)", "cannot open image")
def finetune_corrupt_image(w):
    w.rows("unused.jsonl", [])
    w.write("img/broken.png", RANDOM)
    data = w.rows("d.jsonl", [w.row("img/broken.png")])
    return ["finetune", w.qwen, "--data", data, "-o", w.tmp / "run", "--freeze", "vision", "--steps", "1"]


@case(2, "12 bad row(s) of 12", "--seq-len 8")
def finetune_seq_len_8(w):
    return ["finetune", w.qwen, "--data", w.shapes, "-o", w.tmp / "run", "--freeze", "vision", "--seq-len", "8"]


@case(2, "nothing would train")
def finetune_everything_frozen(w):
    return ["finetune", w.qwen, "--data", w.shapes, "-o", w.tmp / "run", "--freeze", "vision,merger,lm,head"]


@case(2, "--freeze: unknown component(s) eyes")
def finetune_unknown_component(w):
    return ["finetune", w.qwen, "--data", w.shapes, "-o", w.tmp / "run", "--freeze", "eyes"]


@case(2, "quantize")
def finetune_bad_quantize(w):
    return ["finetune", w.qwen, "--data", w.shapes, "-o", w.tmp / "run", "--freeze", "vision", "--quantize", "8bit"]


@case(2, "needs code from the model repo", "--trust-remote-code")
def finetune_remote_code(w):
    return ["finetune", remote_code_config(w), "--data", w.shapes, "-o", w.tmp / "run", "--freeze", "vision"]


@case(2, "none.jsonl", "no such file or directory")
def finetune_missing_eval_data(w):
    return [
        "finetune",
        w.qwen,
        "--data",
        w.shapes,
        "--eval-data",
        w.tmp / "none.jsonl",
        "-o",
        w.tmp / "run",
        "--freeze",
        "vision",
    ]


@case(2, "processor")
def finetune_model_without_processor(w):
    return ["finetune", config_only(w), "--data", w.shapes, "-o", w.tmp / "run", "--freeze", "vision"]


@case(2, "line 3: duplicate key 'lr'", "first at line 2")
def finetune_config_duplicate_key(w):
    config = w.write("run.yaml", f"model: {w.qwen}\nlr: 0.1\nlr: 0.2\n")
    return ["finetune", "--config", config, "--data", w.shapes, "-o", w.tmp / "run", "--freeze", "vision"]


# ---- merge -----------------------------------------------------------------------------------

section("merge")


@case(2, "no such")
def merge_missing_source(w):
    return ["merge", w.tmp / "none", "-o", w.tmp / "out"]


@case(2, "neither a run directory nor a peft adapter")
def merge_not_a_run(w):
    return ["merge", w.qwen, "-o", w.tmp / "out"]


@case(2, "adapter_model.safetensors")
def merge_missing_adapter(w):
    run = w.copy(w.run, "run")
    (run / "adapter" / "adapter_model.safetensors").unlink()
    return ["merge", run, "-o", w.tmp / "out"]


@case(2, "adapter_model.safetensors", "corrupt")
def merge_corrupt_adapter(w):
    run = w.copy(w.run, "run")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(RANDOM)
    return ["merge", run, "-o", w.tmp / "out"]


@case(2, "vlmsurgeon.json")
def merge_corrupt_run_record(w):
    run = w.copy(w.run, "run")
    (run / "vlmsurgeon.json").write_text("{not json")
    return ["merge", run, "-o", w.tmp / "out"]


@case(2, "adapter_config.json")
def merge_corrupt_adapter_config(w):
    run = w.copy(w.run, "run")
    (run / "adapter" / "adapter_config.json").write_bytes(RANDOM)
    return ["merge", run, "-o", w.tmp / "out"]


@case(2, "--dtype fp8: unknown", "bf16")
def merge_bad_dtype(w):
    return ["merge", w.run, "-o", w.tmp / "out", "--dtype", "fp8"]


@case(2, "--target newest: unknown")
def merge_bad_target(w):
    return ["merge", w.run, "-o", w.tmp / "out", "--target", "newest"]


@case(2, "exists", "--force")
def merge_out_exists(w):
    return ["merge", w.run, "-o", w.folder("out")]


@case(2, "is a file")
def merge_out_is_a_file(w):
    return ["merge", w.run, "-o", w.write("afile", "x")]


@case(2, "cannot write")
def merge_out_read_only(w):
    return ["merge", w.run, "-o", readonly_dir(w) / "out"]


@case(2, "--adapter-only needs --only")
def merge_adapter_only_without_only(w):
    return ["merge", w.run, "-o", w.tmp / "out", "--adapter-only"]


@case(2, "--only: unknown component(s) eyes")
def merge_only_unknown(w):
    return ["merge", w.run, "-o", w.tmp / "out", "--only", "eyes"]


@case(2, "--max-shard-size 5QB", "unknown byte unit")
def merge_bad_shard_size(w):
    return ["merge", w.run, "-o", w.tmp / "out", "--max-shard-size", "5QB"]


@case(2, "base", "--base")
def merge_bare_adapter_without_base(w):
    adapter = w.copy(w.run / "adapter", "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(w.tmp / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return ["merge", adapter, "-o", w.tmp / "out"]


# ---- diff ------------------------------------------------------------------------------------

section("diff")


@case(2, "none")
def diff_missing_side(w):
    return ["diff", w.qwen, w.tmp / "none"]


@case(2, "safetensors")
def diff_empty_directory(w):
    return ["diff", w.qwen, w.folder("empty")]


@case(2, "corrupt safetensors header")
def diff_corrupt_weights(w):
    other = w.copy(w.qwen, "other")
    (other / "model.safetensors").write_bytes(RANDOM)
    return ["diff", w.qwen, other]


@case(2, "unknown dtype 'Q7'")
def diff_unknown_dtype(w):
    other = w.copy(w.qwen, "other")
    (other / "model.safetensors").write_bytes(
        safetensors({"lm_head.weight": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
    )
    return ["diff", w.qwen, other]


@case(2, "truncated safetensors")
def diff_truncated_weights(w):
    other = w.copy(w.qwen, "other")
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    return ["diff", w.qwen, other]


# ---- tiny ------------------------------------------------------------------------------------

section("tiny")


@case(2, "tiny: unknown family 'qwen9_vl'", "qwen2_vl")
def tiny_unknown_family(w):
    return ["tiny", "qwen9_vl", "-o", w.tmp / "t"]


@case(2, "already exists")
def tiny_out_exists(w):
    return ["tiny", "qwen2_vl", "-o", w.folder("t")]


@case(2, "give a family and -o DIR")
def tiny_without_out(w):
    return ["tiny", "qwen2_vl"]


@case(2, "already exists")
def tiny_out_is_a_file(w):
    return ["tiny", "qwen2_vl", "-o", w.write("afile", "x")]


@case(2, "is a file")
def tiny_out_under_a_file(w):
    return ["tiny", "qwen2_vl", "-o", w.write("afile", "x") / "t"]


@case(2, "tiny: cannot write")
def tiny_out_read_only(w):
    return ["tiny", "qwen2_vl", "-o", readonly_dir(w) / "t"]


# ---- data check ------------------------------------------------------------------------------

section("data check")


@case(2, "no such file or directory")
def data_check_missing_file(w):
    return ["data", "check", w.tmp / "none.jsonl", "--model", w.qwen]


@case(2, "no such")
def data_check_missing_model(w):
    return ["data", "check", w.shapes, "--model", w.tmp / "nomodel"]


@case(2, "dataset_info.json", "nope")
def data_check_unknown_dataset_name(w):
    info = w.write("dataset_info.json", json.dumps({"shapes": {"file_name": str(w.shapes)}}))
    return ["data", "check", f"{info}:nope", "--model", w.qwen]


@case(2, "--seq-len: Input should be greater than 0")
def data_check_seq_len_zero(w):
    return ["data", "check", w.shapes, "--model", w.qwen, "--seq-len", "0"]


@case(2, "not UTF-8")
def data_check_json_array_not_utf8(w):
    return ["data", "check", w.write("d.json", RANDOM), "--model", w.qwen]


@case(2, "processor")
def data_check_model_without_processor(w):
    return ["data", "check", w.shapes, "--model", config_only(w)]


# ---- the suite -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tiny_models, shapes, tmp_path_factory) -> Path:
    """One finished 1-step run (with checkpoint-1), shared read-only by the cases."""
    from vlmsurgeon.train.loop import finetune
    from vlmsurgeon.train.runconfig import RunOptions

    out = tmp_path_factory.mktemp("faults") / "run"
    finetune(
        RunOptions(
            model=str(tiny_models("qwen2_vl")),
            data=str(shapes),
            output=str(out),
            freeze="vision",
            steps=1,
            save_every=1,
            seq_len=256,
            seed=0,
        )
    )
    return out


def test_the_suite_is_broad():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    assert set(COMMANDS.values()) == {
        "usage",
        "inspect",
        "presets",
        "plan",
        "budget check",
        "finetune",
        "merge",
        "diff",
        "tiny",
        "data check",
    }


@pytest.mark.parametrize("setup,code,needles,hint,prefix,absent", CASES)
def test_fault(
    setup, code, needles, hint, prefix, absent, tiny_models, shapes, tmp_path, cli, monkeypatch, request, capsys
):
    from vlmsurgeon.train import loop as train

    def must_not_load(*args, **kwargs):
        raise AssertionError("a refused finetune must not load weights")

    monkeypatch.chdir(tmp_path)
    world = World(tmp_path, tiny_models("qwen2_vl"), shapes, lambda: request.getfixturevalue("trained_run"))
    try:
        args = setup(world)  # may train the shared run first
        capsys.readouterr()  # what that training printed is not the case's output
        monkeypatch.setattr(train, "load_for_training", must_not_load)
        exit_code, _, err = cli(*args)
    finally:
        if world.held is not None:
            os.close(world.held)
    lines = err.strip().splitlines()
    assert exit_code == code, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    line = lines[0]
    assert line.startswith(prefix), line
    if hint:
        assert "(try: " in line and line.endswith(")"), line
    for needle in needles:
        assert needle in line, (needle, line)
    for needle in absent:
        assert needle not in line, (needle, line)
