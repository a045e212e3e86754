"""What a run shows while it trains: the one-screen summary, generation scores at each evaluation
(`--eval-generate`), and the Trainer's own `--report-to` integrations, refused up front when their
package is missing."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from vlmsurgeon.recipe.preset import freeze_preset, load_preset
from vlmsurgeon.train.telemetry import done_line, elapsed, loading_line, preparing_line, starting_line


def _rows(path, shapes, n):
    path.write_text("".join(shapes.read_text().splitlines(keepends=True)[:n]))
    return path


def test_summary_and_eval_generate_scores_beside_the_loss(tiny_models, shapes, tmp_path, cli):
    train = _rows(shapes.parent / "four.jsonl", shapes, 4)
    run = tmp_path / "run"
    code, out, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        train,
        "--eval-data",
        train,
        "--eval-generate",
        "2",
        "--freeze",
        "vision",
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--epochs",
        "2",
        "--lr",
        "5e-3",
        "--seq-len",
        "512",
        "-o",
        run,
    )
    assert code == 0, err
    # the one-screen summary, before the first step
    lines = err.splitlines()
    model_line = next(i for i, line in enumerate(lines) if line.startswith("model: "))
    assert "(qwen2_vl) · LM in 4-bit NF4 (double quant)" in lines[model_line]
    assert lines[model_line + 1].startswith("trains: ") and "parameters (" in lines[model_line + 1]
    parts = {line.split()[0] for line in lines[model_line + 2 : model_line + 6]}
    assert parts == {"vision", "merger", "lm", "head"}
    # before it, the data summary and one line per slow phase, in the order they run
    from vlmsurgeon.train import heap

    said_heap = heap._glibc() is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ
    before = 5 if said_heap else 4
    assert lines[model_line - before].startswith("data: 4 row(s) (4 messages), 4 image(s)")
    if said_heap:  # a CPU run gives freed blocks back (train/heap.py), said before loading
        assert lines[model_line - 4].startswith("CPU run: freed blocks of 1 MiB or more go back")
    assert lines[model_line - 3 : model_line] == [
        f"loading weights of {tiny_models('qwen2_vl')} (lm in 4-bit NF4, the rest in fp32) …",
        "preparing LoRA on lm r=16 and full training of merger …",
        "starting training (the first step also checks which parameters get a gradient) …",
    ]
    # and last, how long it took and what to run next
    assert re.fullmatch(
        rf"done in (\d\.\d s|\d+ s|\d+ min \d+ s); next: vlmsurgeon merge {run} -o {run}-merged "
        r"--verify",
        lines[-1],
    ), lines[-1]
    assert lines[model_line + 6] == "steps: 4 × batch 2 · eval-generate 2 row(s)"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    generated = [r for r in log if "eval_gen_exact_match" in r]
    losses = [r for r in log if "eval_loss" in r]
    assert generated and losses and len(generated) == len(losses)  # one score line per evaluation
    for record in generated:
        assert record["eval_gen_rows"] == 2
        assert 0.0 <= record["eval_gen_exact_match"] <= 1.0 and 0.0 <= record["eval_gen_f1"] <= 1.0
        assert 0.0 <= record["eval_gen_rouge_l"] <= 1.0


def test_report_to_tensorboard_writes_events_beside_the_run(tiny_models, shapes, tmp_path, cli):
    run = tmp_path / "run"
    code, out, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        shapes,
        "--freeze",
        "vision",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--report-to",
        "tensorboard",
        "-o",
        run,
    )
    assert code == 0, err
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_missing_reporter_package_and_eval_generate_without_eval_data_are_refused(
    tiny_models, shapes, tmp_path, cli, monkeypatch
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code, _, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        shapes,
        "--freeze",
        "vision",
        "--report-to",
        "wandb",
        "-o",
        tmp_path / "a",
    )
    assert code == 2 and err.count("\n") == 1
    assert (
        "--report-to wandb: the 'wandb' package is not installed (try: pip install wandb, or --report-to none)" in err
    )
    code, _, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        shapes,
        "--freeze",
        "vision",
        "--eval-generate",
        "2",
        "-o",
        tmp_path / "b",
    )
    assert code == 2 and "--eval-generate needs rows to generate on (try: pass --eval-data DATA as well)" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.04, "0.0 s"),
        (4.26, "4.3 s"),
        (9.94, "9.9 s"),
        (42.4, "42 s"),
        (59.4, "59 s"),
        (59.6, "1 min 0 s"),
        (72, "1 min 12 s"),
        (3599.4, "59 min 59 s"),
        (3600, "1 h 00 min"),
        (7530, "2 h 05 min"),
    ],
)
def test_elapsed_reads_as_a_person_says_it(seconds, text):
    assert elapsed(seconds) == text


def test_done_line_names_the_real_run_and_quotes_it():
    assert done_line(72, Path("runs/shapes")) == (
        "done in 1 min 12 s; next: vlmsurgeon merge runs/shapes -o runs/shapes-merged --verify"
    )
    assert done_line(3, Path("/tmp/my runs/a b/")) == (
        "done in 3.0 s; next: vlmsurgeon merge '/tmp/my runs/a b' -o '/tmp/my runs/a b-merged' --verify"
    )


def test_phase_lines_say_what_loads_and_what_trains():
    assert loading_line("m", ("lm",), "bf16") == "loading weights of m (lm in 4-bit NF4, the rest in bf16) …"
    assert loading_line("m", (), "fp32") == "loading weights of m (fp32, nothing in 4-bit) …"
    present = ["vision", "merger", "lm", "head"]
    assert preparing_line(load_preset("per-modality-lora"), present) == (
        "preparing LoRA on vision r=8, lm r=16 and full training of merger …"
    )
    assert preparing_line(load_preset("lm-lora"), present) == "preparing LoRA on lm r=16 …"
    assert preparing_line(load_preset("text-only"), present) == "preparing full training of lm, head …"
    # a component the model lacks is not announced (full lists audio)
    assert preparing_line(load_preset("full"), present) == ("preparing full training of vision, merger, lm, head …")
    assert preparing_line(freeze_preset("vision,merger,lm,head", present), present) == "preparing the model …"
    assert starting_line(Path("run/checkpoints/checkpoint-20")) == (
        "resuming from checkpoint-20 (weights, optimizer and scheduler state) …"
    )
