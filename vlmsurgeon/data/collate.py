"""Collation through the model's own processor and chat template. Labels cover the assistant
turns only: prompt, image tokens and padding are -100."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vlmsurgeon.errors import BadInput

from .rows import Sample

IGNORE = -100
# How videos are sampled when the user sets nothing: LLaMA-Factory's defaults (ProcessorArguments
# video_fps, video_maxlen, video_max_pixels), with which its mllm_video_demo.json trains out of the
# box; qwen-vl-utils also samples at 2 fps. Every frame of a 10 s clip at 25 fps was 7,320 tokens.
VIDEO_FPS = 2.0
VIDEO_MAX_FRAMES = 128
VIDEO_FRAME_PIXELS = 256 * 256
# The run options (and Collator keywords) that decide how a video is sampled: recorded by a run,
# used again when it answers (generate, eval, --eval-generate)
SAMPLING_OPTIONS = ("video_frames", "video_fps", "max_pixels")
# Processors whose token_type_ids mark prefix (0, bidirectional) vs suffix (1, causal, trained):
# for training, what is learned must be the causal suffix.
PREFIX_LM = ("PaliGemmaProcessor",)
# Processors whose media tensors carry the batch dimension (batch, images, …): every row needs an
# entry. The rest concatenate media of all rows along the first dimension.
BATCH_ALIGNED = ("Idefics2Processor", "Idefics3Processor", "SmolVLMProcessor", "MllamaProcessor")
# Per-row counts that must have one entry per row, 0 for a row without media.
PER_ROW_KEYS = ("batch_num_images",)
# Processors that pack the media of a whole batch into one tensor, joined along a dimension
# (MiniCPM-V 4.6: every image's patches side by side along the width).
PACKED: dict[str, dict[str, int]] = {
    "MiniCPMV4_6Processor": {"pixel_values": -1, "pixel_values_videos": -1},
}
# Inputs a processor derives from the text that the model may only see for the prompt:
# InstructBLIP's Q-Former reads the instruction; given the whole conversation it would read the
# answers it is trained to write.
PROMPT_ONLY = ("qformer_input_ids", "qformer_attention_mask")
# Processors whose `<kind>_token_id` is the text placeholder, which they expand into other
# tokens: the token the model sees in its place (Ovis2 writes <IMG_ATOM>, hard-coded).
EXPANDED_MEDIA_TOKENS = {
    "Ovis2Processor": {"image": "<IMG_ATOM>"},
    # InternVL writes a video as frames of image-context tokens
    "InternVLProcessor": {"video": "<IMG_CONTEXT>"},
    # GLM-4.1V / 4.5V / 4.6V write each video frame as image tokens
    "Glm4vProcessor": {"video": "<|image|>"},
    "Glm46VProcessor": {"video": "<|image|>"},
    # Gemma 3's image_token_id is <start_of_image>, one marker per image; the
    # embeddings go to the <image_soft_token>s after it
    "Gemma3Processor": {"image": "<image_soft_token>"},
    "ShieldGemma2Processor": {"image": "<image_soft_token>"},
}


def _template_owner(processor: Any) -> Any:
    """Some processors drop the chat template they are given (BLIP-2, InstructBLIP); their
    tokenizer still has it."""
    if getattr(processor, "chat_template", None) is None and getattr(
        getattr(processor, "tokenizer", None), "chat_template", None
    ):
        return processor.tokenizer
    return processor


def renders_tools(processor: Any) -> bool:
    template = getattr(_template_owner(processor), "chat_template", None) or ""
    return "tools" in (template if isinstance(template, str) else json.dumps(template))


def render_chat(
    processor: Any, messages: list[dict[str, Any]], generation_prompt: bool = False, tools: list[Any] | None = None
) -> str:
    """The conversation as text, with the row's tool descriptions when it has some."""
    extra = {"tools": tools} if tools else {}
    return _template_owner(processor).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, **extra
    )


def _upto(messages: list[dict[str, Any]], refs: list[Any], upto: int, kind: str) -> list[Any]:
    """The media of one kind used by messages[:upto], in placeholder order."""
    count = sum(p["type"] == kind for m in messages[:upto] for p in m["content"])
    return refs[:count]


@dataclass
class RowStats:
    """One row as the model will see it: token counts, where its media end and its labels start."""

    tokens: int
    image_tokens: int
    video_tokens: int
    media_end: int  # one past the last image/video token (0 without media)
    first_label: int  # the first trained position
    video_inputs: bool = False  # the encoding holds a video tensor (pixel_values_videos, …)
    frames: int = 0  # the most frames sampled from one of the row's videos
    frame_pixels: int = 0  # the most pixels of one of those frames, as given to the processor

    @property
    def text_tokens(self) -> int:
        return self.tokens - self.image_tokens - self.video_tokens


class Collator:
    """Turns samples into a padded batch. The assistant spans are found by rendering the
    conversation up to each assistant turn (with and without that turn) and counting tokens,
    which works for any chat template that renders earlier turns the same way. Turns marked
    `train: false` (ms-swift's `"loss": false`) stay -100."""

    def __init__(
        self,
        processor: Any,
        seq_len: int,
        *,
        video_frames: int | None = None,
        video_fps: float | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.processor = processor
        self.seq_len = seq_len
        self.given = {"video_frames": video_frames, "video_fps": video_fps, "max_pixels": max_pixels}
        # --video-frames alone means that many frames over the whole video; the rest default
        self.video_fps = video_fps if video_fps or video_frames else VIDEO_FPS
        self.video_frames = video_frames or VIDEO_MAX_FRAMES
        # a pixel budget only where tokens grow with pixels; --max-pixels, when set, is the budget
        self.frame_pixels = VIDEO_FRAME_PIXELS if max_pixels is None and pixel_budgeted(processor) else None
        tokenizer = getattr(processor, "tokenizer", processor)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.media_ids = {kind: _token_id(processor, kind) for kind in ("image", "video")}
        self.batch_aligned = type(processor).__name__ in BATCH_ALIGNED
        self.packed = PACKED.get(type(processor).__name__, {})

    def render(
        self, messages: list[dict[str, Any]], generation_prompt: bool = False, tools: list[Any] | None = None
    ) -> str:
        return render_chat(self.processor, messages, generation_prompt, tools)

    def encode(self, text: str, images: list[Any], videos: list[Any] | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        if videos:
            # frames were already sampled (--video-frames / --video-fps): the processor must not
            # sample again, which several ask video metadata for
            kwargs["videos"], kwargs["do_sample_frames"] = videos, False
        return self.processor(**kwargs)

    def _span(self, sample: Sample, media: tuple[list[Any], list[Any]], full: list[int], k: int) -> tuple[int, int]:
        images, videos = media
        start_text = self.render(sample.messages[:k], generation_prompt=True, tools=sample.tools)
        end_text = self.render(sample.messages[: k + 1], tools=sample.tools).rstrip()
        start = self.encode(
            start_text, _upto(sample.messages, images, k, "image"), _upto(sample.messages, videos, k, "video")
        )["input_ids"][0]
        end = self.encode(
            end_text, _upto(sample.messages, images, k + 1, "image"), _upto(sample.messages, videos, k + 1, "video")
        )["input_ids"][0]
        # Longest common prefixes, not lengths: some processors append a token to every
        # text they encode (PaliGemma adds "\n"), which the full conversation does not have.
        n_start, n_end = _common(full, start.tolist()), _common(full, end.tolist())
        if n_end <= n_start:
            raise BadInput(
                f"data {sample.where}: the chat template does not render earlier "
                "turns the same way, so assistant tokens cannot be located",
                "use a template that is prefix-stable (most are)",
            )
        return n_start, n_end

    def labels(
        self, sample: Sample, media: tuple[list[Any], list[Any]], input_ids: Any, first_only: bool = False
    ) -> Any:
        """Labels for every trained turn; `first_only` stops after the first (all the pre-pass
        needs: each span costs two more processor calls)."""
        import torch

        labels = torch.full_like(input_ids, IGNORE)
        full = input_ids.tolist()
        for k, message in enumerate(sample.messages):
            if message["role"] == "assistant" and message.get("train", True):
                n_start, n_end = self._span(sample, media, full, k)
                labels[n_start:n_end] = input_ids[n_start:n_end]
                if first_only:
                    break
        return labels

    def video_sampling(self) -> dict[str, Any]:
        """How videos are sampled, and which of it are defaults rather than the user's options."""
        defaults = [
            name
            for name, value in (
                ("video_fps", self.given["video_fps"] is None and self.video_fps),
                ("video_frames", self.given["video_frames"] is None),
                ("max_pixels", self.frame_pixels),
            )
            if value
        ]
        return {
            "fps": self.video_fps,
            "max_frames": self.video_frames,
            "frame_pixels": self.frame_pixels,
            "defaults": defaults,
        }

    def load_media(self, sample: Sample) -> tuple[list[Any], list[Any]]:
        from .media import load_video, open_image

        return (
            [open_image(r) for r in sample.images],
            [load_video(r, self.video_frames, self.video_fps, self.frame_pixels) for r in sample.videos],
        )

    def full_encoding(
        self, sample: Sample, first_only: bool = False, media: tuple[list[Any], list[Any]] | None = None
    ) -> dict[str, Any]:
        """The whole row, labelled, before any truncation (`first_only`: only the first trained
        turn is labelled, for `measure`)."""
        media = media or self.load_media(sample)
        batch = dict(self.encode(self.render(sample.messages, tools=sample.tools), *media))
        input_ids = batch["input_ids"][0]
        batch["labels"] = self.labels(sample, media, input_ids, first_only)[None]
        if first_only:
            return batch
        if any(k in batch for k in PROMPT_ONLY):
            batch.update(self.prompt_inputs(sample, media))
        if type(self.processor).__name__ in PREFIX_LM and "token_type_ids" in batch:
            batch["token_type_ids"] = prefix_types(batch["labels"])
        return batch

    def prompt_inputs(self, sample: Sample, media: tuple[list[Any], list[Any]]) -> dict[str, Any]:
        """The PROMPT_ONLY inputs, encoded from the turns before the first assistant turn."""
        first = next((k for k, m in enumerate(sample.messages) if m["role"] == "assistant"), len(sample.messages))
        images, videos = media
        prompt = self.encode(
            self.render(sample.messages[:first], generation_prompt=True, tools=sample.tools),
            _upto(sample.messages, images, first, "image"),
            _upto(sample.messages, videos, first, "video"),
        )
        return {k: prompt[k] for k in PROMPT_ONLY if k in prompt}

    def prompt_encoding(self, sample: Sample, media: tuple[list[Any], list[Any]] | None = None) -> dict[str, Any]:
        """A prompt row as the model is asked it: the processor's output (a batch of one) for its
        messages rendered with the generation prompt, and its media. No labels."""
        media = media or self.load_media(sample)
        return dict(self.encode(self.render(sample.messages, generation_prompt=True, tools=sample.tools), *media))

    def measure(self, sample: Sample) -> RowStats:
        """What `finetune` checks before training: token counts and the media / label bounds. A
        prompt row (nothing trained) is measured as it is asked, with the generation prompt; its
        `first_label` is its length."""
        media = self.load_media(sample)
        if is_prompt(sample):
            batch = self.prompt_encoding(sample, media)
        else:
            batch = self.full_encoding(sample, first_only=True, media=media)
        ids = batch["input_ids"][0]
        counts, end = {}, 0
        for kind, token in self.media_ids.items():
            where = (ids == token).nonzero().flatten() if token is not None else ids[:0]
            if token is not None and not len(where):
                # the placeholder was expanded into other tokens (Molmo2: <im_patch>, <im_col>, …),
                # which the processor lists as its `image_token_ids` / `video_token_ids`
                marks = [t for t in getattr(self.processor, f"{kind}_token_ids", None) or [] if isinstance(t, int)]
                where = (ids[:, None] == ids.new_tensor(marks)).any(-1).nonzero().flatten() if marks else where
            counts[kind] = len(where)
            if len(where):
                end = max(end, int(where.max()) + 1)
        trained = (batch["labels"][0] != IGNORE).nonzero().flatten() if "labels" in batch else ids[:0]
        first = int(trained[0]) if len(trained) else len(ids)
        frames = [v for v in media[1] if hasattr(v, "shape") and len(v.shape) == 4]
        return RowStats(
            len(ids),
            counts["image"],
            counts["video"],
            end,
            first,
            any("video" in key for key in batch),
            max((v.shape[0] for v in frames), default=0),
            max((v.shape[1] * v.shape[2] for v in frames), default=0),
        )

    def count(self, sample: Sample) -> int:
        """The row's tokens, untruncated: one processor call (no labels), for what-if figures."""
        return int(
            self.encode(self.render(sample.messages, tools=sample.tools), *self.load_media(sample))["input_ids"].shape[
                1
            ]
        )

    def encode_sample(self, sample: Sample) -> dict[str, Any]:
        return self.truncate(self.full_encoding(sample), sample)

    def truncate(self, batch: dict[str, Any], sample: Sample | None = None) -> dict[str, Any]:
        """Cut text beyond seq_len. Rows whose media or first label lie beyond it were refused
        before training (`measure`); meeting one here is a bug, not a row to cut."""
        length = batch["input_ids"].shape[1]
        if length <= self.seq_len:
            return batch
        ids = batch["input_ids"][0]
        for token in self.media_ids.values():
            if token is not None and bool((ids[self.seq_len :] == token).any()):
                where = sample.where if sample else "a row"
                raise BadInput(
                    f"data {where}: its media tokens run past --seq-len {self.seq_len}",
                    "raise --seq-len, or lower --max-pixels / --video-frames",
                )
        return {k: (v[:, : self.seq_len] if _is_sequence(v, length) else v) for k, v in batch.items()}

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        encoded = [self.encode_sample(s) for s in samples]
        return pad_and_stack(encoded, self.pad_id, batch_aligned=self.batch_aligned, packed=self.packed)


def is_prompt(sample: Sample) -> bool:
    """A prompt row (GRPO's): no assistant turn in it trains."""
    return not any(m["role"] == "assistant" and m.get("train", True) for m in sample.messages)


def size_of(part: Any, attr: str = "size") -> dict[str, Any] | None:
    """A processor part's `size` (or `crop_size`) as a plain dict: transformers 4 holds a dict, 5 a
    SizeDict (its unset fields None); None when there is none."""
    size = getattr(part, attr, None)
    if isinstance(size, dict):
        return {k: v for k, v in size.items() if v is not None}
    if size is not None and hasattr(size, "__dataclass_fields__"):  # SizeDict
        return {k: getattr(size, k) for k in size.__dataclass_fields__ if getattr(size, k) is not None}
    return None


def pixel_budgeted_part(part: Any) -> bool:
    """A pixel-budget processor part (Qwen2/2.5/3-VL, GLM-4V, …): min/max pixels as its size's
    shortest/longest edge, so its tokens grow with a frame's pixels."""
    size = size_of(part) or {}
    return hasattr(part, "merge_size") and {"longest_edge", "shortest_edge"} <= set(size)


def pixel_budgeted(processor: Any) -> bool:
    """Whether the processor's video tokens grow with a frame's pixels, so that a frame pixel
    budget means fewer tokens. Fixed-size processors resize every frame to their own size anyway."""
    return pixel_budgeted_part(getattr(processor, "video_processor", None))


def _token_id(processor: Any, kind: str) -> int | None:
    expanded = EXPANDED_MEDIA_TOKENS.get(type(processor).__name__, {}).get(kind)
    if expanded is not None:
        return getattr(processor, "tokenizer", processor).convert_tokens_to_ids(expanded)
    for owner in (processor, getattr(processor, "tokenizer", None)):
        value = getattr(owner, f"{kind}_token_id", None)
        if isinstance(value, int):
            return value
    return None


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
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _is_sequence(value: Any, length: int) -> bool:
    return hasattr(value, "dim") and value.dim() >= 2 and value.shape[0] == 1 and value.shape[1] == length


def _pad_to(value: Any, shape: tuple[int, ...], fill: Any) -> Any:
    """`value` grown to `shape` (never shrunk), new cells set to `fill`."""
    import torch

    if tuple(value.shape) == shape:
        return value
    out = torch.full(shape, fill, dtype=value.dtype)
    out[tuple(slice(0, n) for n in value.shape)] = value
    return out


def pad_and_stack(
    encoded: list[dict[str, Any]], pad_id: int, *, batch_aligned: bool = False, packed: dict[str, int] | None = None
) -> dict[str, Any]:
    """Right-pad everything that runs along the sequence; concatenate the rest (pixel values,
    grids) along the first dimension, zero-padding other dimensions to the largest. Rows may
    differ in what they hold (text-only beside image and video rows): sequence tensors a row lacks
    are zeros; for processors whose media tensors carry the batch dimension (`batch_aligned`) a
    row without media gets an all-zero entry, which those models skip as padding."""
    import torch

    lengths = [e["input_ids"].shape[1] for e in encoded]
    longest = max(lengths)
    keys = list(dict.fromkeys(k for e in encoded for k in e))
    out: dict[str, Any] = {}
    for key in keys:
        present = [e[key] for e in encoded if key in e]
        if not all(hasattr(v, "dim") for v in present):
            out[key] = present[0] if len(present) == 1 else present
            continue
        if key in (packed or {}):
            out[key] = torch.cat(present, dim=packed[key])
            continue
        sequence = all(_is_sequence(e[key], n) for e, n in zip(encoded, lengths, strict=True) if key in e)
        rest = tuple(max(v.shape[d] for v in present) for d in range(2 if sequence else 1, present[0].dim()))
        if sequence:
            fill = pad_id if key == "input_ids" else (IGNORE if key == "labels" else 0)
            rows = [
                _pad_to(
                    e[key] if key in e else torch.zeros((1, n, *rest), dtype=present[0].dtype),
                    (1, longest, *rest),
                    fill,
                )
                for e, n in zip(encoded, lengths, strict=True)
            ]
        elif batch_aligned or key in PER_ROW_KEYS:
            rows = [
                _pad_to(e[key], (e[key].shape[0], *rest), 0)
                if key in e
                else torch.zeros((1, *rest), dtype=present[0].dtype)
                for e in encoded
            ]
        else:
            rows = [_pad_to(v, (v.shape[0], *rest), 0) for v in present]
        out[key] = torch.cat(rows, dim=0)
    return out
