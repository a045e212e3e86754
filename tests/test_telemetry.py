"""What a run shows while it trains: the one-screen summary, generation scores at each evaluation
(`--eval-generate`), and the Trainer's own `--report-to` integrations, refused up front when their
package is missing."""

from __future__ import annotations

import json


def _rows(path, shapes, n):
    path.write_text("".join(shapes.read_text().splitlines(keepends=True)[:n]))
    return path


def test_summary_and_eval_generate_scores_beside_the_loss(tiny_models, shapes, tmp_path, cli):
    train = _rows(shapes.parent / "four.jsonl", shapes, 4)
    run = tmp_path / "run"
    code, out, err = cli("finetune", tiny_models("qwen2_vl"), "--data", train, "--eval-data", train,
                         "--eval-generate", "2", "--freeze", "vision", "--steps", "4", "--batch-size", "2",
                         "--epochs", "2", "--lr", "5e-3", "--seq-len", "512", "-o", run)
    assert code == 0, err
    # the one-screen summary, before the first step
    lines = err.splitlines()
    model_line = next(i for i, line in enumerate(lines) if line.startswith("model: "))
    assert "(qwen2_vl) · LM in 4-bit NF4 (double quant)" in lines[model_line]
    assert lines[model_line + 1].startswith("trains: ") and "parameters (" in lines[model_line + 1]
    parts = {line.split()[0] for line in lines[model_line + 2: model_line + 6]}
    assert parts == {"vision", "merger", "lm", "head"}
    assert lines[model_line - 1].startswith("data: 4 row(s) (4 messages), 4 image(s)")
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
    code, out, err = cli("finetune", tiny_models("qwen2_vl"), "--data", shapes, "--freeze", "vision",
                         "--steps", "2", "--batch-size", "2", "--report-to", "tensorboard", "-o", run)
    assert code == 0, err
    events = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_missing_reporter_package_and_eval_generate_without_eval_data_are_refused(tiny_models, shapes, tmp_path,
                                                                                    cli, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code, _, err = cli("finetune", tiny_models("qwen2_vl"), "--data", shapes, "--freeze", "vision",
                       "--report-to", "wandb", "-o", tmp_path / "a")
    assert code == 2 and err.count("\n") == 1
    assert "--report-to wandb: the 'wandb' package is not installed (try: pip install wandb, or --report-to none)" in err
    code, _, err = cli("finetune", tiny_models("qwen2_vl"), "--data", shapes, "--freeze", "vision",
                       "--eval-generate", "2", "-o", tmp_path / "b")
    assert code == 2 and "--eval-generate needs rows to generate on (try: pass --eval-data DATA as well)" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
