"""A loaded model made ready to train, in place of peft's `prepare_model_for_kbit_training`: only
parameters that train are cast to fp32 (that helper upcast every non-4-bit tensor, so a frozen bf16
vision tower doubled), 4-bit layers stay as they are, checkpointing is non-reentrant, optionally
with its saved layer inputs in pinned CPU memory, and no input-gradient hooks are left behind."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from vlmsurgeon.errors import BadInput


def check_offload(opts: Any) -> None:
    """--offload-activations keeps checkpointed layer inputs in pinned host memory: it needs a
    GPU to offload from, and checkpointing to offload. Refused before any weight loads."""
    if not opts.offload_activations:
        return
    import torch

    if not torch.cuda.is_available():
        raise BadInput(
            "--offload-activations: no CUDA device here, and it moves activations off a GPU",
            "drop --offload-activations, or run on a machine with a CUDA GPU",
        )
    if not opts.gradient_checkpointing:
        raise BadInput(
            "--offload-activations offloads the inputs gradient checkpointing keeps, and "
            "--no-gradient-checkpointing turns that off",
            "drop one of the two",
        )


def cast_trained(model: Any) -> list[str]:
    """Cast to fp32 the 16-bit parameters that train (AdamW's master weights), once the preset is
    applied: a component trained in full through peft's modules_to_save trains its copy in fp32
    while the original peft keeps beside it stays in the loaded dtype, as frozen parts do; 4-bit
    layers keep their layout, LoRA adapters are fp32 already. Returns the names cast."""
    import torch

    cast: list[str] = []
    for name, param in model.named_parameters():
        if not param.requires_grad or type(param).__name__ == "Params4bit":
            continue
        if param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.to(torch.float32)
            cast.append(name)
    return cast


def enable_checkpointing(model: Any, offload: bool) -> None:
    """Non-reentrant checkpointing on every layer that supports it. transformers then hooks every
    input-embedding layer (vision patch embeddings too) so their outputs require grad; with
    non-reentrant checkpointing gradients reach the layers inside without that, and the hooks make
    frozen towers record a graph, so they are removed."""
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(kwargs)
    else:  # transformers before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if offload:
        _offload(model)
    drop_input_grad_hooks(model)


def no_training_cache(model: Any) -> None:
    """`use_cache=False` in the loaded configs: a training forward builds no KV cache (with or
    without checkpointing), and under checkpointing transformers would otherwise warn on every
    run that it turns the cache off itself. Generation passes its own `use_cache` and is unaffected;
    nothing here is saved."""
    seen: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or id(config) in seen:
            continue
        seen.add(id(config))
        if getattr(config, "use_cache", None):
            config.use_cache = False


def _offload(model: Any) -> None:
    import torch

    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if func is not None and not getattr(func, "offloaded", False):
            module._gradient_checkpointing_func = _offloaded(func, torch.autograd.graph.save_on_cpu)


def _offloaded(func: Callable[..., Any], save_on_cpu: Any) -> Callable[..., Any]:
    # Non-reentrant checkpoint saves its inputs through the saved-tensor hooks active when it is
    # called: under save_on_cpu those inputs (the layer's input) wait in pinned host memory.
    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        with save_on_cpu(pin_memory=True):
            return func(*args, **kwargs)

    run.offloaded = True  # type: ignore[attr-defined]
    return run


def drop_input_grad_hooks(model: Any) -> None:
    """Remove the hooks `enable_input_require_grads` put on input embeddings (transformers adds them
    when checkpointing is enabled, peft again when it wraps an unquantized model), unless the model
    checkpoints the old, reentrant way, which needs them."""
    base = getattr(model, "module", model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    if not hasattr(base, "disable_input_require_grads") or _old_format(base):
        return
    base.disable_input_require_grads()


def _old_format(model: Any) -> bool:
    """Remote code from before transformers 4.35 sets checkpointing through
    `_set_gradient_checkpointing(module, value)`, and ignores `use_reentrant=False`."""
    setter = getattr(model, "_set_gradient_checkpointing", None)
    return setter is not None and "value" in inspect.signature(setter).parameters
