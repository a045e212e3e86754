"""Commands that try a model: `generate`, `chat` and `eval`. Registered on the app by `cli.py`
(a function, not decorators, so that `python -m vlmsurgeon.cli` registers them on its own app)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from vlmsurgeon.errors import VlmSurgeonError
from vlmsurgeon.quiet import quiet_libraries

TRUST_HELP = "Allow code from the model repo (auto_map)."


def generate(
    source: str = typer.Argument(..., help="Hub id, model directory, run directory, peft adapter or merged export."),
    image: list[str] = typer.Option([], "--image", help="An image for the prompt (repeat for more)."),
    video: list[str] = typer.Option([], "--video", help="A video for the prompt (video models)."),
    prompt: str = typer.Option(..., "--prompt", help="The question or instruction."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy; above 0: sampling."),
    base: str | None = typer.Option(None, "--base", help="Base model of a bare peft adapter."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the answer and counts."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
) -> None:
    """Ask a model, a run (as trained) or an export about an image: the answer on stdout."""
    quiet_libraries()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a weight-loading bar before one answer is noise
    from vlmsurgeon.use.answer import answer, prompt_turn, read_image, read_video
    from vlmsurgeon.use.generation import load_for_inference

    # checked as data check checks media (media.check_media), before any weight loads
    images = [read_image(ref) for ref in image]
    videos = [read_video(ref) for ref in video]
    loaded = load_for_inference(source, base=base, trust_remote_code=trust_remote_code)
    stream = sys.stdout.isatty() and not as_json
    on_text = (lambda text: print(text, end="", flush=True)) if stream else None
    result = answer(
        loaded,
        [prompt_turn(loaded, prompt, len(images), len(videos))],
        images,
        videos,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        on_text=on_text,
    )
    if as_json:
        print(
            json.dumps(
                {
                    "text": result.text,
                    "tokens": result.tokens,
                    "prompt_tokens": result.prompt_tokens,
                    "seconds": round(result.seconds, 4),
                    "source": loaded.source,
                    "kind": loaded.kind,
                }
            )
        )
    elif stream:
        print()
    else:
        print(result.text)


def chat(
    source: str = typer.Argument(..., help="Hub id, model directory, run directory, peft adapter or merged export."),
    base: str | None = typer.Option(None, "--base", help="Base model of a bare peft adapter."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Most tokens per answer."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy; above 0: sampling."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
) -> None:
    """Talk to a model: a line is a turn; /image PATH attaches an image to the next, /reset, /exit."""
    quiet_libraries()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from vlmsurgeon.use.answer import Chat
    from vlmsurgeon.use.generation import load_for_inference

    session = Chat(
        load_for_inference(source, base=base, trust_remote_code=trust_remote_code),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
    )
    print(f"chat with {source} ({session.loaded.kind}): /image PATH, /reset, /exit", file=sys.stderr)
    while True:
        print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # EOF
            print()
            return
        text = line.strip()
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            print("(history cleared)")
        elif text.startswith("/image"):
            path = text[len("/image") :].strip()
            try:
                session.attach(path)
                print(f"(image {path} attached to the next turn)")
            except VlmSurgeonError as exc:
                print(f"vlmsurgeon: error: {exc.line()}", file=sys.stderr)
        elif text:
            print("model> ", end="", flush=True)
            try:
                session.ask(text, on_text=lambda piece: print(piece, end="", flush=True))
            except VlmSurgeonError as exc:  # a refused turn leaves the conversation as it was
                print(f"\nvlmsurgeon: error: {exc.line()}", file=sys.stderr)
            print(flush=True)


def eval_(
    source: str = typer.Argument(..., help="Model directory, hub id, run directory, adapter (with --base) or export."),
    data: str = typer.Option(
        ..., "--data", help="Data in any format finetune reads; the last assistant turn of each row is the reference."
    ),
    compare: str | None = typer.Option(
        None,
        "--compare",
        help="A second SOURCE scored on the same rows (e.g. the base model): side by side, with the delta.",
    ),
    base: str | None = typer.Option(None, "--base", help="Base checkpoint of a bare peft adapter."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Most tokens per answer."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Score only the first N usable rows."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Report folder (predictions.jsonl, report.json, report.html); must not exist."
    ),
    image_root: str | None = typer.Option(None, "--image-root", help="Folder that relative media paths start from."),
    as_json: bool = typer.Option(False, "--json", help="Print totals and per-row results as one JSON object."),
    reward: list[str] = typer.Option(
        [],
        "--reward",
        help="Score the answers to prompt rows (repeat): exact, choice, numeric, format, iou or FILE.py:FUNCTION, "
        "each with an optional =WEIGHT.",
    ),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_HELP),
) -> None:
    """Generation metrics (exact match, token F1, ROUGE-L) on a dataset; on preference pairs, preference
    accuracy and margin from log-probs; on prompt rows, the --reward functions; with --compare, before/after."""
    quiet_libraries()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a loading bar per model is noise here
    from vlmsurgeon.use.evaluate import evaluate
    from vlmsurgeon.use.preference import evaluate_pairs, read_pairs

    from .render import make_console, print_eval, print_json, print_pair_eval

    if reward:
        options = (compare, base, max_new_tokens, limit, out, image_root, as_json, trust_remote_code)
        return _eval_prompts(source, data, reward, *options)
    pairs = read_pairs(data, image_root=image_root)
    if pairs is not None and out is not None:
        from vlmsurgeon.errors import BadInput

        raise BadInput(
            "eval -o: the report folder holds generated answers; preference pairs are scored by log-probs",
            "drop -o and pass --json for every pair's log-probs",
        )
    if out is not None:
        from vlmsurgeon.use.eval_report import check_target

        check_target(out)  # before any model loads
    progress = make_console(stderr=True)

    def on_row(name: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            progress.print(f"eval: {name}: {done}/{total} row(s)")

    if pairs is not None:
        progress.print(f"eval: {len(pairs.samples)} preference pair(s): scored by log-probs, nothing generated")
        scored = evaluate_pairs(
            source,
            pairs,
            compare=compare,
            base=base,
            limit=limit,
            trust_remote_code=trust_remote_code,
            on_row=on_row,
        )
        print_json(scored.to_json()) if as_json else print_pair_eval(scored)
        for row in scored.skipped:
            print(f"vlmsurgeon: warning: eval: skipped {row}", file=sys.stderr)
        return

    result = evaluate(
        source,
        data,
        compare=compare,
        base=base,
        max_new_tokens=max_new_tokens,
        limit=limit,
        image_root=image_root,
        trust_remote_code=trust_remote_code,
        on_row=on_row,
    )
    if out is not None:
        from vlmsurgeon.use.eval_report import write_report

        write_report(result, out)
    if as_json:
        print_json(result.to_json())
    else:
        print_eval(result, report=out)
    for row in result.skipped:
        print(f"vlmsurgeon: warning: eval: skipped {row}", file=sys.stderr)


def _eval_prompts(
    source: str,
    data: str,
    specs: list[str],
    compare: str | None,
    base: str | None,
    max_new_tokens: int,
    limit: int | None,
    out: Path | None,
    image_root: str | None,
    as_json: bool,
    trust_remote_code: bool,
) -> None:
    """`eval --reward`: prompt rows answered and scored by reward functions."""
    from vlmsurgeon.errors import BadInput
    from vlmsurgeon.use.preference import read_pairs
    from vlmsurgeon.use.prompt_eval import evaluate_prompts
    from vlmsurgeon.use.rewards import parse_rewards

    from .render import make_console, print_json, print_prompt_eval

    rewards = parse_rewards(specs)  # the user's files load, and their functions exist, before any model
    if out is not None:
        raise BadInput(
            "eval -o: the report folder is for answers compared with a reference; --reward scores prompt rows",
            "drop -o and pass --json for every answer with its rewards",
        )
    if read_pairs(data, image_root=image_root) is not None:
        raise BadInput(
            f"eval --reward: {data} holds preference pairs, which eval scores by log-probs, not by rewards",
            "drop --reward to score the pairs, or give prompt rows (a user turn and a 'solution' column)",
        )
    progress = make_console(stderr=True)

    def on_row(name: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            progress.print(f"eval: {name}: {done}/{total} prompt(s) answered")

    result = evaluate_prompts(
        source,
        data,
        rewards,
        compare=compare,
        base=base,
        max_new_tokens=max_new_tokens,
        limit=limit,
        image_root=image_root,
        trust_remote_code=trust_remote_code,
        on_row=on_row,
    )
    print_json(result.to_json()) if as_json else print_prompt_eval(result)
    for row in result.skipped:
        print(f"vlmsurgeon: warning: eval: skipped {row}", file=sys.stderr)


def register(app: Any) -> None:
    app.command()(generate)
    app.command()(chat)
    app.command("eval")(eval_)
