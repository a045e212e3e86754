"""Where a model comes from: hub id, local directory or config.json; built on the meta device
from its config, or read from safetensors headers when its code lives in the model repo."""

from __future__ import annotations

import functools
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmsurgeon.errors import BadInput, how_to_set

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_MAX_HEADER = 100 * 1024 * 1024
# A model's JSON files (config, shard index) are kilobytes to a few megabytes.
_MAX_JSON = 64 * 1024 * 1024
HUB_HINT = (
    "pass a local model directory or its config.json; or download it where the hub is "
    "reachable and set HF_HUB_OFFLINE=1 to use the local cache"
)
# The deepest released models stack a few hundred layers; building 10**5 of them, even on the meta
# device, takes minutes, so a config beyond this is refused before anything is built.
MAX_LAYERS = 2048
_LAYER_KEY = re.compile(r"^(num_\w*layers|n_layers?|\w+_layers|\w*depth)$")


@dataclass
class Reference:
    """A resolved model reference."""

    text: str
    kind: str  # "dir" | "config" | "safetensors" | "hub"
    path: Path | None = None
    revision: str | None = None


@dataclass
class ModelSource:
    """A config dict plus what is known about the weights, before anything is built."""

    ref: Reference
    config: dict[str, Any]
    weight_files: list[Path] = field(default_factory=list)
    config_path: Path | None = None
    # A hub id read from the local cache because the hub is off (HF_HUB_OFFLINE) or unreachable:
    # nothing may be asked of the hub, the snapshot directory stands in for the repo.
    offline: bool = False

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type") or "")


def resolve(text: str, revision: str | None = None) -> Reference:
    """A local directory or file when it exists; else a hub id when it has the shape of one
    (`org/name`: one slash, no leading `.`, `/` or `~`, not a file name), looked up in the cache
    and the hub; anything else is a missing path."""
    path = Path(text).expanduser()
    if path.is_dir():
        return Reference(text, "dir", path, revision)
    if path.is_file():
        return Reference(text, "safetensors" if path.suffix == ".safetensors" else "config", path, revision)
    if looks_like_hub_id(text):
        return Reference(text, "hub", None, revision)
    raise BadInput(
        f"model '{text}': {missing_path(path)}",
        "pass a local model directory, a config.json, or a hub id like org/name",
    )


def looks_like_hub_id(text: str) -> bool:
    return (
        bool(_HUB_ID.match(text))
        and not text.startswith((".", "/", "~"))
        and not text.endswith((".json", ".safetensors"))
    )


def missing_path(path: Path) -> str:
    """ "no such file or directory", naming the deepest part that does exist (not `/` or `.`)."""
    for parent in path.parents:
        if parent in (Path("."), Path(parent.anchor)) or not parent.exists():
            continue
        if not parent.is_dir():
            return f"no such file or directory ('{parent}' is a file)"
        return f"no such file or directory ('{parent}' exists, '{path.relative_to(parent)}' in it does not)"
    return "no such file or directory"


def read_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > _MAX_JSON:
            raise BadInput(
                f"{path}: {path.stat().st_size / 2**20:,.0f} MiB, far larger than a model's JSON file",
                "point at the model's config.json",
            )
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})", "fix or re-download the file"
        ) from exc
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"{path}: not a JSON text file (byte 0x{exc.object[exc.start]:02x} at offset {exc.start} is not UTF-8)",
            "point at a model's config.json, or re-download it",
        ) from exc
    except RecursionError as exc:
        raise BadInput(f"{path}: JSON nested too deeply to be a model's file", "fix or re-download the file") from exc
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})", "check the path and permissions") from exc
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a JSON object, found {type(data).__name__}", "point at a model's config.json")
    return data


def local_weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map") or {}
        return [directory / name for name in sorted(set(weight_map.values()))]
    return sorted(directory.glob("*.safetensors"))


def load_source(ref: Reference) -> ModelSource:
    """Read the config (and list weight files) without building anything."""
    if ref.kind == "hub":
        return _hub_source(ref)
    assert ref.path is not None
    if ref.kind == "safetensors":
        config_path = ref.path.parent / "config.json"
        if not config_path.is_file():
            return ModelSource(ref, {}, [ref.path])
        return ModelSource(ref, read_json(config_path), [ref.path], config_path)
    if ref.kind == "config":
        directory = ref.path.parent
        return ModelSource(ref, read_json(ref.path), local_weight_files(directory), ref.path)
    config_path = ref.path / "config.json"
    weights = local_weight_files(ref.path)
    if not config_path.is_file() and not weights:
        raise BadInput(
            f"model '{ref.text}': directory has no config.json and no *.safetensors",
            "point at a saved model directory (save_pretrained) or its config.json",
        )
    if not config_path.is_file():
        return ModelSource(ref, {}, weights)
    return ModelSource(ref, read_json(config_path), weights, config_path)


def read_header(path: Path) -> dict[str, Any]:
    """Parse one safetensors header (8-byte length, then JSON) and check each entry: a dtype
    safetensors knows, a shape, data offsets inside the file. Tensor data is never read."""
    # bits per element of every dtype safetensors writes: any other name means a damaged file
    bits = {
        **dict.fromkeys(("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0"), 8),
        **dict.fromkeys(("I16", "U16", "F16", "BF16"), 16),
        **dict.fromkeys(("I32", "U32", "F32"), 32),
        **dict.fromkeys(("I64", "U64", "F64", "C64"), 64),
        "F4": 4,
        "F6_E2M3": 6,
        "F6_E3M2": 6,
    }
    hint = "re-download or re-save the file"
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise BadInput(f"{path}: truncated safetensors header ({len(head)} of 8 length bytes)", hint)
            (length,) = struct.unpack("<Q", head)
            if length > _MAX_HEADER:  # random bytes, or not a safetensors file at all
                raise BadInput(f"{path}: corrupt safetensors header (declares {length} header bytes)", hint)
            if length > size - 8:
                raise BadInput(
                    f"{path}: truncated safetensors header (declares {length} bytes, file has {size - 8})", hint
                )
            raw = fh.read(length)
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})", "check the path") from exc
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: corrupt safetensors header (not JSON)", hint) from exc
    if not isinstance(header, dict):
        raise BadInput(f"{path}: corrupt safetensors header (not a JSON object)", hint)
    data_size, ends = size - 8 - length, [0]
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise BadInput(
                f"{path}: corrupt safetensors header (entry '{name}' has no valid shape and data_offsets)", hint
            )
        if entry.get("dtype") not in bits:
            raise BadInput(f"{path}: tensor '{name}' has unknown dtype {entry.get('dtype')!r}", hint)
        ends.append(offsets[1])
    if max(ends) > data_size:
        raise BadInput(
            f"{path}: truncated safetensors file (header needs {max(ends)} data bytes, file has {data_size})", hint
        )
    return header


def header_tensors(source: ModelSource) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every tensor, from local headers or the hub's header metadata."""
    return weight_headers(source)[0]


def weight_headers(source: ModelSource) -> tuple[list[tuple[str, tuple[int, ...], str]], int]:
    """Every tensor's (name, shape, dtype) and the number of files they came from: local (or
    cached) safetensors headers, else the hub's header metadata."""
    out: list[tuple[str, tuple[int, ...], str]] = []
    if source.ref.kind == "hub" and not source.weight_files:
        files = _hub_headers(source).files_metadata.values()
        for meta in files:
            out.extend((n, tuple(t.shape), t.dtype) for n, t in meta.tensors.items())
        return out, len(files)
    for path in source.weight_files:
        for name, info in read_header(path).items():
            if name != "__metadata__":
                out.append((name, tuple(info["shape"]), info["dtype"]))
    return out, len(source.weight_files)


@functools.lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 3.0) -> bool:
    """One DNS + TCP check before huggingface_hub's own retries (which wait ~25 s offline)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_call(ref: Reference, fn: Any, *args: Any, **kwargs: Any) -> Any:
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE and not _hub_reachable():
        raise BadInput(f"model '{ref.text}': cannot reach the Hugging Face hub (offline)", hub_hint(ref.text))
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # huggingface_hub raises many types for "unreachable"/"missing"
        name = type(exc).__name__
        if name == "LocalEntryNotFoundError" or "Offline" in name:
            raise BadInput(
                f"model '{ref.text}': {_not_local(ref.text)}not in the local cache and the hub is not reachable",
                hub_hint(ref.text),
            ) from exc
        if name == "NotASafetensorsRepoError":
            raise BadInput(
                f"model '{ref.text}': the repo has no safetensors weights",
                remote_code_hint("pass a local directory with *.safetensors"),
            ) from exc
        if "NotFound" in name or "Gated" in name or "Revision" in name:
            raise BadInput(
                f"model '{ref.text}': {_not_local(ref.text)}not found on the hub ({name})",
                "check the id and revision, or pass a local directory",
            ) from exc
        raise BadInput(f"model '{ref.text}': cannot reach the Hugging Face hub ({name})", hub_hint(ref.text)) from exc


def hub_hint(repo_id: str) -> str:
    """What to do about a model that is neither local nor reachable; with HF_HUB_OFFLINE already
    set, only the download is left to suggest."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return (
            f"pass a local model directory or its config.json; or download it where the hub is "
            f"reachable (hf download {repo_id}) into this cache"
        )
    return HUB_HINT


def _not_local(text: str) -> str:
    """A hub id is also a relative path: say that no such directory exists either, naming the
    part that does (a folder named like the org) when one does."""
    detail = missing_path(Path(text).expanduser()).removeprefix("no such file or directory")
    return f"no such local directory{detail}; as a hub id, "


def remote_code_hint(alternative: str | None = None) -> str:
    """ "pass --trust-remote-code if you trust the repo's code" as the running command says it (a key
    of its file, for `budget check`); a command without that setting gets the alternative only."""
    how = how_to_set("trust_remote_code", "--trust-remote-code")
    if how is None:
        return alternative or (
            "this command runs no code from model repos: use a model that transformers builds natively"
        )
    return f"{how} if you trust the repo's code" + (f", or {alternative}" if alternative else "")


def _hub_source(ref: Reference) -> ModelSource:
    """The local cache is looked at first, without the network. It is used as it is when the hub
    is off (HF_HUB_OFFLINE=1) or unreachable, or when `--revision` pins a commit it holds;
    otherwise config.json comes from the hub (which refreshes the same cache)."""
    from huggingface_hub import constants

    config_path = cached_file(ref.text, "config.json", ref.revision)
    pinned = config_path is not None and bool(_COMMIT.match(ref.revision or ""))
    if constants.HF_HUB_OFFLINE or pinned:
        offline = bool(constants.HF_HUB_OFFLINE)
    else:
        offline = not _hub_reachable()
        if not offline:
            config_path = _hub_config(ref)
    if config_path is None:
        revision = f" at revision {ref.revision}" if ref.revision else ""
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub is not reachable"
        raise BadInput(
            f"model '{ref.text}'{revision}: {_not_local(ref.text)}not in the local cache "
            f"({constants.HF_HUB_CACHE}) and {why}",
            hub_hint(ref.text),
        )
    weights = cached_weights(ref.text, config_path.parent.name)
    return ModelSource(ref, read_json(config_path), weights, config_path, offline=offline)


def cached_file(repo_id: str, filename: str, revision: str | None) -> Path | None:
    """A file of a hub repo in the local cache (HF_HUB_CACHE / HF_HOME), found by
    huggingface_hub's own lookup (refs/<revision> -> snapshots/<commit>/<filename>)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except ValueError as exc:  # HFValidationError: "a/b..c", "a/-b", names over 96 characters
        raise BadInput(
            f"model '{repo_id}': not a valid hub id ({exc})", "pass a local path, or a hub id like org/name"
        ) from exc
    return Path(found) if isinstance(found, str) else None


def cached_weights(repo_id: str, commit: str) -> list[Path]:
    """The snapshot's safetensors files, when all of them are in the cache (else none)."""
    index = cached_file(repo_id, "model.safetensors.index.json", commit)
    if index is None:
        single = cached_file(repo_id, "model.safetensors", commit)
        return [single] if single else []
    names = sorted(set((read_json(index).get("weight_map") or {}).values()))
    shards = [cached_file(repo_id, name, commit) for name in names]
    return [p for p in shards if p] if names and all(shards) else []


def _hub_config(ref: Reference) -> Path:
    from huggingface_hub import hf_hub_download

    # Header metadata carries no config, so config.json is always fetched on its own.
    return Path(_hub_call(ref, hf_hub_download, ref.text, "config.json", revision=ref.revision))


def _hub_headers(source: ModelSource) -> Any:
    from huggingface_hub import get_safetensors_metadata

    ref = source.ref
    if source.offline:
        raise BadInput(
            f"model '{ref.text}': config.json is in the local cache but its safetensors "
            "weights are not (all shards), and the hub is not reachable",
            remote_code_hint(f"download them where the hub is reachable (hf download {ref.text})"),
        )
    return _hub_call(ref, get_safetensors_metadata, ref.text, revision=ref.revision)


def check_scale(config: dict[str, Any], origin: str) -> None:
    """Refuse, before building, a config that stacks more layers than any real model."""
    stack: list[tuple[str, Any]] = [("", config)]
    while stack:
        prefix, node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            where = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, (dict, list)):
                stack.append((where, value))
            elif (
                isinstance(value, int)
                and not isinstance(value, bool)
                and value > MAX_LAYERS
                and _LAYER_KEY.match(str(key))
            ):
                raise BadInput(
                    f"{origin}: {where} = {value:,}, more layers than any real model (limit "
                    f"{MAX_LAYERS:,}); building it would take minutes or hours",
                    "fix the config's layer count",
                )


def is_native(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def config_object(source: ModelSource, trust_remote_code: bool = False) -> Any:
    """A transformers config object for the source."""
    from transformers import AutoConfig

    check_scale(source.config, str(source.config_path or source.ref.text))
    model_type = source.model_type
    if is_native(model_type):
        try:
            return AutoConfig.from_pretrained(str(source.config_path))
        except Exception as exc:
            why = " ".join(str(exc).split())[:300]
            raise BadInput(
                f"model '{source.ref.text}': invalid {model_type} config ({why})", "fix config.json"
            ) from exc
    if not trust_remote_code:
        raise BadInput(
            f"model '{source.ref.text}': model_type '{model_type}' needs code from the model repo", remote_code_hint()
        )
    location = source.ref.text
    if source.ref.kind != "hub":
        location = str(_config_dir(source.ref))
    elif source.offline and source.config_path:  # the cached snapshot stands in for the repo
        location = str(source.config_path.parent)
    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=True, revision=source.ref.revision)
    except Exception as exc:
        raise BadInput(
            f"model '{source.ref.text}': the repo's config code failed ({exc})", "check the repo's configuration file"
        ) from exc


def _config_dir(ref: Reference) -> Path:
    assert ref.path is not None
    return ref.path if ref.kind == "dir" else ref.path.parent


_AUTO_ORDER = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM", "AutoModel")


def model_class(config: Any) -> Any:
    """The class `from_pretrained` would build for a native config: its declared architecture,
    else the image-text-to-text / causal-LM / base mapping."""
    import transformers
    from transformers.models.auto import modeling_auto as ma

    names = [*(getattr(config, "architectures", None) or [])]
    # multimodal-LM covers omni and audio-text models (Qwen2.5-Omni, Qwen2-Audio) with their heads
    multimodal = getattr(ma, "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES", {})
    for mapping_names in (
        ma.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        multimodal,
        ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        ma.MODEL_MAPPING_NAMES,
    ):
        name = mapping_names.get(config.model_type)
        names.append(name if isinstance(name, str) else None)
    for name in names:
        cls = getattr(transformers, name, None) if name else None
        if cls is not None:
            return cls
    for mapping in (ma.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, ma.MODEL_FOR_CAUSAL_LM_MAPPING, ma.MODEL_MAPPING):
        if type(config) in mapping:
            return mapping[type(config)]
    raise BadInput(
        f"no transformers model class for model_type '{config.model_type}'",
        "upgrade transformers, or point at a directory with safetensors weights",
    )


def build_on_meta(source: ModelSource, config: Any, trust_remote_code: bool = False, device: str = "meta") -> Any:
    """Instantiate the model on the meta device: exact structure, no memory, no weights.
    (`device="cpu"` builds it with random weights, for the probe's narrow replica.)"""
    import torch

    kwargs = {} if device == "meta" else {"dtype": torch.float32}
    try:
        with torch.device(device):
            if is_native(source.model_type):
                return model_class(config)._from_config(config, **kwargs)
            import transformers

            auto_map = source.config.get("auto_map") or {}
            for name in _AUTO_ORDER:
                if name in auto_map:
                    return getattr(transformers, name).from_config(config, trust_remote_code=True, **kwargs)
            return transformers.AutoModel.from_config(config, trust_remote_code=trust_remote_code, **kwargs)
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(
            f"model '{source.ref.text}': cannot build {source.model_type} from its "
            f"config ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
            "check config.json, or install the package the model needs",
        ) from exc
