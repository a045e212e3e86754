"""bitsandbytes 4-bit layers computing the same way in every phase: training, evaluation inside a
run, generation on a run, and merge --verify's model as trained."""

from __future__ import annotations

from typing import Any


def training_numerics(model: Any) -> Any:
    """Turn off bitsandbytes' CPU inference repacking. In eval mode without gradients a Linear4bit
    repacks its weight in place for a bf16 kernel (AVX512-BF16 CPUs): other numbers than training,
    a crash for widths not divisible by 32, and, once repacked, the next training step fails ("a
    view of a leaf Variable ... in-place") because the repacked layout is kept."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def as_trained_quantization(trained: Any, dtype: Any = None, meta: Any = None) -> Any:
    """The 4-bit NF4 config a QLoRA run's base trained under (its preset's quantized components,
    the rest skipped), or None for a run that was not quantized."""
    if not trained.quantized_components:
        return None
    import re

    import torch
    from transformers import BitsAndBytesConfig

    from .freeze import classified_tree, unquantized_roots
    from .inspection import meta_model

    if meta is None:
        _, meta = meta_model(str(trained.base))
    keep = unquantized_roots(classified_tree(meta, meta.config.model_type), trained.quantized_components)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype or torch.float32,
                              llm_int8_skip_modules=[re.escape(k) for k in keep] or None)


def four_bit_modules(trained: Any, meta: Any) -> set[str]:
    """The modules a QLoRA run held in 4-bit, decided by transformers' own rule (its quantizer's
    modules not to convert: our skips, the model's fp32 modules, and, without skips, the output
    embeddings) over the meta model: nn.Linear layers only."""
    config = as_trained_quantization(trained, meta=meta)
    if config is None:
        return set()
    import torch
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = HfQuantizer.get_modules_to_not_convert(meta, config.llm_int8_skip_modules,
                                                  getattr(meta, "_keep_in_fp32_modules", None))
    return {name for name, module in meta.named_modules()
            if type(module) is torch.nn.Linear and should_convert_module(name, skip)}
