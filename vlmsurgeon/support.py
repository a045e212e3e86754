"""What `finetune` cannot train, known from the config before any weight is loaded. `finetune`
refuses such a model up front in one line and `plan` says the same, so that no user meets the
failure as an exception in the middle of a run."""

from __future__ import annotations

from typing import Any

# model_type -> why the default training path cannot run it (found by the family sweep).
UNSUPPORTED: dict[str, str] = {}


def training_blocker(config: Any) -> str | None:
    """The reason this model cannot be fine-tuned here, or None."""
    model_type = getattr(config, "model_type", None)
    if model_type in UNSUPPORTED:
        return UNSUPPORTED[model_type]
    if getattr(config, "is_encoder_decoder", False):
        return (f"{model_type} is an encoder-decoder model; finetune trains decoder-only VLMs, whose "
                "labels run along the same tokens as the input")
    return None
