"""`extract --verify`: one text-only prompt through the VLM and through the extracted text model, both
in fp32; the largest logit difference decides (exact within 1e-5 is ok). The text model must also load
every tensor it needs from the export: a tensor it initialised at random would pass for a bug."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .textlm import PROBE_INPUTS, innermost_decoder

PROMPT = "The quick brown fox jumps over the lazy dog, twice."
TOLERANCE = 1e-5


@dataclass
class Probe:
    max_abs: float
    tokens: int
    reference: str  # "vlm": the VLM's own forward; "lm modules": its decoder and head (it needs an image)
    load_problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.load_problems and self.max_abs <= TOLERANCE

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "max_abs_logit_delta": self.max_abs,
            "tolerance": TOLERANCE,
            "tokens": self.tokens,
            "reference": self.reference,
            "load_problems": self.load_problems,
        }


def line(verdict: dict[str, Any]) -> str:
    """A Probe's JSON as one sentence for a person."""
    where = "the VLM" if verdict["reference"] == "vlm" else "the VLM's decoder and head (its forward needs an image)"
    problems = verdict["load_problems"]
    return (
        f"verify: {'ok' if verdict['ok'] else 'FAILED'}: max |Δlogit| {verdict['max_abs_logit_delta']:.3g} vs "
        f"{where} on a {verdict['tokens']}-token text-only prompt in fp32 (ok within {verdict['tolerance']:g})"
        + (f"; loading: {'; '.join(problems)}" if problems else "")
    )


def _needs_image(model: Any) -> bool:
    """A forward with a required argument beyond the text (BLIP-2's pixel_values)."""
    params = list(inspect.signature(model.forward).parameters.values())
    text = ("input_ids", "attention_mask", "kwargs")
    return any(p.default is inspect.Parameter.empty and p.name not in text and p.kind != p.VAR_KEYWORD for p in params)


def _vlm_logits(vlm_dir: Path, ids: Any, family: str) -> tuple[Any, str]:
    import torch
    from transformers import AutoConfig

    from vlmsurgeon.model.sources import model_class

    config = AutoConfig.from_pretrained(vlm_dir)
    vlm = model_class(config).from_pretrained(vlm_dir, dtype=torch.float32, attn_implementation="eager").eval()
    mask = torch.ones_like(ids)
    with torch.no_grad():
        if _needs_image(vlm):
            hidden = innermost_decoder(vlm)(input_ids=ids, attention_mask=mask).last_hidden_state
            return vlm.get_output_embeddings()(hidden).float(), "lm modules"
        extra = {k: torch.full_like(ids, v) for k, v in PROBE_INPUTS.get(family, {}).items()}
        return vlm(input_ids=ids, attention_mask=mask, **extra).logits.float(), "vlm"


def probe(vlm_dir: Path, text_dir: Path, family: str) -> Probe:
    """The prompt is tokenized by the export's own tokenizer, as a user of the export would."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(text_dir)(PROMPT, return_tensors="pt").input_ids
    reference, how = _vlm_logits(vlm_dir, ids, family)
    text, info = AutoModelForCausalLM.from_pretrained(
        text_dir, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    problems = [
        f"{kind.replace('_', ' ')}: {', '.join(sorted(map(str, info[kind]))[:3])}"
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
        if info.get(kind)
    ]
    with torch.no_grad():
        logits = text.eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
    if logits.shape != reference.shape:
        problems.append(f"logits {tuple(logits.shape)} vs the VLM's {tuple(reference.shape)}")
        return Probe(float("inf"), ids.shape[1], how, problems)
    return Probe(float((logits - reference).abs().max()), ids.shape[1], how, problems)
