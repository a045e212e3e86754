"""Collation through the model's own processor and chat template. Labels cover the assistant
turns only: prompt, image tokens and padding are -100."""

from __future__ import annotations

from typing import Any

from .data import Sample
from .errors import BadInput

IGNORE = -100
# Processors whose token_type_ids mark prefix (0, bidirectional) vs suffix (1, causal, trained):
# for training, what is learned must be the causal suffix.
PREFIX_LM = ("PaliGemmaProcessor",)


def _images(messages: list[dict[str, Any]], images: list[Any], upto: int) -> list[Any]:
    """The images used by messages[:upto], in placeholder order."""
    count = sum(p["type"] == "image" for m in messages[:upto] for p in m["content"])
    return images[:count]


def _open(images: list[Any]) -> list[Any]:
    from PIL import Image

    out = []
    for image in images:
        if hasattr(image, "convert"):
            out.append(image.convert("RGB"))
        else:
            with Image.open(image) as handle:
                out.append(handle.convert("RGB"))
    return out


class Collator:
    """Turns samples into a padded batch. The assistant spans are found by rendering the
    conversation up to each assistant turn (with and without that turn) and counting tokens,
    which works for any chat template that renders earlier turns the same way."""

    def __init__(self, processor: Any, seq_len: int) -> None:
        self.processor = processor
        self.seq_len = seq_len
        tokenizer = getattr(processor, "tokenizer", processor)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def render(self, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def encode(self, text: str, images: list[Any]) -> dict[str, Any]:
        return self.processor(text=[text], images=images or None, return_tensors="pt")

    def labels(self, sample: Sample, images: list[Any], input_ids: Any) -> Any:
        import torch

        labels = torch.full_like(input_ids, IGNORE)
        full = input_ids.tolist()
        for k, message in enumerate(sample.messages):
            if message["role"] != "assistant":
                continue
            start_text = self.render(sample.messages[:k], generation_prompt=True)
            end_text = self.render(sample.messages[: k + 1]).rstrip()
            start = self.encode(start_text, _images(sample.messages, images, k))["input_ids"][0]
            end = self.encode(end_text, _images(sample.messages, images, k + 1))["input_ids"][0]
            # Longest common prefixes, not lengths: some processors append a token to every
            # text they encode (PaliGemma adds "\n"), which the full conversation does not have.
            n_start, n_end = _common(full, start.tolist()), _common(full, end.tolist())
            if n_end <= n_start:
                raise BadInput(f"data line {sample.line}: the chat template does not render earlier "
                               "turns the same way, so assistant tokens cannot be located",
                               "use a template that is prefix-stable (most are)")
            labels[n_start:n_end] = input_ids[n_start:n_end]
        return labels

    def encode_sample(self, sample: Sample) -> dict[str, Any]:
        images = _open(sample.images)
        batch = dict(self.encode(self.render(sample.messages), images))
        input_ids = batch["input_ids"][0]
        batch["labels"] = self.labels(sample, images, input_ids)[None]
        if type(self.processor).__name__ in PREFIX_LM and "token_type_ids" in batch:
            batch["token_type_ids"] = prefix_types(batch["labels"])
        return self.truncate(batch)

    def truncate(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Cut text beyond seq_len, but never inside the image tokens (the model would fail)."""
        length = batch["input_ids"].shape[1]
        if length <= self.seq_len:
            return batch
        image_id = getattr(self.processor, "image_token_id", None)
        positions = (batch["input_ids"][0] == image_id).nonzero() if image_id is not None else []
        keep = max(self.seq_len, int(positions.max()) + 1 if len(positions) else 0)
        return {k: (v[:, :keep] if _is_sequence(v, length) else v) for k, v in batch.items()}

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        encoded = [self.encode_sample(s) for s in samples]
        return pad_and_stack(encoded, self.pad_id)


def prefix_types(labels: Any) -> Any:
    """token_type_ids for a prefix-LM (PaliGemma): 0, attending both ways, only for the prompt
    before the first trained token; 1, causal, from there on. Every 0 attends to every other 0,
    so a later user turn or the newline after an answer must never be 0: it would let the
    prompt, and through it the answers, see tokens that come after them."""
    import torch

    types = torch.ones_like(labels)
    trained = (labels[0] != IGNORE).nonzero()
    first = int(trained[0]) if len(trained) else labels.shape[1]
    types[:, :first] = 0
    return types


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _is_sequence(value: Any, length: int) -> bool:
    return hasattr(value, "dim") and value.dim() >= 2 and value.shape[0] == 1 and value.shape[1] == length


def pad_and_stack(encoded: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad everything that runs along the sequence; concatenate the rest (pixel values,
    grids) along the first dimension."""
    import torch

    longest = max(e["input_ids"].shape[1] for e in encoded)
    out: dict[str, Any] = {}
    for key in encoded[0]:
        values = [e[key] for e in encoded]
        if all(_is_sequence(v, e["input_ids"].shape[1]) for v, e in zip(values, encoded)):
            fill = pad_id if key == "input_ids" else (IGNORE if key == "labels" else 0)
            padded = []
            for v in values:
                extra = longest - v.shape[1]
                if extra:
                    pad = torch.full((1, extra, *v.shape[2:]), fill, dtype=v.dtype)
                    v = torch.cat([v, pad], dim=1)
                padded.append(v)
            out[key] = torch.cat(padded, dim=0)
        elif hasattr(values[0], "dim"):
            out[key] = torch.cat(values, dim=0)
        else:
            out[key] = values[0] if len(values) == 1 else values
    return out
