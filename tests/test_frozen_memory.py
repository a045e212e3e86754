"""Our preparation of a 4-bit model in place of peft's `prepare_model_for_kbit_training`: a frozen
bf16 vision tower stays bf16 and records no graph, trained parameters are fp32, and in fp32 the loss
and gradients equal the old preparation's. --offload-activations is refused without CUDA."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vlmsurgeon.train.runconfig import RunOptions


def _run(model_dir, **extra) -> SimpleNamespace:
    from vlmsurgeon.train.loop import _model_plan

    opts = RunOptions(model=str(model_dir), freeze="vision", **extra)
    source, tree, preset, opts = _model_plan(str(model_dir), opts, False)
    return SimpleNamespace(opts=opts, reference=str(model_dir), source=source, tree=tree, preset=preset)


def _ours(run):
    """What `finetune` does: load, prepare, apply the preset, build the Trainer (drops the hooks)."""
    from transformers import set_seed

    from vlmsurgeon.recipe.freeze import apply_preset
    from vlmsurgeon.train.loop import _load_model
    from vlmsurgeon.train.prepare import cast_trained, drop_input_grad_hooks

    model, quantized = _load_model(run)
    assert quantized
    set_seed(0)
    applied = apply_preset(model, run.preset, run.source.model_type)
    cast_trained(applied.model)
    drop_input_grad_hooks(applied.model)
    return applied


def _peft_prepared(run):
    """The preparation `finetune` used before: peft's prepare_model_for_kbit_training."""
    from peft import prepare_model_for_kbit_training
    from transformers import set_seed

    from vlmsurgeon.recipe.freeze import apply_preset
    from vlmsurgeon.train.loop import load_for_training

    model = load_for_training(run.reference, run.opts, run.preset, run.tree, run.source.model_type)
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    set_seed(0)
    return apply_preset(model, run.preset, run.source.model_type)


def _dtypes(applied, component: str, trainable: bool) -> set[torch.dtype]:
    return {
        p.dtype
        for n, p in applied.model.named_parameters()
        if applied.component(n) == component and p.requires_grad == trainable
    }


def test_frozen_bf16_vision_stays_bf16_and_trained_parameters_are_fp32(tiny_models):
    import bitsandbytes as bnb

    run = _run(tiny_models("qwen2_vl"), dtype="bf16")
    applied = _ours(run)
    assert _dtypes(applied, "vision", False) == {torch.bfloat16}
    assert _dtypes(applied, "vision", True) == set()
    assert _dtypes(applied, "merger", True) == {torch.float32}  # trained in full
    # the original peft's modules_to_save keeps beside the trained copy stays bf16
    assert _dtypes(applied, "merger", False) == {torch.bfloat16}
    assert _dtypes(applied, "lm", True) == {torch.float32}  # the LoRA adapters
    assert _dtypes(applied, "head", False) == {torch.bfloat16}
    # the LM's frozen norms and embeddings stay bf16 beside its 4-bit layers
    assert _dtypes(applied, "lm", False) == {torch.bfloat16, torch.uint8}
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in applied.model.modules())
    vision = sum(
        p.numel() * p.element_size() for n, p in applied.model.named_parameters() if applied.component(n) == "vision"
    )
    old = _peft_prepared(run)
    assert _dtypes(old, "vision", False) == {torch.float32}  # what peft's helper did
    old_vision = sum(
        p.numel() * p.element_size() for n, p in old.model.named_parameters() if old.component(n) == "vision"
    )
    assert old_vision == 2 * vision


def _vision_graph(applied, batch) -> list[bool]:
    """Whether each vision block's output requires grad (i.e. autograd records the tower)."""
    visual = applied.model.get_base_model().model.visual
    seen: list[bool] = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad)) for b in visual.blocks]
    try:
        applied.model.train()
        applied.model(**batch).loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.fixture(scope="module")
def batch(tiny_models, shapes):
    from vlmsurgeon.data.collate import Collator
    from vlmsurgeon.data.rows import load_dataset_rows
    from vlmsurgeon.train.loop import load_processor

    processor, _ = load_processor(str(tiny_models("qwen2_vl")), RunOptions())
    samples = load_dataset_rows(str(shapes)).samples
    return Collator(processor, 512)([samples[0], samples[4]])


def test_same_loss_and_gradients_as_the_old_preparation_in_fp32(tiny_models, batch):
    """Non-reentrant checkpointing gives every trained parameter its gradient without the
    input-gradient hooks, and the frozen vision tower no longer records a graph."""
    run = _run(tiny_models("qwen2_vl"), dtype="fp32")
    results = []
    for prepare in (_ours, _peft_prepared):
        applied = prepare(run)
        for name, param in applied.model.named_parameters():  # LoRA B starts at zero
            if "lora_B" in name:
                torch.manual_seed(len(name))
                torch.nn.init.normal_(param, std=0.05)
        torch.manual_seed(1)
        graph = _vision_graph(applied, batch)
        applied.model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss = applied.model(**batch).loss
        loss.backward()
        grads = {n: p.grad for n, p in applied.model.named_parameters() if p.requires_grad}
        results.append((graph, loss.item(), grads))
    (graph, loss, grads), (old_graph, old_loss, old_grads) = results
    assert graph == [False, False] and old_graph == [True, True]
    assert abs(loss - old_loss) <= 1e-6
    assert set(grads) == set(old_grads)
    assert all(g is not None for g in grads.values())
    assert {n for n, g in grads.items() if g.abs().sum() > 0} == set(grads)  # LoRA A and B, the merger
    for name, grad in grads.items():
        torch.testing.assert_close(grad, old_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_offload_activations_refused_without_cuda_before_any_weight_loads(
    tiny_models, shapes, tmp_path, cli, monkeypatch
):
    from transformers import AutoModelForImageTextToText

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", lambda *a, **k: pytest.fail("loaded weights"))
    code, out, err = cli(
        "finetune",
        tiny_models("qwen2_vl"),
        "--data",
        shapes,
        "--freeze",
        "vision",
        "-o",
        tmp_path / "run",
        "--steps",
        "1",
        "--offload-activations",
    )
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1] == (
        "vlmsurgeon: error: --offload-activations: no CUDA device here, and it moves activations off a GPU "
        "(try: drop --offload-activations, or run on a machine with a CUDA GPU)"
    )
    assert "Traceback" not in err


def test_offload_activations_needs_checkpointing():
    from vlmsurgeon.errors import BadInput
    from vlmsurgeon.train.prepare import check_offload

    opts = RunOptions(offload_activations=True, gradient_checkpointing=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: True)
        with pytest.raises(BadInput) as caught:
            check_offload(opts)
    assert caught.value.line() == (
        "--offload-activations offloads the inputs gradient checkpointing keeps, and "
        "--no-gradient-checkpointing turns that off (try: drop one of the two)"
    )
    check_offload(RunOptions())  # off: nothing to check


def test_training_configs_build_no_cache_and_the_saved_config_is_untouched(tiny_models):
    """Under checkpointing no KV cache is built in training (transformers used to turn it off itself
    and warn on every run); the checkpoint's own config keeps what it said."""
    import json

    from vlmsurgeon.train.loop import _load_model

    model_dir = tiny_models("qwen2_vl")
    run = _run(model_dir)
    model, _ = _load_model(run)
    configs = {id(m.config): m.config for m in model.modules() if getattr(m, "config", None) is not None}
    assert configs and all(getattr(c, "use_cache", False) is False for c in configs.values())
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["text_config"].get("use_cache", True) is True
