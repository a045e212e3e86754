"""`extract`: a VLM's language model written as its own checkpoint (config, weights, tokenizer and chat
template) that `AutoModelForCausalLM` and `AutoTokenizer` load in plain transformers. Streamed: one
tensor in memory at a time, each kept in its stored dtype. A run directory (or a bare adapter) is
merged first, into a folder beside OUT that is removed afterwards."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from vlmsurgeon.errors import BadInput
from vlmsurgeon.fsutil import clean_leftovers
from vlmsurgeon.model.sources import read_json

from .provenance import versions
from .shards import ITEMSIZE, TensorReader, numel, torch_uint8, write_planned
from .textlm import DIFFERS, NO_TEXT_MODEL, Pair, disk_pairs, text_lm

COMPONENTS = ("lm",)
STAGING = ".{name}.extract-*"  # the export being built beside OUT, and a run merged for it
_NOT_COPIED = re.compile(
    r"(\.safetensors|\.bin|\.safetensors\.index\.json|\.bin\.index\.json|processor_config\.json)$"
    r"|^(config\.json|vlmsurgeon\.json|README\.md|\.gitattributes)$"
)
_SHORT = {"F32": "fp32", "BF16": "bf16", "F16": "fp16"}
_CHUNK = 16 * 2**20  # bytes copied at a time


def staging_beside(out: Path, inputs: tuple[Path, ...], kind: str = "extract") -> Path:
    """A new folder beside OUT, once what a killed extract left there is removed."""
    target = out.resolve()
    for path in inputs:
        if target == path.resolve() or target in path.resolve().parents:
            raise BadInput(f"output '{out}' holds the input '{path}'", "choose another -o")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-", dir=out.parent))  # matches STAGING
    except OSError as exc:
        raise BadInput(f"cannot write the output beside '{out}' ({exc.strerror})", "choose another -o") from exc


def is_run(source: Path) -> bool:
    """A finetune run or a bare peft adapter: its changes are merged before anything is taken out."""
    record = source / "vlmsurgeon.json"
    return (record.is_file() and "base" in read_json(record)) or (source / "adapter_config.json").is_file()


def stored_dtype(pairs: list[Pair]) -> str:
    """The floating dtype most of these tensors are stored in, as --dtype names it."""
    counts = Counter(p.dtype for p in pairs if p.dtype in _SHORT)
    return _SHORT[counts.most_common(1)[0][0]] if counts else "bf16"


def shard_plan(
    entries: list[tuple[str, tuple[int, ...], str]], max_bytes: int
) -> list[list[tuple[str, tuple[int, ...], str]]]:
    """(name, shape, stored dtype) grouped into output shards by size, every tensor in its own dtype."""
    shards: list[list[tuple[str, tuple[int, ...], str]]] = [[]]
    size = 0
    for name, shape, dtype in entries:
        nbytes = ITEMSIZE[dtype] * numel(shape)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape, dtype))
        size += nbytes
    return shards


def write_copied(pairs: list[Pair], plan: list[list[tuple[str, tuple[int, ...], str]]], out: Path) -> dict[str, str]:
    """The planned shards (`pairs` in plan order), each header known before any data: a tensor kept
    as stored is copied from its file in chunks, never whole in memory; one that is transposed on the
    way is read, transposed and written, alone in memory. Like shards.write_shards otherwise."""
    queue = iter(pairs)
    readers: dict[Path, TensorReader] = {}

    def write(fh: Any, name: str, shape: tuple[int, ...], dtype: str) -> None:
        pair = next(queue)
        reader = readers.get(pair.file) or readers.setdefault(pair.file, TensorReader(pair.file))
        _write_one(reader, pair, fh)

    try:
        return write_planned(plan, out, write)
    finally:
        for reader in readers.values():
            reader.__exit__()


def _write_one(reader: TensorReader, pair: Pair, fh: Any) -> None:
    if pair.swaps:
        tensor = reader.get(pair.key)
        for a, b in pair.swaps:  # the layout from_pretrained makes of it, which the text model reads as is
            tensor = tensor.transpose(a, b)
        fh.write(memoryview(tensor.contiguous().reshape(-1).view(torch_uint8()).numpy()))
        return
    begin, end = reader.header[pair.key]["data_offsets"]
    reader.file.seek(reader.start + begin)
    left = end - begin
    while left:
        chunk = reader.file.read(min(left, _CHUNK))
        if not chunk:
            raise BadInput(f"{pair.file}: truncated safetensors file ({pair.key})", "re-download or re-save the file")
        fh.write(chunk)
        left -= len(chunk)


def copy_tokenizer_files(base: Path, out: Path) -> list[str]:
    """The tokenizer, its chat template and the generation config: every file of BASE but weights,
    configs of the model and its image/video processors, and vlmsurgeon's own files. A processor's
    chat_template.json becomes chat_template.jinja, where the tokenizer looks for it."""
    copied = []
    for file in sorted(base.iterdir()):
        if file.is_file() and not _NOT_COPIED.search(file.name):
            shutil.copy2(file, out / file.name)
            copied.append(file.name)
    template = out / "chat_template.json"
    if template.is_file() and not (out / "chat_template.jinja").is_file():
        text = read_json(template).get("chat_template")
        if isinstance(text, str):
            (out / "chat_template.jinja").write_text(text)
            copied.append("chat_template.jinja")
    return copied


def extract(
    source: Path,
    out: Path,
    *,
    component: str = "lm",
    force: bool = False,
    verify: bool = False,
    max_shard_bytes: int = 5 * 10**9,
) -> dict[str, Any]:
    """Write SOURCE's language model to OUT (built beside it, renamed into place when complete)."""
    from .merge import _remove, check_output, commit

    if component not in COMPONENTS:
        raise BadInput(f"--component {component}: not supported", "--component lm (the language model and its head)")
    check_output(out, force)
    if not source.is_dir():
        raise BadInput(f"'{source}': no such directory", "point at a model directory or a finetune run")
    clean_leftovers(out, (STAGING,))
    staging = staging_beside(out, (source,))
    work = None
    try:
        base, merged = source, None
        if is_run(source):
            from .merge import load_source

            refuse(load_source(source, None)[0].base, force)  # before the merge, not after
            work = staging_beside(out, (source,))
            base, merged = _merged(source, work / "merged")
        summary = _write(base, staging, force, max_shard_bytes)
        summary.update(source=str(source), kind="run" if merged else "checkpoint", merge=merged, out=str(out))
        if verify:
            from .textprobe import probe

            summary["verify"] = probe(base, staging, summary["family"]).to_json()
        _provenance(staging, summary)
        commit(staging, out, force)
    except BaseException:
        _remove(staging)
        raise
    finally:
        if work is not None:
            _remove(work)
    return summary


def _merged(source: Path, into: Path) -> tuple[Path, dict[str, Any]]:
    """The run merged into `into`, in its base's stored dtype (its text model stays exact)."""
    from .merge import MergePlan, load_source, merge
    from .textlm import located
    from .trained import base_files

    trained, _ = load_source(source, None)
    counts = Counter(d for _, _, _, d in located(base_files(trained.base)) if d in _SHORT)
    dtype = _SHORT[counts.most_common(1)[0][0]] if counts else "bf16"
    summary = merge(source, into, plan=MergePlan(dtype=dtype))
    return into, {k: summary[k] for k in ("target", "dtype", "lora_modules_merged", "full_tensors")}


def refuse(base: Path, force: bool) -> str | None:
    """The family of the model at `base`, unless it is one extract refuses (NO_TEXT_MODEL always,
    DIFFERS without --force)."""
    family = read_json(base / "config.json").get("model_type") if (base / "config.json").is_file() else None
    if family in NO_TEXT_MODEL:
        raise BadInput(f"{family}: its language model cannot be extracted: {NO_TEXT_MODEL[family]}")
    if family in DIFFERS and not force:
        raise BadInput(
            f"{family}: its text path is not the plain LM: {DIFFERS[family]}; nothing written",
            "pass --force to write it anyway (--verify then measures how far it is)",
        )
    return family


def _write(base: Path, staging: Path, force: bool, max_shard_bytes: int) -> dict[str, Any]:
    from vlmsurgeon.model.inspection import meta_model

    from .trained import base_files

    family = refuse(base, force)
    files = base_files(base)
    _, model = meta_model(str(base))
    lm = text_lm(model)
    pairs = disk_pairs(files, model, lm)
    plan = shard_plan([(p.name, p.out_shape, p.dtype) for p in pairs], max_shard_bytes)
    weight_map = write_copied(pairs, plan, staging)
    dtype = stored_dtype(pairs)
    lm.config.dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
    lm.config.to_json_file(str(staging / "config.json"))
    files_copied = copy_tokenizer_files(base, staging)
    return {
        "component": "lm",
        "family": family,
        "text_model_type": lm.text_type,
        "model_type": lm.target,
        "architecture": lm.architecture,
        "tied": lm.tied,
        "tensors": len(pairs),
        "converted": sum(p.converted for p in pairs),
        "params": sum(numel(p.shape) for p in pairs),
        "dtype": dtype,
        "shards": len(set(weight_map.values())),
        "forced": DIFFERS.get(family),
        "left_out": lm.left_out,
        "files": files_copied,
    }


def _provenance(staging: Path, summary: dict[str, Any]) -> None:
    record = {"vlmsurgeon_extract": summary, "versions": versions()}
    (staging / "vlmsurgeon.json").write_text(json.dumps(record, indent=2) + "\n")
    (staging / "README.md").write_text(
        f"# Extracted with vlmsurgeon\n\nThe language model of `{summary['source']}` ({summary['family']}), "
        f"as {summary['architecture']}: {summary['tensors']} tensors, "
        f"{'head tied to the embeddings' if summary['tied'] else 'own head'}, {summary['dtype']}.\n\n"
        "Load with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`.\n"
        "Provenance: `vlmsurgeon.json`.\n"
    )
