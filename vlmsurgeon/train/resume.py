"""`RUN/run.json`: what a run was started with (base, preset as resolved, data hash, every option),
written before training. `--resume` compares against it, so a resumed run goes on training what
its checkpoints hold, or says what changed (exit 2) unless the user names the keys they mean to
change (`--resume-changed`); and checks the checkpoint's files before any weight is loaded."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmsurgeon import __version__
from vlmsurgeon.errors import BadInput
from vlmsurgeon.fsutil import honour_umask

from .runconfig import KNOBS
from .runlock import COMPLETE, warn

RUN_FILE = "run.json"
# What trains, or how: changed on resume, the checkpoint and the record would disagree (or the
# optimizer state would not load at all).
FIXED = (
    "base",
    "objective",
    "from_run",
    "preset",
    "data",
    "quantize",
    "dtype",
    "seq_len",
    "batch_size",
    "grad_accum",
    "lr",
    "seed",
    "warmup_ratio",
    "world_size",
    "image_root",
    "max_pixels",
    "min_pixels",
    "image_size",
    "video_frames",
    "video_fps",
    "packing",
)
# Everything else (steps, epochs, save_every, eval_data, strict_grads, ...) is what a resume may
# change: how long, how often, what is watched. Those changes are recorded, not refused.
_PRESET_LABELS = ("name", "description")  # a preset's name is not what it trains


def allowed_changes(keys: str | None, resume: bool) -> set[str]:
    """`--resume-changed lr,data`: the FIXED keys the user means to change on this resume."""
    if not keys:
        return set()
    if not resume:
        raise BadInput("--resume-changed only applies with --resume", "add --resume, or drop --resume-changed")
    names = {k.strip().replace("-", "_") for k in keys.split(",") if k.strip()}
    unknown = sorted(names - set(FIXED))
    if unknown:
        raise BadInput(f"--resume-changed: unknown key(s) {', '.join(unknown)}", "valid: " + ", ".join(FIXED))
    return names


def run_inputs(opts: Any, source: Any, preset: Any, data: Any, dtype: str) -> dict[str, Any]:
    """Every option, with the model, data and preset as resolved (paths absolute)."""
    ref = source.ref
    exclude = {"model", "output", "data", "objective", "from_run", "precompute_ref", *KNOBS}
    if not opts.packing:  # recorded only when on: the records of runs without it stay as they were
        exclude.add("packing")
    inputs = opts.model_dump(mode="json", exclude=exclude)
    if opts.objective != "sft":  # an SFT run's record stays as it was before objectives existed
        from .grpo import grpo_record
        from .preference import from_record, resolved_knobs

        knobs = grpo_record(opts) if opts.objective == "grpo" else resolved_knobs(opts)
        inputs["objective"] = {"name": opts.objective, **knobs}
        inputs["from_run"] = from_record(opts.from_run)
    inputs.update(
        base={
            "reference": str(ref.path.resolve()) if ref.path else ref.text,
            "revision": ref.revision,
            "model_type": source.model_type,
        },
        preset=preset.model_dump(mode="json"),
        data={"path": str(Path(data.path).resolve()), "sha256": data.sha256},
        image_root=str(Path(opts.image_root).resolve()) if opts.image_root else None,
        dtype=dtype,
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
    )
    return inputs


def _key(name: str, value: Any) -> Any:
    """What is compared: the data by content, the base by reference, the preset by what it trains."""
    if isinstance(value, dict) and name == "data":
        return value.get("sha256")
    if isinstance(value, dict) and name == "base":
        return value.get("reference"), value.get("revision")
    if isinstance(value, dict) and name == "preset":
        return {k: v for k, v in value.items() if k not in _PRESET_LABELS}
    return value


def _show(name: str, value: Any) -> str:
    if isinstance(value, dict) and name == "data":
        return f"{value.get('path')} (sha256 {str(value.get('sha256'))[:12]}…)"
    if isinstance(value, dict) and name == "base":
        return str(value.get("reference")) + (f"@{value['revision']}" if value.get("revision") else "")
    if isinstance(value, dict) and name == "preset":
        return f"'{value.get('name')}'"
    return json.dumps(value)


def differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    return {
        k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if _key(k, old.get(k)) != _key(k, new.get(k))
    }


def _read(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: unreadable ({exc})", f"delete {path} to resume without the check") from exc
    if not isinstance(record, dict) or not isinstance(record.get("inputs"), dict):
        raise BadInput(f"{path}: not a vlmsurgeon run record", f"delete {path} to resume without the check")
    return record


def check_resume(run_dir: Path, inputs: dict[str, Any], allowed: set[str], step: int) -> list[dict[str, Any]]:
    """The run's resume history with this resume added; exit 2 when a FIXED input changed that
    `allowed` does not name."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        warn(
            f"{run_dir} has no {RUN_FILE} (started by an older vlmsurgeon): resuming without checking "
            "that the options match the ones it was started with"
        )
        return [{"step": step, "changed": None}]
    record = _read(path)
    changed = differences(record["inputs"], inputs)
    refused = [k for k in changed if k in FIXED and k not in allowed]
    if refused:
        said = "; ".join(f"{k} {_show(k, changed[k][0])} → {_show(k, changed[k][1])}" for k in refused)
        raise BadInput(
            f"--resume: {run_dir} was started with other inputs: {said}",
            f"resume with the options it was started with, or pass --resume-changed "
            f"{','.join(refused)} to train on with the new ones (recorded in vlmsurgeon.json)",
        )
    return [*record.get("resumed", []), {"step": step, "changed": changed}]


def check_steps(run_dir: Path, checkpoint: Path, steps: int | None) -> None:
    """Exit 2 when `--steps` asks for no more steps than the checkpoint has done: Trainer would
    train one more step past the end (at learning rate 0) and write the run's outputs again.
    Without --steps the run is as long as its epochs make it."""
    done = int(checkpoint.name.split("-")[-1])
    if steps is None or steps > done:
        return
    left = "; nothing left to train" if steps == done else ""
    raise BadInput(
        f"--steps {steps}: run '{run_dir}' has already done {done} steps ({checkpoint.name}){left}",
        f"pass --steps above {done} to train it on, or another -o to start a new run",
    )


def write_inputs(run_dir: Path, inputs: dict[str, Any], resumed: list[dict[str, Any]]) -> None:
    """RUN/run.json, atomically (a temporary file beside it, renamed), under the user's umask."""
    record = {"vlmsurgeon": __version__, "inputs": inputs, "resumed": resumed}
    fd, tmp = tempfile.mkstemp(prefix=f".{RUN_FILE}.", dir=run_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(record, indent=2) + "\n")
        honour_umask(Path(tmp))
        os.replace(tmp, run_dir / RUN_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "truncated"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return "damaged or truncated (its header runs past the end)"
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            return "damaged (header is not JSON)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    return "truncated" if ends and 8 + length + max(ends) > size else None


def _file_problem(path: Path) -> str | None:
    """Cheap checks that find a truncated file without loading it: torch.save writes a zip whose
    directory is at its end; a safetensors header says where its data ends; JSON parses."""
    try:
        if path.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path):
                return None
        if path.suffix == ".safetensors":
            return _safetensors_problem(path)
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except (OSError, zipfile.BadZipFile, ValueError, struct.error) as exc:
        return f"unreadable: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
    return None


def damaged(checkpoint: Path, why: str) -> BadInput:
    """The error for a checkpoint marked complete whose files do not load."""
    older = sorted(
        (
            p
            for p in checkpoint.parent.glob("checkpoint-*")
            if (p / COMPLETE).is_file() and int(p.name.split("-")[-1]) < int(checkpoint.name.split("-")[-1])
        ),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    then = (
        f"--resume then continues from {older[-1].name}"
        if older
        else "no earlier complete checkpoint: start again without --resume"
    )
    return BadInput(f"--resume: checkpoint {checkpoint} is damaged ({why})", f"delete it (rm -r {checkpoint}); {then}")


def check_checkpoint(checkpoint: Path) -> None:
    """Before any weight is loaded: every file of the checkpoint readable."""
    for path in sorted(checkpoint.iterdir()):
        problem = _file_problem(path) if path.is_file() else None
        if problem:
            raise damaged(checkpoint, f"{path.name} {problem}")


@contextlib.contextmanager
def reading_checkpoint(checkpoint: str | None) -> Iterator[None]:
    """What Trainer raises while loading a checkpoint's state, said as a bad checkpoint (exit 2):
    damaged data, or state that does not fit this run (options changed, no run.json to tell)."""
    try:
        yield
    except (ValueError, KeyError) as exc:
        if checkpoint is None:
            raise
        raise BadInput(
            f"--resume: checkpoint {checkpoint} does not fit this run ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})",
            "resume with the options the run was started with",
        ) from exc
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as exc:
        if checkpoint is None:
            raise
        raise damaged(Path(checkpoint), str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__) from exc
