"""The whole chain on one tiny family, as a user runs it: `tiny` build → `finetune` 2 steps on the
default path (`--freeze vision`, 4-bit LM) → `merge --verify` → reload in plain transformers
(`AutoModelForImageTextToText` + `AutoProcessor`) → one image + text forward.

    python -m tests.family_sweep [FAMILY ...]     # all families `tiny` lists when none given

Used by tests/test_family_sweep.py; runnable alone to check one family while adding it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shapes_data(directory: Path) -> Path:
    if not (directory / "train.jsonl").is_file():
        subprocess.run(
            [sys.executable, str(ROOT / "examples" / "make_shapes.py"), str(directory)], check=True, capture_output=True
        )
    return directory / "train.jsonl"


def lm_linear_kinds(applied) -> dict[str, set[bool]]:
    """For every component, whether its Linear layers are 4-bit (a tied head is not a Linear4bit)."""
    import bitsandbytes as bnb
    import torch

    model = applied.model.get_base_model() if hasattr(applied.model, "get_base_model") else applied.model
    # transformers keeps these in fp32 on purpose (e.g. Mistral Large 4's indexer.weights_proj)
    keep = [
        *(getattr(model, "_keep_in_fp32_modules", None) or []),
        *(getattr(model, "_keep_in_fp32_modules_strict", None) or []),
    ]
    kinds: dict[str, set[bool]] = {}
    for name, module in applied.model.named_modules():
        if ".lora_" in name or ".base_layer" in name or any(k in name.split(".") or name.endswith(k) for k in keep):
            continue
        base = getattr(module, "base_layer", None)
        layer = base if base is not None else module
        if isinstance(layer, (torch.nn.Linear, bnb.nn.Linear4bit)):
            kinds.setdefault(applied.component(name), set()).add(isinstance(layer, bnb.nn.Linear4bit))
    return kinds


def run_chain(family: str, work: Path, data: Path) -> dict[str, object]:
    """Raises on the first failing step; returns what each step measured."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmsurgeon.data.collate import Collator
    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.ship.merge import MergePlan, load_trained, merge
    from vlmsurgeon.ship.verify import verify
    from vlmsurgeon.tiny.build import build_tiny, video_placeholder
    from vlmsurgeon.tiny.families import FAMILIES
    from vlmsurgeon.train.loop import finetune
    from vlmsurgeon.train.runconfig import RunOptions

    facts: dict[str, object] = {}
    step = "tiny"
    try:
        model_dir = build_tiny(family, work / "model")
        step = "finetune"
        options = dict(
            model=str(model_dir),
            data=str(data),
            output=str(work / "run"),
            freeze="vision",
            steps=2,
            batch_size=2,
            seq_len=1024,
            lr=1e-3,
        )
        options.update(_refused_then_fixed(family, options))
        facts.update(options.pop("facts", {}))
        result = finetune(RunOptions(**options))
        kinds = lm_linear_kinds(result.applied)
        facts["lm_4bit"] = kinds.get("lm") == {True}
        if not facts["lm_4bit"] and options.get("quantize") != "none":
            raise AssertionError(f"LM Linear layers not all 4-bit: {kinds}")
        if any(True in kinds.get(c, set()) for c in kinds if c != "lm"):
            raise AssertionError(f"a non-LM Linear is 4-bit: {kinds}")
        del result
        step = "merge"
        out = work / "export"
        summary = merge(work / "run", out, plan=MergePlan(dtype="bf16"))
        facts["lora_modules_merged"] = summary["lora_modules_merged"]
        step = "verify"
        verdict = verify(out, load_trained(work / "run", None), "bf16", summary["target"])
        facts["verify"] = verdict.logits["vs_reference"]
        facts["verify_rounding"] = verdict.logits["rounding"]
        if not verdict.ok:
            raise AssertionError("verify failed: " + " / ".join(verdict.lines()[:2]))
        step = "reload"
        model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(out)
        sample = next(s for s in load_dataset_rows(data).samples if s.images)
        batch = Collator(processor, 1024)([sample])
        batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch).logits
        if not torch.isfinite(logits).all():
            raise AssertionError("reloaded export gives non-finite logits")
        facts["logits"] = tuple(logits.shape)
        if video_placeholder(FAMILIES[family]):
            step = "video"
            facts["video_tokens"] = _video_forward(model, processor, data.parent)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SweepFailure)):
            raise
        from vlmsurgeon.errors import VlmSurgeonError

        text = exc.line() if isinstance(exc, VlmSurgeonError) else f"{type(exc).__name__}: {exc}"
        raise SweepFailure(f"{step}: {text.splitlines()[0][:300] if text else type(exc).__name__}") from exc
    return facts


def _refused_then_fixed(family: str, options: dict[str, object]) -> dict[str, object]:
    """A family with a known blocker must be refused up front on the default path (one line, before
    any weight loads); when the blocker names a setting that avoids it, the chain runs with it."""
    from vlmsurgeon.errors import BadInput
    from vlmsurgeon.model.support import UNSUPPORTED
    from vlmsurgeon.train.loop import finetune
    from vlmsurgeon.train.runconfig import RunOptions

    blocker = UNSUPPORTED.get(family)
    if blocker is None:
        return {}
    try:
        finetune(RunOptions(**options))
    except BadInput as exc:
        if "cannot train" not in exc.what:
            raise
    else:
        raise AssertionError(f"{family}: the default path was not refused up front")
    if not blocker.fix_option:
        raise SweepFailure(f"finetune: refused up front: {blocker.reason}")
    return {**dict(blocker.fix_option), "facts": {"with": blocker.fix}}


class SweepFailure(Exception):
    pass


def _video_forward(model, processor, folder: Path) -> int:
    """A family `tiny --list` shows as taking video: a `<video>` row passes the data pre-pass and
    the export runs it. Returns the row's video token count."""
    import json

    import torch

    from tests.test_formats import write_video
    from vlmsurgeon.data.check import check_rows
    from vlmsurgeon.data.collate import Collator
    from vlmsurgeon.data.rows import load_dataset_rows

    clip = folder / "clip.mp4"
    if not clip.is_file():
        write_video(clip, frames=8)
        (folder / "video.jsonl").write_text(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "<video>What moves?"},
                        {"role": "assistant", "content": "A red bar."},
                    ],
                    "videos": ["clip.mp4"],
                }
            )
            + "\n"
        )
    collator = Collator(processor, 8192, video_frames=4)
    report, rows = check_rows(load_dataset_rows(folder / "video.jsonl"), collator)
    if not rows:
        raise AssertionError(f"video row refused: {[str(b) for b in report.bad + report.over_limit]}")
    batch = collator(rows)
    batch.pop("labels")
    if not any("video" in k for k in batch) and not report.tokens["video"][0]:
        raise AssertionError("the video did not reach the model")
    with torch.no_grad():
        logits = model(**batch).logits
    if not torch.isfinite(logits).all():
        raise AssertionError("non-finite logits on the video row")
    return report.tokens["video"][0]


def sweep(families: list[str]) -> tuple[list[str], dict[str, str]]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    passed, failed = [], {}
    with tempfile.TemporaryDirectory(prefix="vlms-sweep-") as tmp:
        data = shapes_data(Path(tmp) / "shapes")
        for family in families:
            started = time.perf_counter()
            try:
                facts = run_chain(family, Path(tmp) / family, data)
            except SweepFailure as exc:
                failed[family] = str(exc)
                print(f"  FAIL {family}: {exc}", file=sys.stderr, flush=True)
                continue
            passed.append(family)
            print(f"  ok   {family} ({time.perf_counter() - started:.0f} s) {facts}", file=sys.stderr, flush=True)
    return passed, failed


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    from vlmsurgeon.tiny.families import FAMILIES

    families = sys.argv[1:] or sorted(FAMILIES)
    passed, failed = sweep(families)
    print(f"{len(passed)}/{len(families)} families train, merge and reload")
    for family, reason in failed.items():
        print(f"  {family}: {reason}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
