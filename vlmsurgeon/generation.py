"""`generate` and `chat`: load any SOURCE (hub id, model directory, run directory as trained,
bare peft adapter on its base, merged export) and answer a conversation through the model's own
chat template and processor, greedy by default, streaming the text as it comes."""

from __future__ import annotations

import os
import re
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
    sampling: dict[str, Any] = field(default_factory=dict)  # the run's video_frames, video_fps, max_pixels
    _marks: dict[str, str] | None = field(default=None, repr=False)

    def placeholders(self) -> dict[str, str]:
        """media_placeholders of this processor, found once (two chat-template renders per kind)."""
        if self._marks is None:
            self._marks = media_placeholders(self.processor)
        return self._marks


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


def _trained(trained: Any, dtype: Any, device: str) -> tuple[Any, Any, bool]:
    """A run or adapter loaded the way it trained: the QLoRA base in 4-bit NF4, then the
    adapter and trained components (verify's loader), and the run's own processor."""
    from .provenance import PROCESSOR_DIR
    from .freeze import as_trained_quantization
    from .verify import with_adapter

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


def _buildable(reference: str, trust_remote_code: bool) -> None:
    """Refuse, from its config alone, a model transformers cannot build here: a missing hub
    model (cache first, the hub only when online), a model type this transformers does not know."""
    from .inspection import unbuildable
    from .sources import is_native, load_source, resolve

    config = load_source(resolve(reference))
    model_type = config.model_type
    if not model_type:
        raise BadInput(f"model '{reference}': its config.json has no model_type",
                       "point at a model directory saved with save_pretrained")
    if is_native(model_type) or (trust_remote_code and config.config.get("auto_map")):
        return
    raise unbuildable(reference, model_type, bool(config.config.get("auto_map")))


def _fitted(source: Path, base: str | None, trust_remote_code: bool) -> Any:
    """The run's or adapter's changes, checked against the base they will be loaded onto as merge
    checks them: peft would skip a module the base lacks and answer as the bare base."""
    from .inspection import meta_model
    from .merge import check_fit
    from .trained import run_base
    from .trained import load_trained

    trained = load_trained(source, base or run_base(source))
    _buildable(str(trained.base), trust_remote_code)
    _, meta = meta_model(str(trained.base), trust_remote_code=trust_remote_code)
    check_fit(trained, dict(meta.state_dict()))
    return trained


def _preflight(source: str, base: str | None, trust_remote_code: bool) -> tuple[str, Any]:
    kind = source_kind(source)
    if base is not None and kind in ("model", "export"):
        raise BadInput(f"--base {base}: '{source}' is a {'merged export' if kind == 'export' else 'model'}, "
                       "which needs no base", "drop --base, or point SOURCE at a run or adapter")
    if kind in ("run", "adapter"):
        return kind, _fitted(Path(source), base, trust_remote_code)
    _buildable(source, trust_remote_code)
    return kind, None


def check_source(source: str, *, base: str | None = None, trust_remote_code: bool = False) -> str:
    """SOURCE's kind, after every check that needs no weights (its base, its model type, a run's
    or adapter's tensors against the base), so that `eval` refuses a bad one before generating."""
    return _preflight(source, base, trust_remote_code)[0]


def load_for_inference(source: str, *, base: str | None = None, trust_remote_code: bool = False) -> Loaded:
    """SOURCE as a model ready to generate: fp32 on CPU, bf16 on GPU; runs and adapters as trained."""
    kind, trained = _preflight(source, base, trust_remote_code)
    device, dtype = _device_dtype()
    quantized = False
    if trained is not None:
        model, processor_dir, quantized = _trained(trained, dtype, device)
    else:
        model, processor_dir = _model(source, dtype, device, trust_remote_code), source
    return Loaded(model.eval(), _processor(processor_dir, trust_remote_code), kind, source, quantized,
                  recorded_sampling(trained.record if trained is not None else _export_run(source)))


def _export_run(source: str) -> dict[str, Any]:
    """The run record a merged export carries (its vlmsurgeon.json), else nothing."""
    from .sources import read_json

    path = Path(source) / "vlmsurgeon.json"
    try:
        record = read_json(path).get("run") if path.is_file() else None
    except BadInput:
        return {}
    return record if isinstance(record, dict) else {}


def recorded_sampling(record: dict[str, Any]) -> dict[str, Any]:
    """How the run sampled videos (its --video-frames / --video-fps / --max-pixels): a run or its
    export answers on frames taken the way it trained, not at the defaults."""
    from .collate import SAMPLING_OPTIONS

    training = record.get("training") if isinstance(record, dict) else None
    if not isinstance(training, dict):
        return {}
    return {k: training[k] for k in SAMPLING_OPTIONS if training.get(k) is not None}


def _media_count(messages: list[dict[str, Any]], kind: str) -> int:
    return sum(p.get("type") == kind for m in messages for p in _parts(m))


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def media_placeholders(processor: Any) -> dict[str, str]:
    """placeholder text -> "image" | "video": LLaMA-Factory's `<image>` / `<video>`, the processor's
    own token (Qwen's `<|image_pad|>`) and what its chat template writes for a media part (Qwen's
    `<|vision_start|><|image_pad|><|vision_end|>`), for the kinds the processor takes."""
    from .collate import render_chat

    found: dict[str, str] = {}
    kinds = ("image", "video") if getattr(processor, "video_processor", None) is not None else ("image",)
    for kind in kinds:
        marks = [f"<{kind}>", getattr(processor, f"{kind}_token", None)]
        try:
            text = [{"type": "text", "text": "X"}]
            with_media = render_chat(processor, [{"role": "user", "content": [{"type": kind}, *text]}])
            without = render_chat(processor, [{"role": "user", "content": text}])
            marks.append(_inserted(with_media, without).strip())
        except Exception:  # a processor without a usable chat template: its token and ours still count
            pass
        found.update({mark: kind for mark in marks if isinstance(mark, str) and mark})
    return found


def _inserted(longer: str, shorter: str) -> str:
    """What `longer` has that `shorter` lacks, between their common start and end."""
    start = len(os.path.commonprefix([longer, shorter]))
    end = len(os.path.commonprefix([longer[start:][::-1], shorter[start:][::-1]]))
    return longer[start:len(longer) - end]


def _pattern(placeholders: dict[str, str]) -> re.Pattern[str] | None:
    marks = sorted(placeholders, key=len, reverse=True)  # Qwen's whole sequence before its token
    return re.compile("|".join(map(re.escape, marks))) if marks else None


def split_placeholders(text: str, placeholders: dict[str, str]) -> list[dict[str, Any]]:
    """`text` as Sample parts: each typed placeholder a media part, the rest text."""
    pattern, parts, at = _pattern(placeholders), [], 0
    for match in pattern.finditer(text) if pattern else ():
        if match.start() > at:
            parts.append({"type": "text", "text": text[at:match.start()]})
        parts.append({"type": placeholders[match.group()]})
        at = match.end()
    if at < len(text):
        parts.append({"type": "text", "text": text[at:]})
    return parts


def _placed(messages: list[dict[str, Any]], placeholders: dict[str, str]) -> list[dict[str, Any]]:
    """The user turns with their typed placeholders as media parts, so that they are counted
    (the processor would expand its own token, or take `<image>` as words, unchecked)."""
    out = []
    for message in messages:
        parts = _parts(message)
        if message.get("role") == "user":
            parts = [q for p in parts for q in (split_placeholders(p.get("text", ""), placeholders)
                                                if p.get("type") == "text" else [p])]
        out.append({**message, "content": parts})
    return out


def _check(loaded: Loaded, messages: list[dict[str, Any]], images: list[Any], videos: list[Any]) -> None:
    if not messages or messages[-1].get("role") != "user":
        raise BadInput("the last turn must be the user's", "end the conversation with a user message")
    for kind, given in (("image", images), ("video", videos)):
        placeholders = _media_count(messages, kind)
        if placeholders != len(given):
            raise BadInput(f"{placeholders} {kind} placeholder(s) but {len(given)} {kind}(s)",
                           f"give one {kind} per {{\"type\": \"{kind}\"}} part or placeholder typed in the text")
    if videos and getattr(loaded.processor, "video_processor", None) is None:
        raise BadInput(f"'{loaded.source}' takes no video (its processor, {type(loaded.processor).__name__}, "
                       "has no video processor)", "pass images instead, or use a video model")


def read_image(ref: Any) -> Any:
    """An RGB PIL image from a path, bytes, base64 or an image, through the media check that data
    check uses (media.check_media): BadInput with its line for a missing or unusable one."""
    from .media import MediaError, check_media, open_image

    try:
        return open_image(check_media(ref, "image"))
    except MediaError as exc:
        raise BadInput(str(exc), "check the path, or pass a PNG, JPEG or other image PIL reads") from None
    except Exception as exc:  # checked, yet the full decode failed (a truncated file)
        raise BadInput(f"cannot open image {ref if isinstance(ref, (str, Path)) else 'data'} "
                       f"({type(exc).__name__})", "pass a PNG, JPEG or other image PIL reads") from exc


def read_video(ref: Any) -> Any:
    """A video reference checked as data check checks one (media.check_media), resolved; frames
    already decoded (an array, a list of images) as they are."""
    from .media import MediaError, check_media

    if not isinstance(ref, (str, Path, bytes, bytearray, dict)):
        return ref  # already frames
    try:
        return check_media(ref, "video")
    except MediaError as exc:
        raise BadInput(str(exc), "check the path, or pass a video PyAV decodes (mp4, webm, …)") from None


def _video(ref: Any, collator: Any) -> Any:
    """Frames sampled as finetune samples them: the collator's fps, frame cap and pixel budget
    (collate.VIDEO_FPS, VIDEO_MAX_FRAMES, VIDEO_FRAME_PIXELS by default), never every frame."""
    from .media import load_video

    resolved = read_video(ref)
    if not isinstance(resolved, (Path, bytes)):
        return resolved  # already frames
    try:
        return load_video(resolved, collator.video_frames, collator.video_fps, collator.frame_pixels)
    except Exception as exc:  # MediaError, or PyAV's own on a stream that fails past its header
        raise BadInput(f"cannot open video {ref if not isinstance(ref, bytes) else 'data'} "
                       f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                       "pass a video PyAV decodes (mp4, webm, …)") from exc


def _inputs(loaded: Loaded, messages: list[dict[str, Any]], images: list[Any], videos: list[Any]) -> Any:
    import torch

    from .collate import Collator, render_chat

    clean = [{"role": m["role"], "content": _parts(m)} for m in messages]
    text = render_chat(loaded.processor, clean, generation_prompt=True)
    try:
        collator = Collator(loaded.processor, 1 << 30, **loaded.sampling)
        batch = collator.encode(text, [read_image(i) for i in images], [_video(v, collator) for v in videos])
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
    messages = _placed(messages, loaded.placeholders())
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


def prompt_turn(loaded: Loaded, text: str, images: int = 0, videos: int = 0) -> dict[str, Any]:
    """The user turn of a typed prompt. Placeholders typed in it (`<image>`, or the model's own,
    see media_placeholders) mark where the media go, as in LLaMA-Factory's data, and must match
    the media given one for one; a prompt without any gets its media before the text."""
    placeholders = loaded.placeholders()
    parts = split_placeholders(text, placeholders)
    pattern = _pattern(placeholders)
    typed = list(dict.fromkeys(pattern.findall(text))) if pattern else []
    lead = []
    for kind, given in (("image", images), ("video", videos)):
        count = sum(p["type"] == kind for p in parts)
        if count and count != given:
            names = ", ".join(t for t in typed if placeholders[t] == kind)
            raise BadInput(f"the prompt has {count} {kind} placeholder(s) ({names}) but {given} {kind}(s) given",
                           f"one {kind} per placeholder, or no placeholder to put the {kind}(s) before the text")
        lead += [{"type": kind}] * (0 if count else given)
    return {"role": "user", "content": [*lead, *parts]}


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
        messages = [*self.messages, prompt_turn(self.loaded, text, len(self.pending))]
        images = [*self.images, *self.pending]
        reply = answer(self.loaded, messages, images, max_new_tokens=self.max_new_tokens,
                       temperature=self.temperature, on_text=on_text)
        self.messages = [*messages, {"role": "assistant", "content": [{"type": "text", "text": reply.text}]}]
        self.images, self.pending = images, []
        return reply
