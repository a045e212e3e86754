"""`merge --verify`: every exported tensor against an independent recomputation, rounded once to
the export dtype (exact evidence, not a tolerance), then a probe through the export and the model
it was checked against, as information."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_MANTISSA = {"bf16": 7, "fp16": 10, "fp32": 23}  # explicit mantissa bits: one ulp is 2**(e - bits)
_EPS32 = 2.0**-23


@dataclass
class Mismatch:
    """The first exported tensor that is not the rounded recomputation."""

    tensor: str
    values: int  # how many values differ
    of: int
    max_ulps: float  # in the export dtype, at the exported value
    max_abs: float
    why: str = ""  # absent, unexpected, wrong dtype or shape

    def line(self, dtype: str) -> str:
        if self.why:
            return f"  {self.tensor}: {self.why}"
        return (
            f"  {self.tensor}: {self.values:,} of {self.of:,} values differ "
            f"(max {self.max_ulps:.3g} ulp of {dtype}, |Δ| {self.max_abs:.3g})"
        )


@dataclass
class Verdict:
    gate: str  # "trained": the 4-bit base as bitsandbytes loads it + adapter; "original"
    dtype: str
    lora: int = 0  # tensors recomputed as base + LoRA delta
    full: int = 0  # fully trained tensors
    copied: int = 0  # base tensors the run did not change
    mismatch: Mismatch | None = None
    logits: dict[str, float] = field(default_factory=dict)  # information, not the verdict

    @property
    def ok(self) -> bool:
        return self.mismatch is None

    @property
    def compared(self) -> int:
        return self.lora + self.full + self.copied

    def lines(self, dtype: str | None = None) -> list[str]:
        dtype = dtype or self.dtype
        out = [f"verify: {'ok' if self.ok else 'FAILED'}"]
        if self.mismatch:
            out.append(self.mismatch.line(dtype))
        out += [
            "  checked: every exported tensor against the base and the run merged again",
            f"    in fp32 and rounded once to {dtype}: {self.lora} LoRA modules (peft's delta on",
            f"    {_WEIGHTS[self.gate]}), {self.full} trained, {self.copied} unchanged",
        ]
        if self.logits:
            short = "the model as trained" if self.gate == "trained" else "original base + adapter"
            out += [
                "  info (not a check): max |Δlogit| on a probe image + prompt",
                f"    export vs {_NAMES[self.gate]}: {self.logits['vs_reference']:.3g}",
                f"    {dtype} rounding alone (the same merge unrounded): {self.logits['rounding']:.3g}",
                f"    unrounded merge vs {short}: {self.logits['unrounded']:.3g}",
            ]
        return out

    def to_json(self) -> dict[str, Any]:
        first = None
        if self.mismatch:
            m = self.mismatch
            first = {
                "tensor": m.tensor,
                "values": m.values,
                "of": m.of,
                "max_ulps": m.max_ulps,
                "max_abs": m.max_abs,
                "why": m.why or None,
            }
        return {
            "ok": self.ok,
            "checked_against": self.gate,
            "dtype": self.dtype,
            "tensors": {
                "compared": self.compared,
                "lora_merged": self.lora,
                "trained": self.full,
                "unchanged": self.copied,
            },
            "first_mismatch": first,
            "logits": self.logits or None,
        }


_NAMES = {"trained": "the model as trained (4-bit base + adapter)", "original": "original base + adapter"}
_WEIGHTS = {"trained": "the 4-bit weights as loaded", "original": "the original weights"}


def probe_inputs(processor: Any) -> dict[str, Any]:
    from PIL import Image

    from vlmsurgeon.data.collate import render_chat

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

    from vlmsurgeon.recipe.freeze import training_numerics

    from .trained import exact_adapter_state, load_tensors

    model = AutoModelForImageTextToText.from_pretrained(
        base, dtype=dtype or torch.float32, trust_remote_code=False, **kwargs
    )
    training_numerics(model)
    if trained.adapter_dir:
        from peft import PeftModel

        from vlmsurgeon.recipe.freeze import exact_targets

        with exact_targets():  # merge reads the adapter by exact module name; so must this
            model = PeftModel.from_pretrained(model, trained.adapter_dir)
        exact_adapter_state(model, trained.adapter_dir / "adapter_model.safetensors")
    extra = trained.run_dir / "trained_components.safetensors" if trained.run_dir else None
    if extra and extra.is_file():
        params = dict(model.named_parameters())
        for name, tensor in load_tensors(extra).items():
            # `params.get(a) or params.get(b)` would ask a tensor for its truth value
            target = params[name] if name in params else params[f"base_model.model.{name}"]
            target.data.copy_(tensor)
    return model


def compute_dtype(trained: Any, origin: dict[str, Any] | None = None) -> Any:
    """The dtype the run loaded (and so quantized) its base in: its record's, else fp32."""
    import torch

    from .trained import record_field

    name = record_field(trained.record, "training", "compute_dtype") or (origin or {}).get("compute_dtype")
    return torch.bfloat16 if str(name) in ("bf16", "bfloat16") else torch.float32


def reference_model(trained: Any, gate: str, dtype: Any) -> Any:
    """What the export is checked against: the base as the run loaded it (4-bit for a QLoRA run
    under --target dequantized) with the adapter and trained components."""
    from vlmsurgeon.recipe.freeze import as_trained_quantization

    quant = as_trained_quantization(trained, dtype) if gate == "trained" else None
    if quant is None:
        return with_adapter(trained.base, trained)
    return with_adapter(trained.base, trained, dtype, quantization_config=quant)


def _dequantized(layer: Any) -> Any:
    """A (LoRA-wrapped) base layer's weight as the forward pass sees it, in fp32."""
    weight = layer.weight
    state = getattr(weight, "quant_state", None)
    if state is None:
        return weight.detach().float()
    import bitsandbytes.functional as F

    return F.dequantize_4bit(weight.data, state).float()


def lora_reference(model: Any, module: str) -> tuple[Any, Any]:
    """(base weight + peft's own delta, in fp32; the bound on fp32 rounding in that sum)."""
    import torch

    layer = model.get_submodule(f"base_model.model.{module}")
    name = next(iter(layer.lora_A))
    base = _dequantized(layer.get_base_layer())
    delta = layer.get_delta_weight(name).float()
    a, b = layer.lora_A[name].weight.float(), layer.lora_B[name].weight.float()
    scale = abs(float(layer.scaling[name]))
    with torch.no_grad():
        size = scale * (b.abs() @ a.abs())
        slack = (a.shape[0] + 4) * _EPS32 * (base.abs() + size)
        return (base + delta).detach(), slack.detach()


def _ulp(values: Any, dtype: str) -> Any:
    import torch

    tiny = {"bf16": 2.0**-133, "fp16": 2.0**-24, "fp32": 2.0**-149}[dtype]
    exponent = torch.floor(torch.log2(values.abs().clamp_min(tiny)))
    return torch.clamp(torch.exp2(exponent - _MANTISSA[dtype]), min=tiny)


def compare(name: str, exported: Any, reference: Any, slack: Any, dtype: str) -> Mismatch | None:
    """None when every exported value is a correct rounding to `dtype` of a value within `slack`
    of the reference (slack 0: exactly the reference rounded once)."""
    import torch

    from .shards import DTYPES

    if tuple(exported.shape) != tuple(reference.shape):
        return Mismatch(name, 0, 0, 0.0, 0.0, why=f"shape {tuple(exported.shape)}, expected {tuple(reference.shape)}")
    if not reference.is_floating_point():
        same = torch.equal(exported, reference)
        return None if same else Mismatch(name, int((exported != reference).sum()), reference.numel(), 0.0, 0.0)
    target = getattr(torch, DTYPES[dtype])
    if exported.dtype != target:
        return Mismatch(name, 0, 0, 0.0, 0.0, why=f"stored as {exported.dtype}, expected {target}")
    reference = reference.float()
    low, high = (reference - slack).to(target).float(), (reference + slack).to(target).float()
    got = exported.float()
    both_nan = torch.isnan(got) & torch.isnan(reference)
    bad = ~(((got >= low) & (got <= high)) | both_nan)
    count = int(bad.sum())
    if not count:
        return None
    diff = (got - reference.to(target).float()).abs()[bad]
    ulps = diff / _ulp(got[bad], dtype)
    return Mismatch(name, count, reference.numel(), float(ulps.max()), float(diff.max()))


def check_tensors(
    out: Path, trained: Any, model: Any, verdict: Verdict, unrounded: Any = None, only: list[str] | None = None
) -> None:
    """Every tensor of the export against its recomputation: base + delta (LoRA modules), the run's
    trained tensor, or the base tensor; names and shapes as the base stores them. `unrounded`, a
    model of the export's architecture, receives each reference value for the logit figures."""
    import torch
    from safetensors import safe_open

    from vlmsurgeon.model.sources import local_weight_files, read_header

    from .trained import key_map, load_tensors

    base_files = local_weight_files(trained.base)
    where = {k: p for p in base_files for k in read_header(p) if k != "__metadata__"}
    exported_files = local_weight_files(out)
    exported_keys = {k: p for p in exported_files for k in read_header(p) if k != "__metadata__"}
    for key in sorted(set(where) ^ set(exported_keys)):
        verdict.mismatch = Mismatch(
            key,
            0,
            0,
            0.0,
            0.0,
            why="in the base, absent from the export" if key in where else "in the export, not in the base",
        )
        return
    names, _, meta = key_map(trained.base, sorted(where))
    kept = _kept(meta, only)
    full: dict[str, Any] = {}
    if trained.run_dir and (trained.run_dir / "trained_components.safetensors").is_file():
        full = load_tensors(trained.run_dir / "trained_components.safetensors")
    full.update({k: v for k, v in trained.full.items() if k not in full})  # a bare adapter's modules_to_save
    targets = dict(unrounded.state_dict()) if unrounded is not None else {}
    zero = torch.zeros(())
    with ExitStack() as files:
        base = {path: files.enter_context(safe_open(str(path), framework="pt")) for path in base_files}
        for path in exported_files:
            exported = files.enter_context(safe_open(str(path), framework="pt"))
            for key in exported.keys():
                name = names[key]
                module = name.removesuffix(".weight")
                if kept(name) and name.endswith(".weight") and module in trained.lora:
                    reference, slack = lora_reference(model, module)
                    verdict.lora += 1
                elif kept(name) and name in full:
                    reference, slack = full[name], zero
                    verdict.full += 1
                else:  # unchanged, or left out by --only
                    reference, slack = base[where[key]].get_tensor(key), zero
                    verdict.copied += 1
                found = compare(key, exported.get_tensor(key), reference, slack, verdict.dtype)
                if found and not verdict.mismatch:
                    verdict.mismatch = found
                # a tensor transformers converts at load (experts fused) keeps the export's value
                unconverted = name in targets and tuple(targets[name].shape) == tuple(reference.shape)
                if unconverted and targets[name].is_floating_point():
                    with torch.no_grad():
                        targets[name].copy_(reference.to(targets[name].dtype))


def _kept(meta_model: Any, only: list[str] | None) -> Any:
    """Whether a parameter's component was merged (`merge --only`): else the base's tensor."""
    if only is None:
        return lambda name: True
    from vlmsurgeon.recipe.freeze import _component_map, _owner, classified_tree

    component_of = _component_map(classified_tree(meta_model, meta_model.config.model_type))
    return lambda name: _owner(name, component_of) in only


def verify(
    out: Path,
    trained: Any,
    dtype: str,
    target: str,
    origin: dict[str, Any] | None = None,
    logits: bool = True,
    only: list[str] | None = None,
) -> Verdict:
    """The verdict on OUT (tensors) and, as information, what the probe's logits show."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    gate = "trained" if (trained.quantized_components and target == "dequantized") else "original"
    verdict = Verdict(gate=gate, dtype=dtype)
    compute = compute_dtype(trained, origin)
    model = reference_model(trained, gate, compute)
    if not logits:
        check_tensors(out, trained, model, verdict, only=only)
        return verdict
    unrounded = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32, trust_remote_code=False)
    inputs = probe_inputs(AutoProcessor.from_pretrained(out, trust_remote_code=False))
    exported = _logits(unrounded, inputs)
    check_tensors(out, trained, model, verdict, unrounded, only)
    reference, merged = _logits(model, inputs), _logits(unrounded, inputs)
    verdict.logits = {
        "vs_reference": float((exported - reference).abs().max()),
        "rounding": float((exported - merged).abs().max()),
        "unrounded": float((merged - reference).abs().max()),
    }
    return verdict


def verify_export(out: Path, source: Path, base: str | None, summary: dict[str, Any]) -> Verdict:
    """`verify` for what `merge` just wrote from SOURCE: the same base, and the same 4-bit
    components (a bare adapter's were decided by the merge)."""
    from .merge import load_source

    trained, origin = load_source(source, base)
    trained.quantized_components = list(summary["quantized_components"])
    return verify(out, trained, summary["dtype"], summary["target"], origin, only=summary.get("only"))
