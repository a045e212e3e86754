"""`tiny`: a tiny random-weight VLM plus a working processor, built offline from the installed
transformers' own config classes, a byte-level tokenizer and the family's image processor."""

from __future__ import annotations

import glob
import inspect
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vlmsurgeon import fsutil
from vlmsurgeon.errors import BadInput

from .families import FAMILIES, Family

# Staging folder beside OUT: `.OUT.tiny-<pid>-<random>`; the pid tells a killed run's leftovers
# from a build still running. Earlier versions staged in `.OUT.<8 random>` (mkdtemp's default).
_STAGING = ".{name}.tiny-"
_LEGACY = re.compile(r"^[a-z0-9_]{8}$")
_SAVED = re.compile(r"^[\w.-]+\.(json|safetensors|jinja|txt|model)$")  # what save_pretrained writes

_TEMPLATE = """{%- macro render(content) -%}
{%- if content is string -%}{{- content -}}
{%- else -%}{%- for item in content -%}
{%- if item['type'] == 'image' -%}{{- '@IMAGE@' -}}
{%- elif item['type'] == 'video' -%}{{- '@VIDEO@' -}}
{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}
{%- endfor -%}{%- endif -%}
{%- endmacro -%}
@BOS@{%- for message in messages -%}
{{- '@T0@' + message['role'] + '\\n' -}}
{%- if message['role'] == 'assistant' -%}
{% generation %}{{- render(message['content']) + '@T1@' -}}{% endgeneration %}
{%- else -%}{{- render(message['content']) + '@T1@' -}}{%- endif -%}
{{- '\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '@T0@assistant\\n' -}}{%- endif -%}"""


def video_placeholder(family: Family) -> str:
    """What the template writes for a video: the family's own, else its image placeholder with the
    video token in place of the image token (Qwen's vision_start/end wrap both); none without a
    video processor."""
    if family.video_placeholder is not None or not family.video_processor:
        return family.video_placeholder or ""  # "" says: video input not offered by this tiny family
    image, video = family.specials.get("image_token"), family.specials.get("video_token")
    if image and video and image in family.placeholder:
        return family.placeholder.replace(image, video)
    return video or ""


def chat_template(family: Family) -> str:
    """A ChatML-style template; assistant turns are wrapped in {% generation %} so that
    `return_assistant_tokens_mask` marks exactly what the model should learn to write."""
    return (
        _TEMPLATE.replace("@IMAGE@", family.placeholder)
        .replace("@VIDEO@", video_placeholder(family))
        .replace("@BOS@", "{{- bos_token -}}" if family.bos else "")
        .replace("@T0@", family.turn[0])
        .replace("@T1@", family.turn[1])
    )


def _special_tokens(family: Family) -> list[str]:
    tokens = [
        *family.turn,
        family.pad,
        family.eos,
        *(t for t in [family.bos] if t),
        *family.specials.values(),
        *family.extra_tokens,
    ]
    if family.placeholder.startswith("<|vision_start|>"):
        tokens.append("<|endoftext|>")
    return list(dict.fromkeys(tokens))


def build_tokenizer(family: Family) -> Any:
    """Byte-level BPE with no merges: 256 byte tokens plus the family's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _special_tokens(family)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=family.bos,
        eos_token=family.eos,
        pad_token=family.pad,
        extra_special_tokens=dict(family.specials),
        padding_side="right",
        model_max_length=1024,
        chat_template=chat_template(family),
    )


def build_processor(family: Family, tokenizer: Any) -> Any:
    import transformers

    parts: dict[str, Any] = {
        "image_processor": getattr(transformers, family.image_processor)(**family.image_processor_kwargs),
        "tokenizer": tokenizer,
    }
    if family.video_processor:
        parts["video_processor"] = getattr(transformers, family.video_processor)(**family.video_processor_kwargs)
    # A callable value builds a further part from the tokenizer (a feature extractor, a
    # second tokenizer).
    extra = {k: v(tokenizer) if callable(v) else v for k, v in family.processor_kwargs.items()}
    cls = getattr(transformers, family.processor)
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.name == "chat_template" or p.kind is p.VAR_KEYWORD for p in params):
        extra["chat_template"] = chat_template(family)  # else only the tokenizer carries it
    return cls(**parts, **extra)


def build_config(family: Family, tokenizer: Any) -> Any:
    import transformers

    tid = tokenizer.convert_tokens_to_ids
    vocab = len(tokenizer)
    config = getattr(transformers, family.config_class)(**family.config(tid, vocab))
    ids = {
        "pad_token_id": tid(family.pad),
        "eos_token_id": tid(family.eos),
        # the tokenizer's: a family may give it one that the template does not write (Emu3)
        "bos_token_id": tid(tokenizer.bos_token) if tokenizer.bos_token else None,
    }
    for target in (config, getattr(config, "text_config", None)):
        for key, value in ids.items():
            if target is not None:
                setattr(target, key, value)
    return config


def _no_zero_matrices(model: Any) -> None:
    """Some families initialise a projection to zeros (Gemma 3's `mm_input_projection_weight`),
    which no released checkpoint has: everything before it would get a zero gradient on the first
    step. Tiny models stand in for trained ones, so such matrices get small random values."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2 and not param.any():
                param.normal_(0.0, 0.2)


def build_tiny(model_type: str, out: Path | str, *, seed: int = 0) -> Path:
    """Write model weights (safetensors), config, generation config and processor files to
    `out`, atomically: everything is written beside it and renamed into place at the end."""
    if model_type not in FAMILIES:
        raise BadInput(f"tiny: unknown family '{model_type}'", "one of " + ", ".join(sorted(FAMILIES)))
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise BadInput(f"tiny: output '{out}' already exists", "choose a new directory")
    family = FAMILIES[model_type]
    tmp = _staging(out)  # before the slow imports: an unwritable -o is said at once
    try:
        import torch
        from transformers import AutoModelForImageTextToText

        tokenizer = build_tokenizer(family)
        processor = build_processor(family, tokenizer)
        config = build_config(family, tokenizer)
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        _no_zero_matrices(model)
        model.generation_config.pad_token_id = config.pad_token_id
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        try:
            fsutil.publish(tmp, out)  # modes as under the umask, then one rename
        except OSError as exc:
            if out.exists():  # another `tiny` for the same OUT finished first
                raise BadInput(f"tiny: output '{out}' appeared while building", "choose a new directory") from exc
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _staging(out: Path) -> Path:
    """A fresh staging folder beside `out`, after removing what killed runs left there."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(out)
        return Path(tempfile.mkdtemp(prefix=_STAGING.format(name=out.name) + f"{os.getpid()}-", dir=out.parent))
    except OSError as exc:
        blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        why = f"'{blocking}' is a file" if blocking else exc.strerror or str(exc)
        raise BadInput(f"tiny: cannot write '{out}' ({why})", "choose a -o in a writable directory") from exc


def clean_leftovers(out: Path) -> list[Path]:
    """Remove the staging folders of killed `tiny` runs for `out`: those whose process is gone,
    and old-style `.OUT.<8 random>` folders holding only what save_pretrained writes."""
    prefix = _STAGING.format(name=out.name)
    dead = []
    for item in out.parent.glob(glob.escape(f".{out.name}.") + "*"):
        tail = item.name[len(out.name) + 2 :]
        if item.name.startswith(prefix):
            pid = item.name[len(prefix) :].partition("-")[0]
            if not (pid.isdigit() and _running(int(pid))):
                dead.append(item.name)
        elif (
            _LEGACY.match(tail)
            and item.is_dir()
            and not item.is_symlink()
            and all(f.is_file() and _SAVED.match(f.name) for f in item.iterdir())
        ):
            dead.append(item.name)
    return fsutil.clean_leftovers(out, tuple(glob.escape(n).replace("{", "{{").replace("}", "}}") for n in dead))


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
