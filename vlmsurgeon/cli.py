"""Command line: each command parses flags, calls one library function, hands the result to
`render`. Heavy imports (torch, transformers) happen inside the commands, so `--help` is fast."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .errors import VlmSurgeonError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Inspect, freeze, fine-tune (QLoRA), merge and guard vision-language models.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"vlmsurgeon {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """vlmsurgeon: see what is inside a VLM, decide what trains, train it, ship it."""


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import warnings

    warnings.filterwarnings("ignore")


@app.command()
def inspect(
    model: str = typer.Argument(..., help="Hub id, local model directory, or config.json."),
    depth: int = typer.Option(4, "--depth", "-d", min=0, help="Tree depth to print."),
    as_json: bool = typer.Option(False, "--json", help="Print the breakdown as JSON only."),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Allow code from the model repo (auto_map)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision."),
) -> None:
    """Module tree and parameters by component (vision, merger, lm, head), no weights needed."""
    _quiet_libraries()
    from .inspection import inspect_model
    from .render import print_inspect, print_json

    result = inspect_model(model, trust_remote_code=trust_remote_code, revision=revision)
    if as_json:
        print_json(result.to_json())
    else:
        print_inspect(result, depth)


@app.command()
def tiny(
    model_type: str = typer.Argument(..., help="Family, e.g. qwen2_vl, llava, paligemma."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write (must not exist)."),
    seed: int = typer.Option(0, "--seed", help="Random seed for the weights."),
) -> None:
    """Write a tiny random-weight VLM with a working processor, built offline (for tests/CI)."""
    _quiet_libraries()
    from .tiny import build_tiny

    path = build_tiny(model_type, out, seed=seed)
    print(path)


def main() -> None:
    """Entry point: one line and an exit code for our errors; tracebacks only when debugging."""
    debug = os.environ.get("VLMSURGEON_DEBUG") == "1"
    try:
        app()
    except VlmSurgeonError as exc:
        if debug:
            raise
        print(f"vlmsurgeon: error: {exc.line()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("vlmsurgeon: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug or an unexpected library failure: still one line
        if debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"vlmsurgeon: error: {type(exc).__name__}: {first} "
              "(try: VLMSURGEON_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
