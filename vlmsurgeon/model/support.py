"""What `finetune` cannot train, known from the config before any weight is loaded. `finetune`
refuses such a model up front in one line (with the setting that avoids it, when there is one)
and `plan` says the same, so that no user meets the failure as an exception in a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Blocker:
    """A failure the family sweep found, and the settings it happens under."""

    reason: str
    when: str = "always"  # always | 4bit | fp32 | checkpointing
    fix: str = ""  # the flag that avoids it, as the user types it
    fix_option: tuple[tuple[str, Any], ...] = ()  # the same, as RunOptions values
    transformers: str = ""  # only under these transformers versions (a prefix: "5.24."), else any


def _installed(prefix: str) -> bool:
    """Whether the installed transformers' version starts with `prefix` (read from its metadata:
    no import)."""
    from importlib.metadata import version

    return not prefix or version("transformers").startswith(prefix)


# model_type -> what stops training (found by `make sweep` on tiny models, transformers 5.23-5.24).
UNSUPPORTED: dict[str, Blocker] = {
    "gemma3n": Blocker(
        "Gemma 3n updates its AltUp coefficients in place, which a 4-bit layer cannot take",
        "4bit",
        "--quantize none",
        (("quantize", "none"),),
    ),
    "llama4": Blocker(
        "Llama 4's image processor returns bf16 pixels, which an fp32 model refuses",
        "fp32",
        "--dtype bf16",
        (("dtype", "bf16"),),
    ),
    "git": Blocker(
        "GIT adds its position embeddings in place, which gradient checkpointing refuses",
        "checkpointing",
        "--no-gradient-checkpointing",
        (("gradient_checkpointing", False),),
    ),
    "shieldgemma2": Blocker("ShieldGemma 2's processor replaces the conversation with its policy prompts"),
    "fuyu": Blocker(
        "Fuyu's processor drops the first token of each image segment, so image tokens and features disagree"
    ),
}

# Breakage of one transformers release, checked before the blockers above (found by `make sweep`).
UPSTREAM: dict[str, Blocker] = {
    "llama4": Blocker(
        "transformers 5.24's Llama4ForConditionalGeneration.forward reads `image_outputs` "
        "from its language model's output, which has none: every forward pass fails",
        fix="pip install 'transformers==5.23.*' (the last release whose Llama 4 runs)",
        transformers="5.24.",
    ),
}


def _applies(blocker: Blocker, opts: Any) -> bool:
    if opts is None or blocker.when == "always":
        return True
    if blocker.when == "4bit":
        return getattr(opts, "quantize", "4bit") == "4bit"
    if blocker.when == "checkpointing":
        return bool(getattr(opts, "gradient_checkpointing", True))
    if blocker.when == "fp32":
        import torch

        dtype = getattr(opts, "dtype", "auto")
        return dtype == "fp32" or (dtype == "auto" and not torch.cuda.is_available())
    return True


def upstream_breakage(model_type: str | None) -> tuple[str, str] | None:
    """(what the installed transformers breaks for this family, what to try), or None."""
    blocker = UPSTREAM.get(model_type or "")
    return (blocker.reason, blocker.fix) if blocker is not None and _installed(blocker.transformers) else None


def training_blocker(config: Any, opts: Any = None) -> tuple[str, str] | None:
    """(why this model cannot be fine-tuned with these options, what to try), or None. Without
    options (`plan`), every known blocker is named with its condition."""
    model_type = getattr(config, "model_type", None)
    upstream = upstream_breakage(model_type)
    if upstream is not None:
        return upstream
    blocker = UNSUPPORTED.get(model_type)
    if blocker is not None and _applies(blocker, opts):
        reason = (
            blocker.reason
            if opts is not None or blocker.when == "always"
            else (f"{blocker.reason} (with {blocker.when}; {blocker.fix} avoids it)")
        )
        return (
            reason,
            blocker.fix or "`vlmsurgeon tiny --list` and docs/families.md show what trains",
        )
    if getattr(config, "is_encoder_decoder", False):
        return (
            f"{model_type} is an encoder-decoder model; finetune trains decoder-only VLMs, whose labels "
            "run along the same tokens as the input"
        ), "the family table (docs/families.md) shows what trains"
    return None
