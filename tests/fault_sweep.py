"""Fault sweep: drives the installed CLI (`.venv/bin/vlmsurgeon`) as a subprocess through bad inputs
and holds every answer to DESIGN.md §4's contract:

* exit 0 ok, 1 a check failed, 2 bad input, 3 runtime failure;
* on an error exactly one stderr line `vlmsurgeon: error: what (try: hint)`;
* never a traceback; no third-party library line on stderr;
* nothing at -o (or beside it) after a refusal; results on stdout.

Not a pytest module (no test_ names): run it as

    .venv/bin/python -m tests.fault_sweep [-k SUBSTRING] [--keep]

It prints one line per case (ok / BROKEN + why) and a summary line
"N cases: K ok, B broken (C causes)".
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXE = ROOT / ".venv" / "bin" / "vlmsurgeon"
PY = ROOT / ".venv" / "bin" / "python"
ENV = {"HF_HUB_OFFLINE": "1"}  # and nothing else
ERROR_LINE = re.compile(r"^vlmsurgeon: error: \S.* \(try: .+\)$")
# lines that betray a third-party library talking on stderr
THIRD_PARTY = re.compile(
    r"Warning|warnings\.warn|Failed to load|gemm_4bit|bitsandbytes|it/s\]|s/it\]|\d+%\|"
    r"|^\s*File \"|torch|transformers|huggingface|tqdm|Loading|Fetching|Writing",
    re.I,
)
PER_CASE_TIMEOUT = 120


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: set[int]
    stdin: str | None = None  # None: stdin closed (/dev/null)
    # how stderr is judged:
    #   "error"  : exactly one `vlmsurgeon: error: … (try: …)` line, nothing else (exit 1/2/3)
    #   "report" : exit 1 of `data check`: the report on stdout, one error line on stderr
    #   "budget" : every stderr line ours (`vlmsurgeon: error:` / `vlmsurgeon: budget violated:`)
    #   "ok"     : exit 0: no third-party line on stderr, no error line unless allow_errors
    mode: str = "auto"
    allow_errors: bool = False  # chat: a refused turn says its error and the session goes on
    extra_ok: tuple[str, ...] = ()  # stderr line prefixes of our own that are fine (banners, progress)
    out: str | None = None  # -o path (relative to the sweep dir): must not exist after a refusal
    junit: str | None = None  # --junit path: must exist and parse as XML afterwards
    stderr_has: tuple[str, ...] = ()  # substrings the stderr must contain
    stderr_lacks: tuple[str, ...] = ()
    stdout_has: tuple[str, ...] = ()
    check: Callable[[Result, Path], list[str]] | None = None


@dataclass
class Result:
    case: Case
    rc: int
    stdout: str
    stderr: str
    seconds: float
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# fixtures


def _png(width: int = 32, height: int = 32, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _run_fixture(argv: list[str], cwd: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"fixture failed: {' '.join(map(str, argv))} (exit {done.returncode})\n{done.stderr[-2000:]}")


def _jsonl(path: Path, rows: list[object]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _row(user: str, answer: str = "A red circle.", images: list[object] | None = None) -> dict:
    row: dict = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    if images is not None:
        row["images"] = images
    return row


def build_fixtures(d: Path) -> None:
    t0 = time.time()
    with cf.ThreadPoolExecutor(2) as pool:
        jobs = [
            pool.submit(_run_fixture, [str(EXE), "tiny", "qwen2_vl", "-o", "qwen"], d),
            pool.submit(_run_fixture, [str(EXE), "tiny", "llava", "-o", "llava"], d),
        ]
        _run_fixture([str(PY), str(ROOT / "examples" / "make_shapes.py"), "shapes"], d)
        for job in jobs:
            job.result()
    _run_fixture(
        [
            str(EXE),
            "finetune",
            "qwen",
            "--data",
            "shapes/train.jsonl",
            "--freeze",
            "vision",
            "-o",
            "run",
            "--steps",
            "1",
            "--seq-len",
            "512",
        ],
        d,
    )

    good_png = (d / "shapes" / "img" / "red_circle.png").read_bytes()
    img = d / "img"
    img.mkdir()
    (img / "good.png").write_bytes(_png())
    (img / "truncated.png").write_bytes(good_png[: len(good_png) // 3])
    (img / "text.png").write_text("this is not an image\n")
    (img / "empty.png").write_bytes(b"")
    (img / "dir.png").mkdir()
    (img / "header_only.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (d / "video.mp4").write_text("not a video at all\n")
    (d / "somefile").write_text("a plain file, used as a folder below\n")
    (d / "existing_out").mkdir()
    (d / "existing_out" / "keep.txt").write_text("x")

    # data files
    data = d / "data"
    data.mkdir()
    good = str(img / "good.png")
    (data / "empty.jsonl").write_text("")
    (data / "blank_lines.jsonl").write_text("\n\n   \n")
    (data / "garbage.jsonl").write_text("{this is not json\nneither is this]\n")
    (data / "binary.jsonl").write_bytes(bytes(range(256)) * 8)
    (data / "latin1.jsonl").write_bytes(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    (data / "array.json").write_text(json.dumps([1, 2, 3]))
    (data / "scalar.json").write_text("42")
    _jsonl(data / "list_rows.jsonl", [[1, 2], [3]])
    _jsonl(data / "messages_str.jsonl", [{"messages": "hello"}])
    _jsonl(data / "no_assistant.jsonl", [{"messages": [{"role": "user", "content": "<image>hi"}], "images": [good]}])
    _jsonl(data / "good.jsonl", [_row("<image>What is it?", images=[good]), _row("Say hi.", "hi")])
    _jsonl(data / "mismatch.jsonl", [_row("<image><image>Which?", images=[good])])
    _jsonl(data / "too_many_images.jsonl", [_row("<image>Which?", images=[good, good])])
    _jsonl(data / "bytes_int.jsonl", [_row("<image>What?", images=[{"bytes": 123}])])
    _jsonl(data / "bytes_text.jsonl", [_row("<image>What?", images=[{"bytes": "not base64 !!"}])])
    _jsonl(data / "img_obj_nokeys.jsonl", [_row("<image>What?", images=[{"url": "x"}])])
    _jsonl(data / "missing_img.jsonl", [_row("<image>What?", images=["img/nope.png"])])
    _jsonl(data / "trunc_img.jsonl", [_row("<image>What?", images=[str(img / "truncated.png")])])
    _jsonl(data / "text_img.jsonl", [_row("<image>What?", images=[str(img / "text.png")])])
    _jsonl(data / "dir_img.jsonl", [_row("<image>What?", images=[str(img / "dir.png")])])
    _jsonl(data / "images_str.jsonl", [_row("<image>What?", images=good)])  # type: ignore[arg-type]
    _jsonl(
        data / "mixed.jsonl", [_row("<image>What is it?", images=[good]), _row("<image>What?", images=[{"bytes": 123}])]
    )
    _jsonl(
        data / "role_bad.jsonl",
        [{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}],
    )
    _jsonl(
        data / "content_int.jsonl",
        [{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": 7}]}],
    )
    kinds = [
        _row("<image>What is it?", images=[good]),  # the one good row
        _row("<image><image>Which?", images=[good]),
        _row("<image>Which?", images=[good, good]),
        _row("<image>What?", images=[{"bytes": 123}]),
        _row("<image>What?", images=[{"bytes": "not base64 !!"}]),
        _row("<image>What?", images=[{"url": "x"}]),
        _row("<image>What?", images=["img/nope.png"]),
        _row("<image>What?", images=[str(img / "truncated.png")]),
        _row("<image>What?", images=[str(img / "text.png")]),
        _row("<image>What?", images=[str(img / "dir.png")]),
        _row("<image>What?", images=[str(img / "empty.png")]),
        {"messages": "hello"},
        [1, 2],
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": 7}]},
        {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},
    ]
    _jsonl(data / "every_bad_kind.jsonl", kinds)
    (data / "every_bad_kind.jsonl").write_text((data / "every_bad_kind.jsonl").read_text() + "{not json\n")
    _jsonl(data / "long_text.jsonl", [_row("<image>" + "word " * 400, images=[good])])
    (data / "folder_no_data").mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"shapes": {"file_name": str(d / "shapes" / "train.jsonl")}}))
    (data / "dataset_info_bad.json").write_text(json.dumps(["not", "a", "mapping"]))

    # models that are not models
    bad = d / "models"
    bad.mkdir()
    (bad / "empty_dir").mkdir()
    (bad / "garbage_config").mkdir()
    (bad / "garbage_config" / "config.json").write_text("{not json")
    (bad / "array_config").mkdir()
    (bad / "array_config" / "config.json").write_text("[1, 2]")
    (bad / "no_type").mkdir()
    (bad / "no_type" / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (bad / "unknown_type").mkdir()
    (bad / "unknown_type" / "config.json").write_text(json.dumps({"model_type": "zebra_vlm_9000", "hidden_size": 8}))
    # a remote-code repo: importing any of its code leaves a marker file behind
    remote = bad / "remote"
    remote.mkdir()
    marker = d / "REMOTE_CODE_RAN"
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (remote / "configuration_evil.py").write_text(
        code + "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil_vlm'\n"
    )
    (remote / "modeling_evil.py").write_text(code)
    (remote / "processing_evil.py").write_text(code)
    (remote / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil_vlm",
                "architectures": ["EvilForConditionalGeneration"],
                "auto_map": {
                    "AutoConfig": "configuration_evil.EvilConfig",
                    "AutoModel": "modeling_evil.EvilModel",
                    "AutoModelForImageTextToText": "modeling_evil.EvilForConditionalGeneration",
                    "AutoProcessor": "processing_evil.EvilProcessor",
                },
            }
        )
    )
    # a run whose base is gone
    shutil.copytree(d / "run", d / "run_lost_base")
    record = json.loads((d / "run_lost_base" / "vlmsurgeon.json").read_text())
    record["base"]["reference"] = str(d / "gone_base")
    (d / "run_lost_base" / "vlmsurgeon.json").write_text(json.dumps(record))
    # a run whose adapter weights are damaged
    shutil.copytree(d / "run", d / "run_bad_weights")
    weights = d / "run_bad_weights" / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    # a run whose vlmsurgeon.json is garbage
    shutil.copytree(d / "run", d / "run_bad_record")
    (d / "run_bad_record" / "vlmsurgeon.json").write_text("{garbage")

    # budgets
    b = d / "budgets"
    b.mkdir()

    def budget(name: str, entries: object) -> None:
        import yaml  # the venv has it: budget check reads YAML

        (b / name).write_text(yaml.safe_dump(entries, sort_keys=False) if not isinstance(entries, str) else entries)

    q = str(d / "qwen")
    budget("empty.yaml", "")
    budget("garbage.yaml", "models: [unclosed\n  - : :\n\t tab")
    budget("list_top.yaml", "- a\n- b\n")
    budget("scalar_top.yaml", "just a string\n")
    budget("models_not_list.yaml", {"models": {"a": 1}})
    budget(
        "unknown_key.yaml",
        {"models": [{"name": "q", "model": q, "freeze": "vision", "limits": {"total": "1B"}, "colour": "red"}]},
    )
    budget(
        "unknown_component.yaml",
        {"models": [{"name": "q", "model": q, "freeze": "vision", "limits": {"wings.params": 5}}]},
    )
    budget(
        "min_above_max.yaml",
        {
            "models": [
                {"name": "q", "model": q, "freeze": "vision", "limits": {"trainable": {"min": "10M", "max": "1M"}}}
            ]
        },
    )
    budget("negative.yaml", {"models": [{"name": "q", "model": q, "freeze": "vision", "limits": {"total": -5}}]})
    budget(
        "share_over.yaml", {"models": [{"name": "q", "model": q, "freeze": "vision", "limits": {"trainable": "150%"}}]}
    )
    budget("total_pct.yaml", {"models": [{"name": "q", "model": q, "freeze": "vision", "limits": {"total": "50%"}}]})
    budget(
        "bad_unit.yaml", {"models": [{"name": "q", "model": q, "freeze": "vision", "limits": {"memory": "12 parsecs"}}]}
    )
    budget(
        "unknown_preset.yaml",
        {"models": [{"name": "q", "model": q, "preset": "no-such-preset", "limits": {"total": "1B"}}]},
    )
    budget("freeze_unknown.yaml", {"models": [{"name": "q", "model": q, "freeze": "wings", "limits": {"total": "1B"}}]})
    budget(
        "missing_model.yaml",
        {"models": [{"name": "gone", "model": str(d / "nope"), "freeze": "vision", "limits": {"total": "1B"}}]},
    )
    budget(
        "hub_offline.yaml",
        {"models": [{"name": "hub", "model": "nobody-here/no-model-9", "freeze": "vision", "limits": {"total": "1B"}}]},
    )
    budget(
        "remote.yaml",
        {"models": [{"name": "evil", "model": str(remote), "freeze": "vision", "limits": {"total": "1B"}}]},
    )
    budget(
        "violated.yaml",
        {"models": [{"name": "q", "model": q, "freeze": "vision", "limits": {"total": 1000, "trainable": 10}}]},
    )
    budget("holds.yaml", {"models": [{"name": "q", "model": q, "freeze": "vision", "limits": {"total": "1B"}}]})
    budget(
        "missing_component_llava.yaml",
        {"models": [{"name": "l", "model": str(d / "llava"), "freeze": "vision", "limits": {"generator.params": 5}}]},
    )
    budget(
        "error_and_violation.yaml",
        {
            "models": [
                {"name": "gone", "model": str(d / "nope"), "freeze": "vision", "limits": {"total": "1B"}},
                {"name": "q", "model": q, "freeze": "vision", "limits": {"total": 1000}},
            ]
        },
    )

    # configs for plan
    (d / "garbage.yaml").write_text("model: [unclosed\n")
    (d / "config_unknown_key.yaml").write_text(f"model: {q}\nfreeze: vision\nwarp_speed: 9\n")
    print(f"fixtures built in {time.time() - t0:.0f}s", flush=True)


# ---------------------------------------------------------------------------------------------
# cases


LONG = "x" * 300  # over NAME_MAX (255 bytes)


def cases(d: Path) -> list[Case]:
    q, ll, run = "qwen", "llava", "run"
    img = "img/good.png"
    data = "shapes/train.jsonl"
    remote = "models/remote"
    R = ("--trust-remote-code",)
    c: list[Case] = []
    add = c.append

    # ---- generate -----------------------------------------------------------------------------
    g = ["generate"]
    add(Case("generate: missing source", g + ["nope", "--prompt", "hi"], {2}))
    add(Case("generate: source is a file", g + ["qwen/config.json", "--prompt", "hi"], {2}))
    add(Case("generate: empty folder", g + ["models/empty_dir", "--prompt", "hi"], {2}))
    add(Case("generate: garbage config.json", g + ["models/garbage_config", "--prompt", "hi"], {2}))
    add(Case("generate: config.json is an array", g + ["models/array_config", "--prompt", "hi"], {2}))
    add(Case("generate: config without model_type", g + ["models/no_type", "--prompt", "hi"], {2}))
    add(Case("generate: unknown model_type", g + ["models/unknown_type", "--prompt", "hi"], {2}))
    add(Case("generate: remote code refused", g + [remote, "--prompt", "hi"], {2}, stderr_has=R))
    add(Case("generate: hub id offline", g + ["nobody-here/no-model-9", "--prompt", "hi"], {2}))
    add(Case("generate: missing image", g + [q, "--image", "img/nope.png", "--prompt", "hi"], {2}))
    add(Case("generate: truncated PNG", g + [q, "--image", "img/truncated.png", "--prompt", "hi"], {2}))
    add(Case("generate: text file as image", g + [q, "--image", "img/text.png", "--prompt", "hi"], {2}))
    add(Case("generate: empty image file", g + [q, "--image", "img/empty.png", "--prompt", "hi"], {2}))
    add(Case("generate: PNG signature only", g + [q, "--image", "img/header_only.png", "--prompt", "hi"], {2}))
    add(Case("generate: folder as image", g + [q, "--image", "img/dir.png", "--prompt", "hi"], {2}))
    add(Case("generate: over-long image name", g + [q, "--image", f"img/{LONG}.png", "--prompt", "hi"], {2}))
    add(Case("generate: missing video", g + [q, "--video", "nope.mp4", "--prompt", "hi"], {2}))
    add(Case("generate: garbage video", g + [q, "--video", "video.mp4", "--prompt", "hi"], {2}))
    add(Case("generate: video to an image-only model", g + [ll, "--video", "video.mp4", "--prompt", "hi"], {2}))
    add(Case("generate: 2 placeholders, 1 image", g + [q, "--image", img, "--prompt", "<image><image>which?"], {2}))
    add(Case("generate: max-new-tokens 0", g + [q, "--prompt", "hi", "--max-new-tokens", "0"], {2}))
    add(Case("generate: max-new-tokens -3", g + [q, "--prompt", "hi", "--max-new-tokens", "-3"], {2}))
    add(Case("generate: max-new-tokens abc", g + [q, "--prompt", "hi", "--max-new-tokens", "abc"], {2}))
    add(Case("generate: temperature -1", g + [q, "--prompt", "hi", "--temperature", "-1"], {2}))
    add(Case("generate: no --prompt", g + [q], {2}))
    add(Case("generate: --base on a model", g + [q, "--base", ll, "--prompt", "hi"], {2}))
    add(Case("generate: run onto the wrong base", g + [run, "--base", ll, "--prompt", "hi"], {2}))
    add(Case("generate: adapter onto the wrong base", g + ["run/adapter", "--base", ll, "--prompt", "hi"], {2}))
    add(Case("generate: run whose base is gone", g + ["run_lost_base", "--prompt", "hi"], {2}))
    add(Case("generate: run with damaged adapter weights", g + ["run_bad_weights", "--prompt", "hi"], {2}))
    add(Case("generate: run with garbage vlmsurgeon.json", g + ["run_bad_record", "--prompt", "hi"], {2}))
    add(
        Case(
            "generate: ok on a QLoRA run (no library chatter)",
            g + [run, "--image", img, "--prompt", "What is it?", "--max-new-tokens", "3", "--json"],
            {0},
            check=lambda r, d: [] if _json_ok(r.stdout) else ["stdout is not one JSON object"],
        )
    )

    # ---- chat ---------------------------------------------------------------------------------
    banner = ("chat with ",)
    add(Case("chat: missing source (stdin closed)", ["chat", "nope"], {2}))
    add(Case("chat: remote code refused", ["chat", remote], {2}, stderr_has=R))
    add(Case("chat: hub id offline", ["chat", "nobody-here/no-model-9"], {2}))
    add(Case("chat: max-new-tokens 0", ["chat", q, "--max-new-tokens", "0"], {2}))
    add(Case("chat: stdin closed on a good model", ["chat", q], {0}, extra_ok=banner))
    add(
        Case(
            "chat: QLoRA run, bad /image lines, mismatch, a turn",
            ["chat", run, "--max-new-tokens", "2"],
            {0},
            stdin="/image img/nope.png\n/image img/truncated.png\n/image img/text.png\n/image\n"
            f"/image {img}\n<image><image> which?\n/reset\nhello\n/exit\n",
            allow_errors=True,
            extra_ok=banner,
            stderr_has=("img/nope.png", "truncated.png", "placeholder"),
        )
    )

    # ---- eval ---------------------------------------------------------------------------------
    e = ["eval"]
    add(Case("eval: no --data", e + [q], {2}))
    add(Case("eval: missing data file", e + [q, "--data", "data/nope.jsonl"], {2}))
    add(Case("eval: empty data file", e + [q, "--data", "data/empty.jsonl"], {2}))
    add(Case("eval: garbage data", e + [q, "--data", "data/garbage.jsonl"], {2}))
    add(Case("eval: JSON array of numbers", e + [q, "--data", "data/array.json"], {2}))
    add(Case("eval: rows are lists", e + [q, "--data", "data/list_rows.jsonl"], {2}))
    add(Case("eval: no assistant turn to score", e + [q, "--data", "data/no_assistant.jsonl"], {2}))
    add(Case("eval: every row's image is bad", e + [q, "--data", "data/bytes_int.jsonl"], {2}))
    add(Case("eval: data is a folder with no data", e + [q, "--data", "data/folder_no_data"], {2}))
    add(Case("eval: missing source", e + ["nope", "--data", data], {2}))
    add(Case("eval: remote code refused", e + [remote, "--data", data], {2}, stderr_has=R))
    add(Case("eval: hub id offline", e + ["nobody-here/no-model-9", "--data", data], {2}))
    add(
        Case(
            "eval: --compare missing",
            e + [q, "--data", data, "--compare", "nope", "-o", "ev_cmp_missing"],
            {2},
            out="ev_cmp_missing",
        )
    )
    add(Case("eval: --compare remote code", e + [q, "--data", data, "--compare", remote], {2}, stderr_has=R))
    add(Case("eval: --compare hub offline", e + [q, "--data", data, "--compare", "nobody-here/no-model-9"], {2}))
    add(
        Case(
            "eval: run onto the wrong base",
            e + [run, "--base", ll, "--data", data, "-o", "ev_wrong_base"],
            {2},
            out="ev_wrong_base",
        )
    )
    add(Case("eval: --limit 0", e + [q, "--data", data, "--limit", "0"], {2}))
    add(Case("eval: --max-new-tokens abc", e + [q, "--data", data, "--max-new-tokens", "abc"], {2}))
    add(Case("eval: -o exists (non-empty)", e + [q, "--data", data, "-o", "existing_out"], {2}))
    add(Case("eval: -o is a file", e + [q, "--data", data, "-o", "somefile"], {2}))
    add(Case("eval: -o under a file", e + [q, "--data", data, "-o", "somefile/rep"], {2}, out="somefile/rep"))
    add(Case("eval: -o under /proc", e + [q, "--data", data, "-o", "/proc/vlms_rep"], {2}, out="/proc/vlms_rep"))
    add(
        Case(
            "eval: -o parent missing",
            e + [q, "--data", data, "-o", "no/such/parent/rep"],
            {2},
            out="no/such/parent/rep",
        )
    )
    add(Case("eval: -o over-long name", e + [q, "--data", data, "-o", LONG], {2}, out=LONG))
    add(Case("eval: bad --image-root", e + [q, "--data", data, "--image-root", "no/such/root"], {2}))
    add(
        Case(
            "eval: ok, --compare, -o (report complete)",
            e + [run, "--compare", q, "--data", data, "--limit", "1", "--max-new-tokens", "2", "-o", "ev_ok"],
            {0},
            extra_ok=("eval: ",),
            check=_report_complete("ev_ok"),
        )
    )

    # ---- data check ---------------------------------------------------------------------------
    dc = ["data", "check"]
    rep = dict(mode="report")
    add(Case("data check: missing file", dc + ["data/nope.jsonl", "--model", q], {2}))
    add(Case("data check: empty file", dc + ["data/empty.jsonl", "--model", q], {1, 2}, **rep))
    add(Case("data check: only blank lines", dc + ["data/blank_lines.jsonl", "--model", q], {1, 2}, **rep))
    add(Case("data check: garbage JSON lines", dc + ["data/garbage.jsonl", "--model", q], {1, 2}, **rep))
    add(Case("data check: binary file", dc + ["data/binary.jsonl", "--model", q], {1, 2}, **rep))
    add(
        Case(
            "data check: every kind of bad row (+1 good), --json",
            dc + ["data/every_bad_kind.jsonl", "--model", q, "--json"],
            {1},
            **rep,
            check=_bad_rows(15),
        )
    )
    add(Case("data check: JSON array of numbers", dc + ["data/array.json", "--model", q], {1, 2}, **rep))
    add(Case("data check: JSON scalar", dc + ["data/scalar.json", "--model", q], {2}))
    add(Case("data check: 2 placeholders 1 image", dc + ["data/mismatch.jsonl", "--model", q], {1}, **rep))
    add(Case('data check: image {"bytes": 123}', dc + ["data/bytes_int.jsonl", "--model", q], {1}, **rep))
    add(Case("data check: missing image", dc + ["data/missing_img.jsonl", "--model", q], {1}, **rep))
    add(Case("data check: truncated PNG", dc + ["data/trunc_img.jsonl", "--model", q], {1}, **rep))
    add(
        Case(
            "data check: one bad row among good",
            dc + ["data/mixed.jsonl", "--model", q, "--json"],
            {1},
            **rep,
            check=lambda r, d: [] if _json_ok(r.stdout) else ["--json: stdout is not one JSON object"],
        )
    )
    add(
        Case(
            "data check: row over --seq-len 32",
            dc + ["data/long_text.jsonl", "--model", q, "--seq-len", "32"],
            {1},
            **rep,
        )
    )
    add(Case("data check: --seq-len 0", dc + [data, "--model", q, "--seq-len", "0"], {2}))
    add(Case("data check: --seq-len -5", dc + [data, "--model", q, "--seq-len", "-5"], {2}))
    add(Case("data check: --max-pixels -1", dc + [data, "--model", q, "--max-pixels", "-1"], {2}))
    add(Case("data check: folder with no data", dc + ["data/folder_no_data", "--model", q], {2}))
    add(Case("data check: dataset_info.json:unknown", dc + ["data/dataset_info.json:nope", "--model", q], {2}))
    add(Case("data check: over-long data name", dc + [f"data/{LONG}.jsonl", "--model", q], {2}))
    add(Case("data check: --model missing", dc + [data, "--model", "nope"], {2}))
    add(Case("data check: --model hub offline", dc + [data, "--model", "nobody-here/no-model-9"], {2}))
    add(
        Case(
            "data check: --model remote code",
            dc + [data, "--model", remote],
            {2},
            stderr_has=("code from the model repo",),
        )
    )
    add(
        Case(
            "data check: --model remote code, 'y' on stdin",
            dc + [data, "--model", remote],
            {2},
            stdin="y\ny\ny\ny\n",
            stderr_has=("code from the model repo",),
        )
    )
    add(Case("data check: --model empty folder", dc + [data, "--model", "models/empty_dir"], {2}))
    add(Case("data check: bad --image-root", dc + [data, "--model", q, "--image-root", "no/such/root"], {1, 2}, **rep))

    # ---- budget check -------------------------------------------------------------------------
    bc = ["budget", "check"]
    bud = dict(mode="budget")
    add(
        Case(
            "budget: missing file (+junit)",
            bc + ["budgets/nope.yaml", "--junit", "j_missing.xml"],
            {2},
            junit="j_missing.xml",
        )
    )
    add(Case("budget: folder as file", bc + ["budgets"], {2}))
    add(Case("budget: empty file", bc + ["budgets/empty.yaml"], {2}))
    add(
        Case(
            "budget: garbage YAML (+junit)",
            bc + ["budgets/garbage.yaml", "--junit", "j_garbage.xml"],
            {2},
            junit="j_garbage.xml",
        )
    )
    add(Case("budget: top-level list", bc + ["budgets/list_top.yaml"], {2}))
    add(Case("budget: models is a mapping", bc + ["budgets/models_not_list.yaml"], {2}))
    add(Case("budget: unknown key", bc + ["budgets/unknown_key.yaml"], {2}, stderr_has=("colour",)))
    add(Case("budget: unknown component", bc + ["budgets/unknown_component.yaml"], {2}))
    add(Case("budget: min above max", bc + ["budgets/min_above_max.yaml"], {2}))
    add(Case("budget: negative limit", bc + ["budgets/negative.yaml"], {2}))
    add(Case("budget: share over 100%", bc + ["budgets/share_over.yaml"], {2}))
    add(Case("budget: bad unit", bc + ["budgets/bad_unit.yaml"], {2}))
    add(Case("budget: unknown preset", bc + ["budgets/unknown_preset.yaml"], {2}))
    add(Case("budget: freeze unknown component", bc + ["budgets/freeze_unknown.yaml"], {2}))
    add(
        Case(
            "budget: model missing (+junit)",
            bc + ["budgets/missing_model.yaml", "--junit", "j_mm.xml"],
            {2},
            **bud,
            junit="j_mm.xml",
        )
    )
    add(Case("budget: hub id offline", bc + ["budgets/hub_offline.yaml"], {2}, **bud))
    add(
        Case(
            "budget: remote code entry",
            bc + ["budgets/remote.yaml"],
            {2},
            **bud,
            stderr_has=("trust_remote_code: true",),
            stderr_lacks=("--trust-remote-code",),
        )
    )
    add(Case("budget: component the model lacks", bc + ["budgets/missing_component_llava.yaml"], {2}, **bud))
    add(
        Case(
            "budget: violated (+junit)",
            bc + ["budgets/violated.yaml", "--junit", "j_viol.xml"],
            {1},
            **bud,
            junit="j_viol.xml",
            stderr_has=("budget violated",),
        )
    )
    add(
        Case(
            "budget: error and violation, worst wins",
            bc + ["budgets/error_and_violation.yaml", "--json"],
            {2},
            **bud,
            check=lambda r, d: [] if _json_ok(r.stdout) else ["--json: stdout is not one JSON object"],
        )
    )
    add(
        Case(
            "budget: --junit under a file",
            bc + ["budgets/holds.yaml", "--junit", "somefile/j.xml"],
            {2},
            out="somefile/j.xml",
        )
    )
    add(
        Case(
            "budget: --junit under /proc",
            bc + ["budgets/holds.yaml", "--junit", "/proc/vlms_j.xml"],
            {2},
            out="/proc/vlms_j.xml",
        )
    )
    add(Case("budget: --junit is a folder", bc + ["budgets/holds.yaml", "--junit", "existing_out"], {2}))
    add(
        Case(
            "budget: --junit over-long name",
            bc + ["budgets/holds.yaml", "--junit", LONG + ".xml"],
            {2},
            out=LONG + ".xml",
        )
    )

    # ---- merge --------------------------------------------------------------------------------
    add(Case("merge: a model, not a run", ["merge", q, "-o", "m_model"], {2}, out="m_model"))
    add(Case("merge: missing run", ["merge", "nope", "-o", "m_missing"], {2}, out="m_missing"))
    add(Case("merge: run onto the wrong base", ["merge", run, "--base", ll, "-o", "m_wrong"], {2}, out="m_wrong"))
    add(Case("merge: --dtype int8", ["merge", run, "--dtype", "int8", "-o", "m_dtype"], {2}, out="m_dtype"))
    add(Case("merge: --target sideways", ["merge", run, "--target", "sideways", "-o", "m_target"], {2}, out="m_target"))
    add(
        Case(
            "merge: --max-shard-size lots",
            ["merge", run, "--max-shard-size", "lots", "-o", "m_shard"],
            {2},
            out="m_shard",
        )
    )
    add(Case("merge: -o under a file", ["merge", run, "-o", "somefile/m"], {2}, out="somefile/m"))
    add(Case("merge: -o exists", ["merge", run, "-o", "existing_out"], {2}))
    add(Case("merge: -o over-long name", ["merge", run, "-o", LONG], {2}, out=LONG))
    add(Case("merge: damaged adapter weights", ["merge", "run_bad_weights", "-o", "m_badw"], {2}, out="m_badw"))
    add(Case("merge: base is gone", ["merge", "run_lost_base", "-o", "m_lost"], {2}, out="m_lost"))

    # ---- inspect / plan / diff / tiny ---------------------------------------------------------
    add(Case("inspect: missing", ["inspect", "nope"], {2}))
    add(Case("inspect: empty folder", ["inspect", "models/empty_dir"], {2}))
    add(Case("inspect: garbage config", ["inspect", "models/garbage_config"], {2}))
    add(Case("inspect: array config", ["inspect", "models/array_config/config.json"], {2}))
    add(Case("inspect: unknown type", ["inspect", "models/unknown_type"], {2}))
    add(Case("inspect: remote code refused", ["inspect", remote], {2}, stderr_has=R))
    add(Case("inspect: hub offline", ["inspect", "nobody-here/no-model-9"], {2}))
    add(Case("inspect: --depth -1", ["inspect", q, "--depth", "-1"], {2}))
    add(Case("inspect: a text file", ["inspect", "somefile"], {2}))
    add(Case("plan: no preset or freeze", ["plan", q], {2}))
    add(Case("plan: unknown preset", ["plan", q, "--preset", "no-such-preset"], {2}))
    add(Case("plan: freeze unknown component", ["plan", q, "--freeze", "wings"], {2}))
    add(Case("plan: --seq-len -5", ["plan", q, "--freeze", "vision", "--seq-len", "-5"], {2}))
    add(Case("plan: --strategy warp", ["plan", q, "--freeze", "vision", "--strategy", "warp"], {2}))
    add(Case("plan: --quantize 8bit", ["plan", q, "--freeze", "vision", "--quantize", "8bit"], {2}))
    add(Case("plan: --gpu-memory lots", ["plan", q, "--freeze", "vision", "--gpus", "2", "--gpu-memory", "lots"], {2}))
    add(Case("plan: --gpus 0", ["plan", q, "--freeze", "vision", "--gpus", "0"], {2}))
    add(Case("plan: --strict without --probe", ["plan", q, "--freeze", "vision", "--strict"], {2}))
    add(Case("plan: remote code refused", ["plan", remote, "--freeze", "vision"], {2}, stderr_has=R))
    add(Case("plan: --config missing", ["plan", "--config", "nope.yaml", "--freeze", "vision"], {2}))
    add(Case("plan: --config garbage", ["plan", "--config", "garbage.yaml", "--freeze", "vision"], {2}))
    add(Case("plan: --config unknown key", ["plan", "--config", "config_unknown_key.yaml"], {2}))
    add(Case("diff: missing side", ["diff", q, "nope"], {2}))
    add(Case("diff: a file", ["diff", q, "somefile"], {2}))
    add(Case("diff: garbage run record", ["diff", q, "run_bad_record"], {2}))
    add(Case("tiny: unknown family", ["tiny", "zebra_vlm", "-o", "t_zebra"], {2}, out="t_zebra"))
    add(Case("tiny: no -o", ["tiny", "qwen2_vl"], {2}))
    add(Case("tiny: -o exists", ["tiny", "qwen2_vl", "-o", "existing_out"], {2}))
    add(Case("tiny: -o under a file", ["tiny", "qwen2_vl", "-o", "somefile/t"], {2}, out="somefile/t"))
    add(Case("tiny: -o under /proc", ["tiny", "qwen2_vl", "-o", "/proc/vlms_tiny"], {2}, out="/proc/vlms_tiny"))
    add(Case("tiny: -o over-long name", ["tiny", "qwen2_vl", "-o", LONG], {2}, out=LONG))
    add(Case("tiny: --seed abc", ["tiny", "qwen2_vl", "--seed", "abc", "-o", "t_seed"], {2}, out="t_seed"))
    add(
        Case(
            "finetune: remote code refused",
            ["finetune", remote, "--data", data, "--freeze", "vision", "-o", "ft_remote", "--steps", "1"],
            {2},
            out="ft_remote",
            stderr_has=R,
        )
    )
    add(
        Case(
            "finetune: remote code, 'y' on stdin",
            ["finetune", remote, "--data", data, "--freeze", "vision", "-o", "ft_remote_y", "--steps", "1"],
            {2},
            stdin="y\ny\ny\n",
            out="ft_remote_y",
            stderr_has=R,
        )
    )
    add(
        Case(
            "finetune: -o under a file",
            ["finetune", q, "--data", data, "--freeze", "vision", "-o", "somefile/ft", "--steps", "1"],
            {2},
            out="somefile/ft",
        )
    )
    # ---- preference training (issue 23) --------------------------------------------------------
    pairs, kto = "shapes/pairs.jsonl", "shapes/kto.jsonl"
    ft = ["finetune", q, "--freeze", "vision", "--steps", "1"]

    def pref(name: str, args: list[str], out: str) -> None:
        add(Case(f"finetune: {name}", ft + args + ["-o", out], {2}, out=out))

    def bad_rows_only(out: str) -> Callable[[Result, Path], list[str]]:
        """A refusal for bad rows leaves the run directory holding their list alone (bad_rows.txt)."""

        def check(r: Result, d: Path) -> list[str]:
            left = sorted(p.name for p in (d / out).iterdir()) if (d / out).is_dir() else []
            return [] if left == ["bad_rows.txt"] else [f"{out} holds {left}, not bad_rows.txt alone"]

        return check

    def pref_rows(name: str, args: list[str], out: str) -> None:
        add(Case(f"finetune: {name}", ft + args + ["-o", out], {2}, check=bad_rows_only(out)))

    pref("unknown objective", ["--data", pairs, "--objective", "rlhf"], "pf_obj")
    pref("beta on sft", ["--data", data, "--beta", "0.1"], "pf_beta_sft")
    pref("beta 0", ["--data", pairs, "--objective", "dpo", "--beta", "0"], "pf_beta0")
    pref("simpo-gamma on dpo", ["--data", pairs, "--objective", "dpo", "--simpo-gamma", "1"], "pf_gamma")
    pref("kto weight on dpo", ["--data", pairs, "--objective", "dpo", "--desirable-weight", "2"], "pf_weight")
    pref("kto at batch size 1", ["--data", kto, "--objective", "kto", "--batch-size", "1"], "pf_kto1")
    pref_rows("pairs as sft", ["--data", pairs], "pf_sft_pairs")
    pref_rows("sft rows as dpo", ["--data", data, "--objective", "dpo"], "pf_dpo_sft")
    pref_rows("kto rows as dpo", ["--data", kto, "--objective", "dpo"], "pf_dpo_kto")
    pref_rows("pairs as kto", ["--data", pairs, "--objective", "kto", "--batch-size", "2"], "pf_kto_pairs")
    pref("--from a missing run", ["--data", pairs, "--objective", "dpo", "--from", "nope"], "pf_from")
    pref("--from on sft", ["--data", data, "--from", run], "pf_from_sft")
    pref(
        "--from a run of other components",
        ["--data", pairs, "--objective", "dpo", "--from", run, "--freeze", "vision,merger"],
        "pf_from_preset",
    )
    pref("--precompute-ref on orpo", ["--data", pairs, "--objective", "orpo", "--precompute-ref"], "pf_pre")
    pref_rows("pairs cut by --seq-len", ["--data", pairs, "--objective", "dpo", "--seq-len", "40"], "pf_cut")
    add(Case("data check: unknown objective", ["data", "check", pairs, "-m", q, "--objective", "nope"], {2}))
    add(Case("data check: pairs as sft", ["data", "check", pairs, "-m", q], {1}, mode="report"))
    add(Case("eval: pairs with -o", ["eval", q, "--data", pairs, "-o", "ev_pairs"], {2}, out="ev_pairs"))
    add(Case("plan: unknown objective", ["plan", q, "--freeze", "vision", "--objective", "nope"], {2}))
    add(
        Case(
            "plan: simpo-gamma on kto",
            ["plan", q, "--freeze", "vision", "--objective", "kto", "--simpo-gamma", "1"],
            {2},
        )
    )
    add(Case("usage: unknown command", ["frobnicate"], {2}))
    add(Case("usage: unknown option", ["eval", q, "--data", data, "--frob"], {2}))
    return c


def _json_ok(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _bad_rows(n: int) -> Callable[[Result, Path], list[str]]:
    def check(r: Result, d: Path) -> list[str]:
        try:
            report = json.loads(r.stdout)
        except ValueError:
            return ["--json: stdout is not one JSON object"]
        found = len(report.get("bad_rows", [])) + len(report.get("over_limit", []))
        return (
            []
            if (report.get("skipped"), report.get("rows"), found) == (n, 1, n)
            else [
                f"--json: expected {n} bad row(s) and 1 usable, got skipped={report.get('skipped')} "
                f"rows={report.get('rows')} listed={found}"
            ]
        )

    return check


def _report_complete(name: str) -> Callable[[Result, Path], list[str]]:
    def check(r: Result, d: Path) -> list[str]:
        folder = d / name
        missing = [f for f in ("predictions.jsonl", "report.json", "report.html") if not (folder / f).is_file()]
        return [f"-o {name}: missing {', '.join(missing)}"] if missing else []

    return check


# ---------------------------------------------------------------------------------------------
# running and judging


def run_case(case: Case, d: Path) -> Result:
    t0 = time.time()
    try:
        done = subprocess.run(
            [str(EXE), *case.argv],
            cwd=d,
            env=ENV,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=PER_CASE_TIMEOUT,
            input=case.stdin,
            stdin=subprocess.DEVNULL if case.stdin is None else None,
        )
        result = Result(case, done.returncode, done.stdout, done.stderr, time.time() - t0)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        result = Result(case, -9, out, err, time.time() - t0, [f"timed out after {PER_CASE_TIMEOUT}s"])
    judge(result, d)
    return result


def _leftovers(target: Path) -> list[str]:
    parent = target.parent
    if not parent.is_dir():
        return []
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{target.name}.")]


def judge(r: Result, d: Path) -> None:
    c, p = r.case, r.problems
    err_lines = [line for line in r.stderr.splitlines() if line.strip()]
    if r.rc not in c.expect:
        p.append(f"exit {r.rc}, expected {'/'.join(map(str, sorted(c.expect)))}")
    if "Traceback" in r.stderr or "Traceback" in r.stdout:
        p.append("traceback")
    mode = c.mode
    if mode == "auto" or (mode in ("report", "budget") and r.rc in (0, 3)) or (mode == "report" and r.rc == 2):
        mode = "ok" if r.rc == 0 else "error"
    if mode == "ok":
        ours = [
            line
            for line in err_lines
            if line.startswith("vlmsurgeon: warning:")
            or any(line.startswith(x) for x in c.extra_ok)
            or (c.allow_errors and line.startswith("vlmsurgeon: error: "))
        ]
        strange = [line for line in err_lines if line not in ours]
        if strange:
            p.append(
                f"stray stderr line(s): {strange[0][:160]!r}" + (f" (+{len(strange) - 1})" if len(strange) > 1 else "")
            )
        if c.allow_errors:
            for line in err_lines:
                if line.startswith("vlmsurgeon: error: ") and not ERROR_LINE.match(line):
                    p.append(f"error line without (try: …): {line[:160]!r}")
    elif mode in ("error", "report"):
        errors = [line for line in err_lines if line.startswith("vlmsurgeon: error: ")]
        others = [
            line
            for line in err_lines
            if not line.startswith("vlmsurgeon: error: ") and not line.startswith("vlmsurgeon: warning:")
        ]
        if len(errors) != 1:
            p.append(f"{len(errors)} error lines on stderr, expected 1")
        elif not ERROR_LINE.match(errors[0]):
            p.append(f"error line not 'what (try: hint)': {errors[0][:160]!r}")
        if others:
            p.append(
                f"stray stderr line(s): {others[0][:160]!r}" + (f" (+{len(others) - 1})" if len(others) > 1 else "")
            )
        if mode == "report" and r.rc == 1 and not r.stdout.strip():
            p.append("exit 1 but no report on stdout")
        if mode == "error" and r.rc == 2 and r.stdout.strip() and not c.check:
            p.append(f"stdout not empty on a refusal: {r.stdout.strip().splitlines()[0][:100]!r}")
    elif mode == "budget":
        strange = [
            line
            for line in err_lines
            if not (
                line.startswith("vlmsurgeon: error: ")
                or line.startswith("vlmsurgeon: budget violated: ")
                or line.startswith("vlmsurgeon: warning:")
            )
        ]
        if strange:
            p.append(
                f"stray stderr line(s): {strange[0][:160]!r}" + (f" (+{len(strange) - 1})" if len(strange) > 1 else "")
            )
        for line in err_lines:
            if line.startswith("vlmsurgeon: error: ") and not ERROR_LINE.match(line):
                p.append(f"error line not 'what (try: hint)': {line[:160]!r}")
        if r.rc == 1 and not any(line.startswith("vlmsurgeon: budget violated: ") for line in err_lines):
            p.append("exit 1 without a 'budget violated' line")
        if r.rc == 2 and not any(line.startswith("vlmsurgeon: error: ") for line in err_lines):
            p.append("exit 2 without an error line")
    for line in err_lines:  # library chatter, whatever the exit
        if line.startswith("vlmsurgeon:"):
            continue
        if THIRD_PARTY.search(line) and not any(line.startswith(x) for x in c.extra_ok):
            p.append(f"third-party line on stderr: {line[:160]!r}")
            break
    for s in c.stderr_has:
        if s not in r.stderr:
            p.append(f"stderr does not mention {s!r}")
    for s in c.stderr_lacks:
        if s in r.stderr:
            p.append(f"stderr mentions {s!r}")
    for s in c.stdout_has:
        if s not in r.stdout:
            p.append(f"stdout does not mention {s!r}")
    if c.out and r.rc != 0:
        target = Path(c.out) if c.out.startswith("/") else d / c.out
        try:
            if target.exists():
                p.append(f"{c.out[:60]} exists after a refusal")
            left = _leftovers(target)
            if left:
                p.append(f"leftovers beside {c.out[:60]}: {left[:3]}")
        except OSError:
            pass
    if c.junit:
        path = d / c.junit
        if not path.is_file():
            p.append(f"--junit {c.junit} not written")
        else:
            try:
                ET.parse(path)
            except ET.ParseError as exc:
                p.append(f"--junit {c.junit} is not XML ({exc})")
    if (d / "REMOTE_CODE_RAN").exists():
        p.append("REMOTE CODE RAN")
        (d / "REMOTE_CODE_RAN").unlink()
    if c.check:
        p.extend(c.check(r, d))


def main() -> int:
    parser = argparse.ArgumentParser(description="vlmsurgeon fault sweep (the installed CLI, as a subprocess)")
    parser.add_argument("-k", default="", help="run only cases whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", metavar="FILE", help="also write every result here")
    args = parser.parse_args()
    if not EXE.is_file():
        sys.exit(f"no CLI at {EXE}")
    d = Path(tempfile.mkdtemp(prefix="vlms-sweep-"))
    t0 = time.time()
    results: list[Result] = []
    try:
        build_fixtures(d)
        todo = [case for case in cases(d) if args.k in case.name]
        with cf.ThreadPoolExecutor(max(1, min(args.jobs, 2))) as pool:
            for r in pool.map(lambda case: run_case(case, d), todo):
                results.append(r)
                verdict = "ok" if not r.problems else "BROKEN: " + "; ".join(r.problems)
                print(_short(f"[{r.seconds:5.1f}s] {r.case.name}: {verdict}"), flush=True)
    finally:
        if args.keep:
            print(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)
    broken = [r for r in results if r.problems]
    causes: dict[str, list[Result]] = {}
    for r in broken:
        causes.setdefault(_cause(r), []).append(r)
    for cause, group in causes.items():
        print(f"\ncause: {cause} ({len(group)} case(s))")
        for r in group:
            lines = r.stderr.strip().splitlines()[:3]
            print(
                _short(
                    f"- {r.case.name}\n  argv: vlmsurgeon {' '.join(r.case.argv)}\n  exit: {r.rc}\n  why: "
                    + "; ".join(r.problems)
                    + "".join(f"\n  stderr: {line[:300]}" for line in lines)
                )
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {
                        "name": r.case.name,
                        "argv": r.case.argv,
                        "rc": r.rc,
                        "stderr": r.stderr[-3000:],
                        "stdout": r.stdout[-1000:],
                        "problems": r.problems,
                        "seconds": round(r.seconds, 1),
                    }
                    for r in results
                ],
                indent=1,
            )
        )
    print(
        f"\n{len(results)} cases: {len(results) - len(broken)} ok, {len(broken)} broken "
        f"({len(causes)} causes)  [{time.time() - t0:.0f}s]"
    )
    return 1 if broken else 0


def _short(text: str) -> str:
    """LONG names shown as x{300}."""
    return re.sub(r"x{20,}", lambda m: f"x{{{len(m.group())}}}", text)


def _cause(r: Result) -> str:
    """A coarse cause key: the first problem with its figures and quoted text taken out."""
    if any("REMOTE CODE RAN" in x or "code from the model repo" in x or "--trust-remote-code" in x for x in r.problems):
        return "remote code not refused up front"
    unhandled = re.search(r"vlmsurgeon: error: (\w+(?:Error|Exception)): (\[Errno \d+\])?", r.stderr)
    if unhandled:  # main()'s fallback for an exception nobody turned into a VlmSurgeonError
        return f"unhandled {unhandled.group(1)} {unhandled.group(2) or ''}"
    command = " ".join(r.case.argv[:2] if r.case.argv[0] in ("data", "budget") else r.case.argv[:1])
    first = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "…", r.problems[0])
    return f"{command}: {first}"


if __name__ == "__main__":
    sys.exit(main())
