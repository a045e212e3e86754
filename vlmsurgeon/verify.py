"""`merge --verify`: run one image + text probe through the export, through the model as
trained (4-bit base + adapter, for QLoRA runs) and through the original base + adapter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Allowed max |Δlogit|, relative to the largest reference logit, by export dtype: fp32 is
# round-off; 16-bit exports carry one rounding of every weight (bf16 keeps 8 bits of mantissa).
TOLERANCE = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 4e-2}


@dataclass
class Verdict:
    vs_original: float
    vs_trained: float | None
    scale: float
    gate: str  # which comparison decides
    tolerance: float

    @property
    def judged(self) -> float:
        return self.vs_trained if self.gate == "trained" and self.vs_trained is not None else self.vs_original

    @property
    def allowed(self) -> float:
        return self.tolerance * self.scale

    @property
    def ok(self) -> bool:
        return self.judged <= self.allowed

    def lines(self, dtype: str) -> list[str]:
        """The verdict first, then the figure it judged (against what) and the one it did not."""
        out = [f"verify: {'ok' if self.ok else 'FAILED'}",
               f"  checked: export vs {_NAMES[self.gate]}",
               f"    max |Δlogit| {self.judged:.3g}, allowed {self.allowed:.3g}",
               f"    (tolerance {self.tolerance:g} for {dtype} × largest logit {self.scale:.3g})"]
        other = "original" if self.gate == "trained" else "trained"
        info = self.vs_original if other == "original" else self.vs_trained
        if info is not None:
            why = ("the adapter was trained against the 4-bit weights" if other == "original"
                   else "--target original skips the 4-bit weights it trained on")
            out += [f"  info (not a check): export vs {_NAMES[other]}",
                    f"    max |Δlogit| {info:.3g}; expected to differ for a QLoRA run:", f"    {why}"]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked_against": self.gate, "max_abs_logit_diff": self.judged,
                "allowed": self.allowed, "tolerance": self.tolerance, "largest_logit": self.scale,
                "vs_trained": self.vs_trained, "vs_original": self.vs_original}


_NAMES = {"trained": "the model as trained (4-bit base + adapter)", "original": "original base + adapter"}


def probe_inputs(processor: Any) -> dict[str, Any]:
    from PIL import Image

    from .collate import render_chat

    image = Image.new("RGB", (48, 40))
    image.putdata([((x * 5) % 256, (y * 7) % 256, (x * y) % 256) for y in range(40) for x in range(48)])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    text = render_chat(processor, messages, generation_prompt=True)
    return dict(processor(images=[image], text=[text], return_tensors="pt"))


def _logits(model: Any, inputs: dict[str, Any]) -> Any:
    import torch

    with torch.no_grad():
        return model.eval()(**inputs).logits.float()


def with_adapter(base: Path, trained: Any, dtype: Any = None, **kwargs: Any) -> Any:
    """The base (in `dtype`, fp32 by default) with the run's adapter and trained components."""
    import torch
    from transformers import AutoModelForImageTextToText

    from .trained import load_tensors

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype or torch.float32, **kwargs)
    if trained.adapter_dir:
        from peft import PeftModel

        from .freeze import exact_targets

        with exact_targets():  # merge reads the adapter by exact module name; so must this
            model = PeftModel.from_pretrained(model, trained.adapter_dir)
    extra = trained.run_dir / "trained_components.safetensors" if trained.run_dir else None
    if extra and extra.is_file():
        params = dict(model.named_parameters())
        for name, tensor in load_tensors(extra).items():
            # `params.get(a) or params.get(b)` would ask a tensor for its truth value
            target = params[name] if name in params else params[f"base_model.model.{name}"]
            target.data.copy_(tensor)
    return model


def as_trained_quantization(trained: Any, dtype: Any = None) -> Any:
    """The 4-bit NF4 config a QLoRA run's base trained under (its preset's quantized components,
    the rest skipped), or None for a run that was not quantized."""
    if not trained.quantized_components:
        return None
    import re

    import torch
    from transformers import BitsAndBytesConfig

    from .freeze import classified_tree, unquantized_roots
    from .inspection import meta_model

    _, meta = meta_model(str(trained.base))
    keep = unquantized_roots(classified_tree(meta, meta.config.model_type), trained.quantized_components)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype or torch.float32,
                              llm_int8_skip_modules=[re.escape(k) for k in keep] or None)


def verify(out: Path, trained: Any, dtype: str, target: str) -> Verdict:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(out)
    inputs = probe_inputs(processor)
    merged = _logits(AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32), inputs)
    original = _logits(with_adapter(trained.base, trained), inputs)
    as_trained = None
    quant = as_trained_quantization(trained)
    if quant is not None:
        as_trained = _logits(with_adapter(trained.base, trained, quantization_config=quant), inputs)
    scale = max(1.0, float(original.abs().max()))
    return Verdict(
        vs_original=float((merged - original).abs().max()),
        vs_trained=float((merged - as_trained).abs().max()) if as_trained is not None else None,
        scale=scale, gate="trained" if (as_trained is not None and target == "dequantized") else "original",
        tolerance=TOLERANCE[dtype])


def verify_export(out: Path, source: Path, base: str | None, summary: dict[str, Any]) -> Verdict:
    """`verify` for what `merge` just wrote from SOURCE: the same base, and the same 4-bit
    components (a bare adapter's were decided by the merge)."""
    from .merge import load_source

    trained, _ = load_source(source, base)
    trained.quantized_components = list(summary["quantized_components"])
    return verify(out, trained, summary["dtype"], summary["target"])
