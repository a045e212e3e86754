"""`generate` and `chat`: load any SOURCE (hub id, model directory, run directory as trained,
bare peft adapter on its base, merged export) and answer a conversation through the model's own
chat template and processor, greedy by default, streaming the text as it comes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import BadInput, RuntimeFailure

KINDS = ("model", "run", "adapter", "export")
_WHAT = "a model directory, hub id, run directory (finetune -o), peft adapter or merged export"


@dataclass
class Loaded:
    model: Any
    processor: Any
    kind: str  # one of KINDS
    source: str
    quantized: bool


@dataclass
class Answer:
    text: str
    tokens: int  # new tokens generated
    prompt_tokens: int
    seconds: float


def source_kind(source: str) -> str:
    """Which of KINDS `source` is, from the files it holds; BadInput naming what it is not."""
    from .sources import looks_like_hub_id, missing_path, read_json

    path = Path(source).expanduser()
    if not path.exists():
        if looks_like_hub_id(source):
            return "model"
        raise BadInput(f"'{source}': {missing_path(path)}", f"point at {_WHAT}")
    if not path.is_dir():
        raise BadInput(f"'{source}' is a file, not {_WHAT}", "point at the folder, not a file inside it")
    record = read_json(path / "vlmsurgeon.json") if (path / "vlmsurgeon.json").is_file() else {}
    if "vlmsurgeon_merge" in record and (path / "config.json").is_file():
        return "export"
    if "base" in record:
        return "run"
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        return "model"
    raise BadInput(f"'{source}' is not {_WHAT}: it has no config.json, vlmsurgeon.json or adapter_config.json",
                   "point at a model directory, a `vlmsurgeon finetune -o` run or a merge output")


def _device_dtype() -> tuple[str, Any]:
    import torch

    return ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)


def _processor(reference: str | Path, trust_remote_code: bool) -> Any:
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(reference), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BadInput(f"'{reference}': cannot load its processor ({first})",
                       "point at a folder that holds the processor and tokenizer files") from exc
    video = getattr(processor, "video_processor", None)
    if video is not None and getattr(video, "cap_pixels_per_frame", False) is None:
        video.cap_pixels_per_frame = True  # as finetune sets it (train.load_processor)
    return processor


def _model(reference: str | Path, dtype: Any, device: str, trust_remote_code: bool) -> Any:
    from transformers import AutoModelForImageTextToText

    try:
        model = AutoModelForImageTextToText.from_pretrained(str(reference), dtype=dtype,
                                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BadInput(f"model '{reference}': cannot load weights ({first})",
                       "point at a local directory with the model's safetensors, or a cached hub id") from exc
    return model.to(device)


def _trained(source: Path, base: str | None, dtype: Any, device: str) -> tuple[Any, Any, bool]:
    """A run or adapter loaded the way it trained: the QLoRA base in 4-bit NF4, then the
    adapter and trained components (verify's loader), and the run's own processor."""
    from .provenance import PROCESSOR_DIR, run_base
    from .trained import load_trained
    from .verify import as_trained_quantization, with_adapter

    trained = load_trained(source, base or run_base(source))
    quant = as_trained_quantization(trained, dtype)
    kwargs: dict[str, Any] = {"quantization_config": quant} if quant is not None else {}
    if quant is not None and device == "cuda":
        kwargs["device_map"] = {"": 0}
    model = with_adapter(trained.base, trained, dtype, **kwargs)
    if quant is None:
        model = model.to(device)
    run_processor = trained.run_dir / PROCESSOR_DIR if trained.run_dir else None
    processor_dir = run_processor if run_processor and run_processor.is_dir() else trained.base
    return model, processor_dir, quant is not None


def load_for_inference(source: str, *, base: str | None = None, trust_remote_code: bool = False) -> Loaded:
    """SOURCE as a model ready to generate: fp32 on CPU, bf16 on GPU; runs and adapters as trained."""
    kind = source_kind(source)
    if base is not None and kind in ("model", "export"):
        raise BadInput(f"--base {base}: '{source}' is a {'merged export' if kind == 'export' else 'model'}, "
                       "which needs no base", "drop --base, or point SOURCE at a run or adapter")
    device, dtype = _device_dtype()
    quantized = False
    if kind in ("run", "adapter"):
        model, processor_dir, quantized = _trained(Path(source), base, dtype, device)
    else:
        model, processor_dir = _model(source, dtype, device, trust_remote_code), source
    return Loaded(model.eval(), _processor(processor_dir, trust_remote_code), kind, source, quantized)


def _media_count(messages: list[dict[str, Any]], kind: str) -> int:
    return sum(p.get("type") == kind for m in messages for p in _parts(m))


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def _check(loaded: Loaded, messages: list[dict[str, Any]], images: list[Any], videos: list[Any]) -> None:
    if not messages or messages[-1].get("role") != "user":
        raise BadInput("the last turn must be the user's", "end the conversation with a user message")
    for kind, given in (("image", images), ("video", videos)):
        placeholders = _media_count(messages, kind)
        if placeholders != len(given):
            raise BadInput(f"{placeholders} {kind} placeholder(s) but {len(given)} {kind}(s)",
                           f"give one {kind} per {{\"type\": \"{kind}\"}} part")
    if videos and getattr(loaded.processor, "video_processor", None) is None:
        raise BadInput(f"'{loaded.source}' takes no video (its processor, {type(loaded.processor).__name__}, "
                       "has no video processor)", "pass images instead, or use a video model")


def read_image(ref: Any) -> Any:
    """An RGB PIL image from a path, bytes or an image; BadInput naming a missing or unreadable one."""
    from .media import open_image

    if isinstance(ref, (str, Path)) and not Path(ref).is_file():
        raise BadInput(f"image not found: {ref}", "check the path")
    try:
        return open_image(ref)
    except Exception as exc:  # PIL's UnidentifiedImageError, OSError on a damaged file
        raise BadInput(f"cannot open image {ref if isinstance(ref, (str, Path)) else 'data'} "
                       f"({type(exc).__name__})", "pass a PNG, JPEG or other image PIL reads") from exc


def _video(ref: Any) -> Any:
    from .media import load_video

    if not isinstance(ref, (str, Path, bytes)):
        return ref  # already frames
    if isinstance(ref, (str, Path)) and not Path(ref).is_file():
        raise BadInput(f"video not found: {ref}", "check the path")
    try:
        return load_video(ref, None, None)
    except Exception as exc:  # MediaError, or PyAV's own on a file that is no video
        raise BadInput(f"cannot open video {ref if not isinstance(ref, bytes) else 'data'} "
                       f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                       "pass a video PyAV decodes (mp4, webm, …)") from exc


def _inputs(loaded: Loaded, messages: list[dict[str, Any]], images: list[Any], videos: list[Any]) -> Any:
    import torch

    from .collate import Collator, render_chat

    clean = [{"role": m["role"], "content": _parts(m)} for m in messages]
    text = render_chat(loaded.processor, clean, generation_prompt=True)
    try:
        batch = Collator(loaded.processor, 1 << 30).encode(text, [read_image(i) for i in images],
                                                           [_video(v) for v in videos])
    except (ValueError, TypeError) as exc:  # placeholder/feature mismatches the processor finds
        raise BadInput(f"the processor refused the input ({str(exc).splitlines()[0][:200]})",
                       "check the images and videos against the placeholders") from exc
    device = next(loaded.model.parameters()).device
    dtype = _compute_dtype(loaded.model)
    out = {}
    for key, value in dict(batch).items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out


def _compute_dtype(model: Any) -> Any:
    import torch

    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return torch.bfloat16 if torch.bfloat16 in floats else (floats[0] if floats else torch.float32)


def _streamer(processor: Any, on_text: Callable[[str], None]) -> Any:
    from transformers import TextStreamer

    class _Stream(TextStreamer):
        """TextStreamer's word-boundary decoding, handed to a callback instead of print."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return _Stream(getattr(processor, "tokenizer", processor), skip_prompt=True, skip_special_tokens=True)


def answer(loaded: Loaded, messages: list[dict[str, Any]], images: list[Any] = (), videos: list[Any] = (), *,
           max_new_tokens: int = 128, temperature: float = 0.0,
           on_text: Callable[[str], None] | None = None) -> Answer:
    """The model's reply to `messages` (the Sample shape; the last turn the user's): greedy unless
    temperature > 0, only the new tokens decoded, streamed through `on_text` as they come."""
    import torch

    images, videos = list(images), list(videos)
    if max_new_tokens < 1:
        raise BadInput(f"max_new_tokens {max_new_tokens}: must be at least 1", "e.g. --max-new-tokens 64")
    if temperature < 0:
        raise BadInput(f"temperature {temperature}: must not be negative", "0 for greedy decoding")
    _check(loaded, messages, images, videos)
    inputs = _inputs(loaded, messages, images, videos)
    tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
    sampling: dict[str, Any] = {"do_sample": True, "temperature": temperature} if temperature > 0 else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start = time.perf_counter()
    try:
        with torch.no_grad():
            output = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                           streamer=_streamer(loaded.processor, on_text) if on_text else None,
                                           **sampling)
    except torch.cuda.OutOfMemoryError as exc:
        raise RuntimeFailure("out of GPU memory while generating", "fewer --max-new-tokens or a smaller image") from exc
    seconds = time.perf_counter() - start
    prompt_tokens = int(inputs["input_ids"].shape[1])
    new = output[0, prompt_tokens:]
    return Answer(tokenizer.decode(new, skip_special_tokens=True), int(new.numel()), prompt_tokens, seconds)


def user_turn(text: str, images: int = 0, videos: int = 0) -> dict[str, Any]:
    """One user message in the Sample shape: its media placeholders first, then the text."""
    parts = [{"type": "image"}] * images + [{"type": "video"}] * videos + [{"type": "text", "text": text}]
    return {"role": "user", "content": [dict(p) for p in parts]}


@dataclass
class Chat:
    """A conversation kept as messages and media; every turn re-renders the whole history
    through the chat template."""

    loaded: Loaded
    max_new_tokens: int = 128
    temperature: float = 0.0
    messages: list[dict[str, Any]] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)  # images attached to the next turn

    def attach(self, path: str) -> None:
        self.pending.append(read_image(path))  # opened now, so a bad path is said at once

    def reset(self) -> None:
        self.messages, self.images, self.pending = [], [], []

    def ask(self, text: str, on_text: Callable[[str], None] | None = None) -> Answer:
        messages = [*self.messages, user_turn(text, len(self.pending))]
        images = [*self.images, *self.pending]
        reply = answer(self.loaded, messages, images, max_new_tokens=self.max_new_tokens,
                       temperature=self.temperature, on_text=on_text)
        self.messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": reply.text}]}]
        self.images, self.pending = images, []
        return reply
