"""Command line: each command parses flags, calls one library function, hands the result to
`render`. Heavy imports (torch, transformers) happen inside the commands, so `--help` is fast."""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import typer

from vlmsurgeon import __version__
from vlmsurgeon.errors import VlmSurgeonError, offer_settings, withdraw_settings

from .options import GRPO, OBJECTIVE, REVISION_HELP, _default
from .ship import register as _register_ship
from .train import register as _register_train
from .use import TRUST_HELP
from .use import quiet_libraries as _quiet_libraries
from .use import register as _register_try


def _valueless_flags(params: list[Any]) -> list[Any]:
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""  # shown in the type column, where typer would print `<bool>`
    return params


class _Group(typer.core.TyperGroup):
    """Every group of the app: a flag takes no value, so its help row shows no type (typer's rich
    help prints `<bool>` after it, which reads as if the flag took one). Applied to each command
    as it is looked up, so it holds however the app is run (main, CliRunner, python -m)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _valueless_flags(super().get_params(ctx))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None and not isinstance(command, typer.core.TyperGroup):
            _valueless_flags([*command.params, command.get_help_option(ctx)])
        return command


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Inspect, freeze, fine-tune (QLoRA), merge and guard vision-language models.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


budget_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Parameter budgets for CI.")
app.add_typer(budget_app, name="budget")
data_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Training data: validation and token statistics.")
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        print(f"vlmsurgeon {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """vlmsurgeon: see what is inside a VLM, decide what trains, train it, ship it."""


@app.command()
def inspect(
    model: str = typer.Argument(..., help="Hub id, local model directory, or config.json."),
    depth: int = typer.Option(4, "--depth", "-d", min=0, help="Tree depth to print."),
    as_json: bool = typer.Option(False, "--json", help="Print the breakdown as JSON only."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
    revision: str | None = typer.Option(None, "--revision", help=REVISION_HELP),
) -> None:
    """Module tree and parameters by component (vision, merger, lm, head), no weights needed."""
    _quiet_libraries()
    from vlmsurgeon.model.inspection import inspect_model

    from .render import checkpoint_warnings, print_inspect, print_json

    result = inspect_model(model, trust_remote_code=trust_remote_code, revision=revision)
    if as_json:
        print_json(result.to_json())
    else:
        print_inspect(result, depth)
    for line in checkpoint_warnings(result.checkpoint):
        print(f"vlmsurgeon: warning: {line}", file=sys.stderr)


@app.command()
def presets(
    name: str | None = typer.Argument(None, help="A built-in preset to show in full."),
) -> None:
    """List the built-in freeze presets, or show one."""
    from vlmsurgeon.recipe.preset import builtin_names, builtin_text, load_preset

    from .render import make_console, presets_table

    if name is None:
        make_console().print(presets_table([load_preset(n) for n in builtin_names()]))
        return
    load_preset(name)  # validates, and names the built-ins when `name` is unknown
    print(builtin_text(name) if name in builtin_names() else Path(name).read_text(), end="")


@app.command()
def plan(
    model: str | None = typer.Argument(None, help="Hub id, local model directory, or config.json."),
    preset: str | None = typer.Option(None, "--preset", "-p", help="Built-in name or YAML file."),
    freeze: str | None = typer.Option(None, "--freeze", help="Components to freeze, e.g. vision,merger."),
    seq_len: int | None = typer.Option(None, "--seq-len", help="Tokens per sample (text + image)." + _default(2048)),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Samples per step." + _default(1)),
    image_tokens: int | None = typer.Option(None, "--image-tokens", help="Image tokens per sample." + _default(256)),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", help="Pixel budget per image (Qwen-style): sets the image tokens."
    ),
    no_ckpt: bool = typer.Option(False, "--no-gradient-checkpointing", help="Estimate without it."),
    no_chunked: bool = typer.Option(
        False, "--no-chunked-loss", help="Price the full logits, as finetune --no-chunked-loss holds them."
    ),
    packing: bool = typer.Option(
        False,
        "--packing",
        help="Price packed sequences, as finetune --packing trains them: --seq-len real tokens each.",
    ),
    objective: str | None = OBJECTIVE["objective"],
    beta: float | None = OBJECTIVE["beta"],
    simpo_gamma: float | None = OBJECTIVE["simpo_gamma"],
    desirable_weight: float | None = OBJECTIVE["desirable_weight"],
    undesirable_weight: float | None = OBJECTIVE["undesirable_weight"],
    num_generations: int | None = GRPO["num_generations"],
    max_completion_length: int | None = GRPO["max_completion_length"],
    temperature: float | None = GRPO["temperature"],
    epsilon: float | None = GRPO["epsilon"],
    loss_type: str | None = GRPO["loss_type"],
    importance_sampling: str | None = GRPO["importance_sampling"],
    reward: list[str] | None = GRPO["reward"],
    completions_every: int | None = GRPO["completions_every"],
    config: Path | None = typer.Option(None, "--config", "-c", help="RUN.yaml with any of these options."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON only."),
    probe: bool = typer.Option(
        False,
        "--probe",
        help="Run one backward pass on a narrow replica and name the trainable parameters that get no gradient.",
    ),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
    revision: str | None = typer.Option(None, "--revision", help=REVISION_HELP),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="With --probe: exit 1 when a trainable parameter gets no gradient (as finetune's --strict-grads).",
    ),
    quantize: str | None = typer.Option(None, "--quantize", help="4bit or none, as finetune." + _default("4bit")),
    gpus: int | None = typer.Option(None, "--gpus", help="Scale-out: GPUs in the run (per-GPU memory)."),
    strategy: str | None = typer.Option(None, "--strategy", help="Scale-out: ddp, fsdp or zero3." + _default("ddp")),
    gpu_memory: str | None = typer.Option(
        None, "--gpu-memory", help="Scale-out: memory of one GPU." + _default("80GiB")
    ),
) -> None:
    """What would train, per component, and how much memory training needs. No weights needed."""
    _quiet_libraries()
    from vlmsurgeon.errors import BadInput, CheckFailed
    from vlmsurgeon.plan.memory import scale_request
    from vlmsurgeon.plan.objective import objective as plan_objective
    from vlmsurgeon.plan.plan import PlanSettings, plan_model
    from vlmsurgeon.train.grpo import grpo_record
    from vlmsurgeon.train.preference import resolved_knobs
    from vlmsurgeon.train.runconfig import merge_options

    from .render import print_json, print_plan

    opts = merge_options(
        config,
        model=model,
        preset=preset,
        freeze=freeze,
        seq_len=seq_len,
        batch_size=batch_size,
        image_tokens=image_tokens,
        max_pixels=max_pixels,
        gradient_checkpointing=False if no_ckpt else None,
        quantize=quantize,
        chunked_loss=False if no_chunked else None,
        packing=packing or None,
        objective=objective,
        beta=beta,
        simpo_gamma=simpo_gamma,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        temperature=temperature,
        epsilon=epsilon,
        loss_type=loss_type,
        importance_sampling=importance_sampling,
        reward=reward or None,
        completions_every=completions_every,
    )
    scale = scale_request(gpus, strategy, gpu_memory)
    probe = probe or opts.probe
    if strict and not probe:  # before the model is built: --strict alone would check nothing
        raise BadInput(
            "plan --strict judges the gradient probe, and no probe was asked for",
            "add --probe (or probe: true in the config), or drop --strict",
        )
    from_pixels = opts.max_pixels if image_tokens is None else None  # an explicit --image-tokens wins
    settings = PlanSettings(
        opts.seq_len,
        opts.batch_size,
        opts.image_tokens,
        opts.gradient_checkpointing,
        max_pixels=from_pixels,
        chunked_loss=opts.chunked_loss,
        packing=opts.packing,
        # the knobs finetune would use
        objective=plan_objective(
            opts.objective, grpo_record(opts) if opts.objective == "grpo" else resolved_knobs(opts)
        ),
    )
    result = plan_model(
        opts.require_model(),
        preset=opts.preset,
        freeze=opts.freeze,
        settings=settings,
        trust_remote_code=trust_remote_code,
        revision=revision,
        probe=probe,
        quantize=opts.quantize,
        scale=scale,
    )
    if as_json:
        print_json(result.to_json())
    else:
        print_plan(result)
    if strict and result.probe.report.dead_count:  # like a budget violation: the plan is out, the check failed
        raise CheckFailed(
            f"plan --strict: {result.probe.report.summary()}",
            "freeze those parameters (a preset / --freeze), or drop --strict",
        )


_register_train(app, data_app)  # finetune, data check
_register_ship(app)  # merge, diff, tiny


@budget_app.command("check")
def budget_check(
    budget: Path = typer.Argument(..., help="BUDGET.yaml: models, presets and limits."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON only."),
    junit: Path | None = typer.Option(None, "--junit", help="Also write a JUnit XML report."),
) -> None:
    """Check every limit of every model; exit 0 when all hold, 1 when any fails, 2 when the file
    is invalid or a model could not be checked (the others still are). --junit is always written."""
    _quiet_libraries()
    from vlmsurgeon.plan.budget import check_budget, check_junit_target, invalid_file_result, write_junit

    from .render import budget_table, make_console, print_json

    if junit:
        check_junit_target(junit)
    try:
        result = check_budget(budget)
    except VlmSurgeonError as exc:
        if junit:  # never leave an earlier run's report standing for this one
            write_junit(invalid_file_result(budget, exc), junit)
        raise
    if as_json:
        print_json(result.to_json())
    else:
        make_console().print(budget_table(result))
    for e in result.errors:
        if e.traceback and os.environ.get("VLMSURGEON_DEBUG") == "1":
            print(e.traceback, file=sys.stderr, end="")
        print(f"vlmsurgeon: error: {e.line()}", file=sys.stderr)
    for r in result.failures:
        print(
            f"vlmsurgeon: budget violated: {r.model}: {r.limit.key} = {r.figure:,} (limit {r.describe()})",
            file=sys.stderr,
        )
    if junit:
        write_junit(result, junit)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


_register_try(app)  # generate, chat, eval


# Settings a command takes from its file rather than a flag, as hints from shared code name them.
_FILE_SETTINGS = {
    "budget check": {"trust_remote_code": "set trust_remote_code: true on the entry"},
}


def _offer_settings(command: Any, path: str = "") -> None:
    """Wrap every command's callback so that, while it runs, shared code knows which settings
    (options, or keys of its file) that command offers: hints then name only what exists."""
    if hasattr(command, "commands"):  # a group (typer vendors click: duck-typed, not imported)
        for name, sub in command.commands.items():
            _offer_settings(sub, f"{path} {name}".strip())
        return
    if command.callback is None:
        return
    settings = {
        p.name: f"pass {max(p.opts, key=len)}" for p in command.params if p.param_type_name == "option" and p.name
    }
    settings.update(_FILE_SETTINGS.get(path, {}))
    inner = command.callback

    @functools.wraps(inner)
    def call(*args: object, **kwargs: object) -> object:
        token = offer_settings(settings)
        try:
            return inner(*args, **kwargs)
        finally:
            withdraw_settings(token)

    command.callback = call


def _usage_line(exc: typer.TyperException, root: Any) -> str:
    """click's usage error as one line: `inspect: no such option: --foo (try: vlmsurgeon inspect --help)`."""
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else _path_from_args(root, sys.argv[1:])
    message = " ".join(exc.format_message().split()).rstrip(".")
    message = message[:1].lower() + message[1:]
    command = path.partition(" ")[2]
    return f"{command + ': ' if command else ''}{message} (try: {path} --help)"


def _path_from_args(root: Any, args: list[str]) -> str:
    """The command the arguments name (`vlmsurgeon budget check`), for errors raised while
    parsing, before click has a context for it."""
    path, node = ["vlmsurgeon"], root
    for arg in args:
        node = getattr(node, "commands", {}).get(arg)
        if node is None:
            break
        path.append(arg)
    return " ".join(path)


def _fail(line: str, code: int, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    line = " ".join(part.strip() for part in line.splitlines() if part.strip())  # one line, always
    print(f"vlmsurgeon: error: {line}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    """Entry point: one line and an exit code for every failure (usage errors included);
    `VLMSURGEON_DEBUG=1` adds the traceback and keeps the exit code."""
    debug = os.environ.get("VLMSURGEON_DEBUG") == "1"
    command = typer.main.get_command(app)
    _offer_settings(command)
    try:
        code = command.main(prog_name="vlmsurgeon", standalone_mode=False)
    except typer.TyperException as exc:  # usage errors: unknown option, missing argument, bad value
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(2)  # a bare group: its help is already printed, as click does
        _fail(_usage_line(exc, command), 2, debug)
    except typer.Abort:
        _fail("aborted", 130, debug)
    except VlmSurgeonError as exc:
        _fail(exc.line(), exc.exit_code, debug)
    except KeyboardInterrupt:
        print("vlmsurgeon: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:  # any path a user typed may be too long: bad input
            first = str(exc).splitlines()[0] if str(exc) else ""
            _fail(f"{type(exc).__name__}: {first} (try: VLMSURGEON_DEBUG=1 for the traceback)", 3, debug)
        name = str(exc.filename or "")
        shown = name if len(name) <= 60 else f"{name[:40]}…{name[-12:]}"
        _fail(
            f"'{shown}': a name in this path is longer than the file system allows (255 bytes) "
            "(try: a shorter file or folder name)",
            2,
            debug,
        )
    except Exception as exc:  # a bug or an unexpected library failure: still one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        _fail(f"{type(exc).__name__}: {first} (try: VLMSURGEON_DEBUG=1 for the traceback)", 3, debug)
    if code == 130:  # typer turns Ctrl-C into a quiet Exit(130) when not standalone: say it
        print("vlmsurgeon: interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
