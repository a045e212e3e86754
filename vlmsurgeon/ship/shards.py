"""Safetensors shards read and written one tensor at a time, for merge's streaming export: the
reader uses plain reads (no mmap), the writer knows each file's header before any data."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vlmsurgeon.model.sources import read_header

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # --dtype -> torch name


class TensorReader:
    """Reads one tensor at a time with plain reads (safe_open maps the whole file, and every
    page it touches stays in the process's resident set until the file is closed)."""

    def __init__(self, path: Path) -> None:
        self.header = read_header(path)
        self.file = path.open("rb")
        self.start = 8 + int.from_bytes(self.file.read(8), "little")

    def get(self, name: str) -> Any:
        import torch

        entry = self.header[name]
        begin, end = entry["data_offsets"]
        buffer = bytearray(end - begin)
        self.file.seek(self.start + begin)
        self.file.readinto(buffer)
        dtype = getattr(torch, _TORCH_DTYPES[entry["dtype"]])
        if not buffer:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(entry["shape"])

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.file.close()


_ST_DTYPES = {
    "float32": "F32",
    "bfloat16": "BF16",
    "float16": "F16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_FLOATS = ("F32", "BF16", "F16", "F64")
_TORCH_DTYPES = {v: k for k, v in _ST_DTYPES.items()}


def shard_plan(
    layout: list[tuple[str, tuple[int, ...], str]], out_dtype: str, max_bytes: int
) -> list[list[tuple[str, tuple[int, ...], str]]]:
    """Group (name, shape, stored dtype) into output shards by size, from headers alone."""
    target = _ST_DTYPES[DTYPES[out_dtype]]
    shards: list[list[tuple[str, tuple[int, ...], str]]] = [[]]
    size = 0
    for name, shape, dtype in layout:
        dtype = target if dtype in _FLOATS else dtype
        nbytes = ITEMSIZE[dtype] * numel(shape)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape, dtype))
        size += nbytes
    return shards


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


Plan = list[list[tuple[str, tuple[int, ...], str]]]


def write_planned(plan: Plan, out: Path, write: Callable[[Any, str, tuple[int, ...], str], None]) -> dict[str, str]:
    """Write the planned shards: each file's header is known in advance, then `write(fh, name,
    shape, dtype)` writes each tensor's bytes in order, so no more than one tensor need be held at a
    time (safetensors' save_file would buffer a shard). Each shard is renamed into place when whole."""
    weight_map: dict[str, str] = {}
    total = len(plan)
    for i, entries in enumerate(plan, start=1):
        final = "model.safetensors" if total == 1 else f"model-{i:05d}-of-{total:05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, dtype in entries:
            nbytes = ITEMSIZE[dtype] * numel(shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        part = out / f".part-{i:05d}.safetensors"
        with part.open("wb") as fh:
            fh.write(len(raw).to_bytes(8, "little") + raw)
            for name, shape, dtype in entries:
                write(fh, name, shape, dtype)
        part.rename(out / final)
        weight_map.update({name: final for name, _, _ in entries})
    if total > 1:
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2)
        )
    return weight_map


def write_shards(tensors: Iterator[tuple[str, Any]], plan: Plan, out: Path) -> dict[str, str]:
    """The planned shards from `tensors` in plan order, each checked against its plan entry."""

    def write(fh: Any, name: str, shape: tuple[int, ...], dtype: str) -> None:
        key, tensor = next(tensors)
        if key != name or tuple(tensor.shape) != tuple(shape) or _ST_DTYPES[str(tensor.dtype)[6:]] != dtype:
            raise RuntimeError(f"merge: {key} does not match the planned {name} {shape} {dtype}")
        fh.write(memoryview(tensor.contiguous().reshape(-1).view(torch_uint8()).numpy()))

    return write_planned(plan, out, write)


def torch_uint8() -> Any:
    import torch

    return torch.uint8
