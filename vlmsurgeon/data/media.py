"""Media references as datasets hold them: a path (relative to the data file or `--image-root`), a
dict with `path` / `bytes` (a `datasets` Image feature, undecoded), raw bytes, base64 or a
`data:` URI, or an already decoded PIL image. Each is checked at validation time; a URL is
refused there ("download first"), never found missing in the middle of a run."""

from __future__ import annotations

import base64
import binascii
import io
import re
from pathlib import Path
from typing import Any

_DATA_URI = re.compile(r"^data:(image|video)/[\w.+-]+;base64,", re.I)
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")
# Qwen-style processors refuse images whose long side exceeds 200 × the short side.
MAX_ASPECT = 200
# Smaller sides hold nothing to learn from (a 1×1 image is the placeholder a failed download leaves),
# and a 1- or 3-pixel side is what transformers takes for the channel axis of an image array.
MIN_SIDE = 4


class MediaError(ValueError):
    pass


def _decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(_DATA_URI.sub("", text).strip(), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"invalid base64 image data ({exc})") from None


# The first bytes of the media formats a bare base64 string may hold.
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x00")


def _looks_base64(text: str) -> bool:
    """Bare base64 (no `data:` prefix): only base64 characters, and it decodes to media bytes.
    A file name never qualifies: it has a dot."""
    if len(text) < 32 or not _BASE64.match(text) or "." in text:
        return False
    try:
        head = base64.b64decode(text[:64] + "=" * (-len(text[:64]) % 4), validate=False)
    except (binascii.Error, ValueError):
        return False
    return head.startswith(_MAGIC)


def _inline_bytes(value: Any, kind: str) -> bytes:
    """The `bytes` of a `{"bytes": …}` object: bytes as they are, base64 text (what a JSON export of
    a `datasets` Image column holds) decoded; anything else is a bad row, never a crash."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value)  # bytes written out as a JSON list of numbers
    if isinstance(value, str):
        text = _DATA_URI.sub("", value.strip())
        try:
            return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
        except (binascii.Error, ValueError):
            raise MediaError(f"{kind} 'bytes' is text that is not base64 ({value[:40]})") from None
    raise MediaError(f"{kind} 'bytes' must be bytes or base64 text, not {type(value).__name__}")


def resolve(ref: Any, base: Path, root: Path | None, kind: str) -> Any:
    """A reference as something `open_image` / the video loader takes: a Path, bytes or an image."""
    if hasattr(ref, "convert"):  # a decoded PIL image
        return ref
    if isinstance(ref, dict):
        if ref.get("bytes") is not None:
            return _inline_bytes(ref["bytes"], kind)
        if ref.get("path"):
            return resolve(ref["path"], base, root, kind)
        raise MediaError(f"{kind} object without 'path' or 'bytes' (keys: {', '.join(map(str, ref))})")
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref)
    if isinstance(ref, Path):
        ref = str(ref)
    if not isinstance(ref, str) or not ref.strip():
        raise MediaError(f"{kind} reference must be a path, a URL, base64 or an object, not {type(ref).__name__}")
    if re.match(r"^(https?|s3|gs|ftp)://", ref, re.I):
        raise MediaError(
            f"{kind} is a URL ({ref[:80]}): download first, then point at the files "
            "(relative to the data file, or pass --image-root)"
        )
    if _DATA_URI.match(ref) or _looks_base64(ref):
        return _decode_base64(ref)
    path = Path(ref).expanduser()
    relative = not path.is_absolute()
    if relative:
        path = (root or base) / path
    if not path.is_file():
        where = "" if not relative else f" under --image-root {root}" if root else f" (relative to {base})"
        raise MediaError(f"{kind} not found: {ref}{where}")
    return path


def check_media(ref: Any, kind: str, base: Path | None = None, root: Path | None = None) -> Any:
    """The one media check every command shares (finetune's pre-pass, data check, eval, generate):
    resolve a reference (relative paths start at `root`, else `base`, else the working directory)
    and open it far enough to know it decodes. Returns the resolved reference; MediaError, with
    what is wrong in one line, for anything unusable."""
    if kind not in ("image", "video"):
        raise ValueError(f"kind must be 'image' or 'video', not {kind!r}")
    try:
        resolved = resolve(ref, base or Path.cwd(), root, kind)
        (check_image if kind == "image" else check_video)(resolved)
    except MediaError:
        raise
    except Exception as exc:  # whatever a malformed reference raises on the way is still a bad reference
        raise MediaError(f"unusable {kind} reference ({type(exc).__name__}: {str(exc)[:120]})") from None
    return resolved


def open_image(ref: Any) -> Any:
    """An RGB PIL image from a resolved reference."""
    from PIL import Image

    if hasattr(ref, "convert"):
        return ref.convert("RGB")
    source = io.BytesIO(ref) if isinstance(ref, bytes) else ref
    with Image.open(source) as handle:
        return handle.convert("RGB")


def check_image(ref: Any) -> tuple[int, int]:
    """Open far enough to know it decodes; returns (width, height)."""
    from PIL import Image

    if hasattr(ref, "size"):
        size = ref.size
    else:
        try:
            with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as handle:
                handle.verify()
                size = handle.size
        except Exception as exc:
            name = "inline image data" if isinstance(ref, bytes) else str(ref)
            raise MediaError(f"cannot open image {name} ({type(exc).__name__})") from None
    width, height = size
    if min(width, height) >= 1 and max(width, height) / min(width, height) > MAX_ASPECT:
        raise MediaError(
            f"image of {width}×{height} pixels: aspect ratio over {MAX_ASPECT}, which "
            "vision processors refuse; crop or pad it"
        )
    if min(width, height) < MIN_SIDE:
        raise MediaError(
            f"image of {width}×{height} pixels: a side under {MIN_SIDE} pixels holds nothing "
            "to learn from (often the placeholder of a failed download); replace or drop it"
        )
    return width, height


def check_video(ref: Any) -> int:
    """Open the container far enough to count frames; returns the frame count (0 if unknown)."""
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a dependency
        raise MediaError("video rows need PyAV (pip install av)") from exc
    source = io.BytesIO(ref) if isinstance(ref, bytes) else str(ref)
    try:
        with av.open(source) as container:
            stream = container.streams.video[0]
            return int(stream.frames or 0)
    except Exception as exc:
        name = "inline video data" if isinstance(ref, bytes) else str(ref)
        raise MediaError(f"cannot open video {name} ({type(exc).__name__})") from None


def load_video(ref: Any, max_frames: int | None, fps: float | None, max_pixels: int | None = None) -> Any:
    """Frames as a (T, H, W, 3) uint8 array, sampled evenly (at `fps`, at most `max_frames`), each
    scaled down to at most `max_pixels` pixels, keeping its aspect (LLaMA-Factory's frame budget)."""
    import av
    import numpy as np

    source = io.BytesIO(ref) if isinstance(ref, bytes) else str(ref)
    with av.open(source) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        rate = float(stream.average_rate or 0) or None
    if not frames:
        raise MediaError(f"video {ref if not isinstance(ref, bytes) else 'data'} has no frames")
    keep = len(frames)
    if fps and rate:
        keep = min(keep, max(1, round(len(frames) * fps / rate)))
    if max_frames:
        keep = min(keep, max_frames)
    keep = max(2, keep) if len(frames) >= 2 else 1  # temporal patches need pairs on Qwen
    index = np.linspace(0, len(frames) - 1, keep).round().astype(int)
    return np.stack([_fit_pixels(frames[i], max_pixels) for i in index])


def _fit_pixels(frame: Any, max_pixels: int | None) -> Any:
    import numpy as np
    from PIL import Image

    height, width = frame.shape[:2]
    if not max_pixels or height * width <= max_pixels:
        return frame
    factor = (max_pixels / (height * width)) ** 0.5
    size = (max(1, int(width * factor)), max(1, int(height * factor)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))
