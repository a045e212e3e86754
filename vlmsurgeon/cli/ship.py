"""Commands that ship a model: `merge`, `diff`, `extract`, `graft`, and `tiny` (the random model tests
and CI start from). Registered on the app by `cli.py`, like `cli_try.py`'s commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from vlmsurgeon.quiet import quiet_libraries as _quiet_libraries


def _size(text: str) -> int:
    from vlmsurgeon.plan.amounts import parse_amount

    try:
        return int(parse_amount(text.replace("iB", "IB"), "memory")[0])
    except ValueError as exc:
        from vlmsurgeon.errors import BadInput

        raise BadInput(f"--max-shard-size {text}: {exc}", "e.g. --max-shard-size 2GB") from exc


def _components(text: str | None) -> list[str] | None:
    from vlmsurgeon.errors import BadInput
    from vlmsurgeon.model.components import ALL_COMPONENTS

    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_COMPONENTS]
    if unknown or not names:
        raise BadInput(
            f"--only: unknown component(s) {', '.join(unknown) or '(none)'}", "valid: " + ", ".join(ALL_COMPONENTS)
        )
    return names


def merge(
    source: Path = typer.Argument(..., help="Run directory (finetune -o) or a peft adapter directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Export directory (built beside it, renamed at the end)."),
    base: str | None = typer.Option(None, "--base", help="Base checkpoint, when not the run's own."),
    dtype: str = typer.Option("bf16", "--dtype", help="bf16, fp16 or fp32."),
    target: str | None = typer.Option(
        None,
        "--target",
        help="QLoRA runs and adapters: merge into the NF4-dequantized weights the adapter "
        "was trained against (dequantized; the default where the base is known to be "
        "4-bit) or into the original weights (original).",
    ),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest output shard."),
    only: str | None = typer.Option(None, "--only", help="Merge/export only these components, e.g. lm."),
    adapter_only: bool = typer.Option(False, "--adapter-only", help="Export a (subset) adapter, not a checkpoint."),
    verify: bool = typer.Option(False, "--verify", help="Probe the export against the model as trained."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT folder (never a file)."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print one JSON object: out, kind, components, dtype, target, and the verify result when run.",
    ),
) -> None:
    """Merge adapters into the base and export a checkpoint that plain transformers loads."""
    _quiet_libraries()
    from vlmsurgeon.errors import BadInput, CheckFailed
    from vlmsurgeon.ship.merge import DTYPES, TARGETS, MergePlan, adapter_warning, export_adapter
    from vlmsurgeon.ship.merge import merge as run_merge

    if dtype not in DTYPES:
        raise BadInput(f"--dtype {dtype}: unknown", "one of " + ", ".join(DTYPES))
    if target is not None and target not in TARGETS:
        raise BadInput(f"--target {target}: unknown", "one of " + ", ".join(TARGETS))
    components = _components(only)
    if adapter_only:
        if not components:
            raise BadInput("--adapter-only needs --only", "e.g. --adapter-only --only lm")
        if verify:
            raise BadInput(
                "--adapter-only writes an adapter, which --verify cannot check",
                "drop --verify, or merge without --adapter-only",
            )
        summary = {
            "out": str(out),
            "kind": "adapter",
            **export_adapter(source, out, components, base=base, force=force),
        }
        if as_json:
            print(json.dumps(summary))
            return
        from .render import print_wrapped

        print_wrapped(
            f"{out}: exported the {','.join(components)} part of the adapter, "
            f"{summary['lora_modules']} LoRA modules ({summary['tensors']} tensors)"
        )
        return
    plan = MergePlan(target=target, dtype=dtype, only=components, max_shard_bytes=_size(max_shard_size))
    summary = {"out": str(out), "kind": "checkpoint", **run_merge(source, out, base=base, plan=plan, force=force)}
    warning = adapter_warning(source, summary)
    if warning:
        print(f"vlmsurgeon: warning: {warning}", file=sys.stderr)
    if not as_json:
        from .render import print_wrapped

        print_wrapped(
            f"{out}: merged {summary['lora_modules_merged']} LoRA modules and {summary['full_tensors']} "
            f"trained tensors into the {summary['target']} weights, {summary['shards']} shard(s), {dtype}"
        )
    verdict = None
    if verify:
        from vlmsurgeon.ship.verify import verify_export

        verdict = verify_export(out, source, base, summary)
    if as_json:
        print(json.dumps({**summary, "verify": verdict.to_json() if verdict else None}))
    elif verdict:
        print("\n".join(verdict.lines(dtype)))
    if verdict and not verdict.ok:
        raise CheckFailed(
            f"verify: {verdict.mismatch.tensor} in the export is not the base and run's merge rounded to {dtype}",
            "merge again into a new -o; if it persists, run with VLMSURGEON_DEBUG=1 and report it",
        )


def diff(
    a: Path = typer.Argument(..., help="Checkpoint (or run directory)."),
    b: Path = typer.Argument(..., help="Checkpoint or run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the diff as JSON only."),
) -> None:
    """What changed between two checkpoints (or a checkpoint and a run), per component."""
    _quiet_libraries()
    from vlmsurgeon.ship.diff import diff as run_diff

    from .render import print_diff, print_json

    result = run_diff(a, b)
    if as_json:
        print_json(result.to_json())
    else:
        print_diff(result)


def extract(
    model: Path = typer.Argument(..., help="Model directory, or a finetune run / adapter (merged first, beside OUT)."),
    component: str = typer.Option("lm", "--component", help="What to take out: lm (the language model and its head)."),
    out: Path = typer.Option(..., "--out", "-o", help="Export directory (built beside it, renamed at the end)."),
    verify: bool = typer.Option(
        False, "--verify", help="A text-only prompt through the VLM and the export, in fp32: ok within 1e-5."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing OUT folder; write a family whose text path is not the plain LM."
    ),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest output shard."),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object: out, architecture, tensors, tied, and the verify result when run."
    ),
) -> None:
    """Write a VLM's language model as its own checkpoint: AutoModelForCausalLM and AutoTokenizer load it."""
    _quiet_libraries()
    from vlmsurgeon.errors import CheckFailed
    from vlmsurgeon.ship.extract import extract as run_extract

    summary = run_extract(
        model, out, component=component, force=force, verify=verify, max_shard_bytes=_size(max_shard_size)
    )
    if summary["forced"]:
        print(f"vlmsurgeon: warning: written with --force: {summary['forced']}", file=sys.stderr)
    verdict = summary.get("verify")
    if as_json:
        print(json.dumps(summary))
    else:
        from vlmsurgeon.ship.textprobe import line

        from .render import print_wrapped

        head = "head tied to the embeddings" if summary["tied"] else "own head"
        print_wrapped(
            f"{out}: the {summary['family']} language model as {summary['architecture']}, {summary['tensors']} "
            f"tensors ({summary['params']:,} parameters), {head}, {summary['dtype']}, {summary['shards']} shard(s)"
        )
        if summary["left_out"]:
            print_wrapped(
                f"left out: {len(summary['left_out'])} LM tensor(s) outside its decoder and head "
                f"({', '.join(summary['left_out'][:3])})"
            )
        if verdict:
            print_wrapped(line(verdict))
    if verdict and not verdict["ok"]:
        raise CheckFailed(
            f"verify: the extracted LM's logits differ from the VLM's by {verdict['max_abs_logit_delta']:.3g}",
            "see docs/extract.md for the families whose text path is not the plain LM",
        )


def graft(
    base: Path = typer.Argument(..., help="The checkpoint that receives the components (a model directory)."),
    lm: Path | None = typer.Option(
        None,
        "--lm",
        help="Language model and head from FROM: a text model (as extract writes) or a VLM of BASE's family.",
    ),
    vision: Path | None = typer.Option(None, "--vision", help="Vision encoder from FROM, a VLM of BASE's family."),
    merger: Path | None = typer.Option(None, "--merger", help="Merger/projector from FROM, a VLM of BASE's family."),
    out: Path = typer.Option(..., "--out", "-o", help="Export directory (built beside it, renamed at the end)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT folder (never a file)."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest output shard."),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object: out, base, and per component its source and tensors grafted."
    ),
) -> None:
    """BASE with components from other checkpoints; every tensor must be found and fit, else nothing is written."""
    _quiet_libraries()
    from vlmsurgeon.ship.graft import graft as run_graft

    donors = {name: path for name, path in (("lm", lm), ("vision", vision), ("merger", merger)) if path is not None}
    summary = run_graft(base, out, donors, force=force, max_shard_bytes=_size(max_shard_size))
    if as_json:
        print(json.dumps(summary))
        return
    from .render import print_wrapped

    parts = [f"{name} from {c['from']} ({c['tensors']} tensors)" for name, c in summary["components"].items()]
    print_wrapped(f"{out}: {base} with {', '.join(parts)}; {summary['shards']} shard(s)")
    for name, c in summary["components"].items():
        for key, rows in c["vocab_rows_kept"].items():
            print_wrapped(f"{name}: kept BASE's last {rows} rows of {key} (beyond FROM's vocabulary)")
        if c.get("left"):
            print_wrapped(f"{name}: kept BASE's {len(c['left'])} LM tensor(s) the text model has no place for")


def tiny(
    model_type: str | None = typer.Argument(None, help="Family, e.g. qwen2_vl, llava, paligemma."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Directory to write (must not exist)."),
    seed: int = typer.Option(0, "--seed", help="Random seed for the weights."),
    list_families: bool = typer.Option(False, "--list", help="List the families tiny builds."),
) -> None:
    """Write a tiny random-weight VLM with a working processor, built offline (for tests/CI)."""
    from vlmsurgeon.errors import BadInput

    if list_families:
        from vlmsurgeon.tiny.families import FAMILIES

        from .render import print_families

        print_families(FAMILIES)
        return
    if model_type is None or out is None:
        raise BadInput("tiny: give a family and -o DIR, or --list", "e.g. vlmsurgeon tiny qwen2_vl -o tiny-qwen")
    _quiet_libraries()  # transformers' "Writing model shards" bar, for a sub-second save, is noise
    from vlmsurgeon.tiny.build import build_tiny

    path = build_tiny(model_type, out, seed=seed)
    print(path)


def register(app: Any) -> None:
    app.command()(merge)
    app.command()(diff)
    app.command()(extract)
    app.command()(graft)
    app.command()(tiny)
