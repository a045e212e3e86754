"""Where rows come from: a JSONL file, a JSON array, a CSV / Parquet / Arrow file, a `datasets`
directory (save_to_disk), or a LLaMA-Factory `dataset_info.json` entry
(`--data DIR/dataset_info.json:NAME`, or a directory holding one). One reader per kind, chosen
from a table; each yields (row number, row or None, error or None)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmsurgeon.errors import BadInput

from .formats import FORMATTING, Spec

Rows = Iterator[tuple[int, Any, "str | None"]]
INFO = "dataset_info.json"
# dataset_info.json keys that point at a hub; this tool reads local files only.
_HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
_USED_INFO_KEYS = {"file_name", "formatting", "columns", "tags", "file_sha1", "ranking"}
# what an entry's rows are (LLaMA-Factory says it per entry), and the objective that trains them
_ENTRY_KIND = {
    "pair": ("a preference (ranking) dataset", "train on it with --objective dpo (or ipo, orpo, simpo)"),
    "label": ("a KTO dataset (kto_tag)", "train on it with --objective kto"),
}


@dataclass
class Source:
    """A resolved `--data` reference: the file or folder to read, how, and what the reader says."""

    path: Path
    base: Path  # relative media paths start here
    unit: str  # "line" (JSONL) or "row"
    rows: Callable[[], Rows]
    spec: Spec = field(default_factory=Spec)
    kind: str = "jsonl"
    notes: list[str] = field(default_factory=list)


def _jsonl(path: Path) -> Rows:
    with path.open("rb") as fh:
        for i, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield i, None, f"not UTF-8 text (byte {exc.start})"
                continue
            if not text.strip():
                continue
            try:
                yield i, json.loads(text), None
            except json.JSONDecodeError as exc:
                yield i, None, f"invalid JSON ({exc.msg} at column {exc.colno})"


def _json_array(path: Path) -> Rows:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadInput(f"data '{path}': not UTF-8 text (byte {exc.start})", "save the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object a line in a .json file: read it as JSONL
            yield from _jsonl(path)
            return
        raise BadInput(
            f"data '{path}': invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
            "fix the file, or write one JSON object a line (.jsonl)",
        ) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise BadInput(
            f"data '{path}': a JSON {type(data).__name__}, not an array of rows",
            "write a JSON array of row objects, or JSONL",
        )
    for i, row in enumerate(data, start=1):
        yield i, row, None


def _table(path: Path) -> Rows:
    """CSV / Parquet / Arrow through `datasets` (local files only)."""
    from datasets import load_dataset

    builder = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}[path.suffix.lower()]
    try:
        table = load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:
        raise BadInput(f"data '{path}': cannot read it as {builder} ({type(exc).__name__})", "check the file") from None
    for i, row in enumerate(table, start=1):
        yield i, row, None


def _saved_dataset(path: Path) -> Rows:
    try:
        from datasets import load_from_disk

        table = load_from_disk(str(path))
    except Exception as exc:
        raise BadInput(
            f"data '{path}': not a datasets directory ({type(exc).__name__})",
            "save it with Dataset.save_to_disk, or pass a .jsonl / .json file",
        ) from exc
    if hasattr(table, "keys") and "train" in table:
        table = table["train"]
    # Image features are read undecoded ({"path", "bytes"}): decoding happens when a batch is built
    try:
        from datasets import Image as ImageFeature

        for name, feature in table.features.items():
            if isinstance(feature, ImageFeature):
                table = table.cast_column(name, ImageFeature(decode=False))
            elif isinstance(getattr(feature, "feature", None), ImageFeature):
                table = table.cast_column(name, type(feature)(ImageFeature(decode=False)))
    except Exception:  # older layouts: rows arrive decoded, which the media layer also takes
        pass
    for i, row in enumerate(table, start=1):
        yield i, row, None


FILE_READERS: dict[str, tuple[str, Callable[[Path], Rows]]] = {
    ".jsonl": ("line", _jsonl),
    ".json": ("row", _json_array),
    ".csv": ("row", _table),
    ".parquet": ("row", _table),
    ".arrow": ("row", _table),
}


def _file_source(path: Path, spec: Spec = Spec(), notes: list[str] | None = None) -> Source:
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return Source(path, path, "row", lambda: _saved_dataset(path), spec, "datasets", notes or [])
        raise BadInput(
            f"data '{path}': a directory with no {INFO} and no saved dataset",
            f"pass a file, a LLaMA-Factory folder with {INFO}, or a save_to_disk folder",
        )
    suffix = path.suffix.lower()
    if suffix not in FILE_READERS:
        unit, reader = FILE_READERS[".jsonl"]  # unknown extension: one JSON object a line
    else:
        unit, reader = FILE_READERS[suffix]
    kind = "json" if suffix == ".json" else suffix.lstrip(".") or "jsonl"
    return Source(path, path.parent, unit, lambda: reader(path), spec, kind, notes or [])


def _info_entry(info: Path, name: str | None) -> tuple[str, dict[str, Any]]:
    try:
        entries = json.loads(info.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{info}: not valid JSON ({exc})", "fix the file") from None
    if not isinstance(entries, dict) or not entries:
        raise BadInput(f"{info}: expected an object of dataset entries", "see LLaMA-Factory's data/README.md")
    if name is None:
        if len(entries) != 1:
            raise BadInput(
                f"{info} holds {len(entries)} datasets: name one",
                f"--data {info}:NAME with NAME one of " + ", ".join(sorted(entries)[:10]),
            )
        name = next(iter(entries))
    if name not in entries:
        raise BadInput(f"{info}: no dataset '{name}'", "one of " + ", ".join(sorted(entries)[:10]))
    entry = entries[name]
    if not isinstance(entry, dict):
        raise BadInput(f"{info}: entry '{name}' is not an object", "see LLaMA-Factory's data/README.md")
    return name, entry


def _info_source(info: Path, name: str | None, kind: str = "sft") -> Source:
    name, entry = _info_entry(info, name)
    hub = [k for k in _HUB_KEYS if entry.get(k)]
    if hub and not entry.get("file_name"):
        raise BadInput(
            f"{info}:{name} points at a hub ({hub[0]}), which this machine does not read",
            "download the dataset and set file_name to the local file",
        )
    columns = entry.get("columns") or {}
    # LLaMA-Factory refuses an entry in the wrong stage; so does this, naming the objective.
    # (An SFT entry read for pairs or labels is read: each row is a bad row saying what it lacks.)
    entry_kind = (
        "pair" if entry.get("ranking") else "label" if isinstance(columns, dict) and "kto_tag" in columns else None
    )
    if entry_kind is not None and entry_kind != kind:
        what, fix = _ENTRY_KIND[entry_kind]
        raise BadInput(f"{info}:{name} is {what}", fix)
    if "file_name" not in entry:
        raise BadInput(f"{info}:{name} has no file_name", "set file_name to the data file")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTING:
        raise BadInput(f"{info}:{name}: formatting '{formatting}' is not known", "one of " + ", ".join(FORMATTING))
    tags = entry.get("tags") or {}
    notes = [f"{info.name}:{name}: key '{k}' is not used" for k in sorted(set(entry) - _USED_INFO_KEYS)]
    spec = Spec(
        formatting,
        {str(k): str(v) for k, v in columns.items()},
        {str(k): str(v) for k, v in tags.items()},
        ranking=bool(entry.get("ranking")),
    )
    target = info.parent / entry["file_name"]
    if not target.exists():
        raise BadInput(
            f"{info}:{name}: file_name '{entry['file_name']}' not found in {info.parent}",
            "fix file_name, or put the data beside dataset_info.json",
        )
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.suffix.lower() in FILE_READERS)
        if not files:
            return _file_source(target, spec, notes)
        sources = [_file_source(p, spec) for p in files]
        source = Source(target, info.parent, "row", lambda: _chain(sources), spec, "llamafactory", notes)
        return source
    source = _file_source(target, spec, notes)
    source.base, source.kind = info.parent, "llamafactory"
    return source


def _chain(sources: list[Source]) -> Rows:
    offset = 0
    for source in sources:
        last = 0
        for i, row, error in source.rows():
            last = i
            yield offset + i, row, error
        offset += last


def open_source(ref: str | Path, kind: str = "sft") -> Source:
    """Resolve a `--data` reference (file, directory, or dataset_info.json[:NAME]); `kind` is what
    the objective trains on (sft, pair, label), which a dataset_info entry must be."""
    text = str(ref)
    name = None
    if ":" in text and not Path(text).exists():
        text, name = text.rsplit(":", 1)
    path = Path(text)
    if not path.exists():
        raise BadInput(
            f"data '{ref}': no such file or directory",
            "pass a .jsonl / .json file, a datasets folder, or dataset_info.json:NAME",
        )
    if path.is_dir() and (path / INFO).is_file() and not (path / "state.json").is_file():
        return _info_source(path / INFO, name, kind)
    if path.name == INFO and path.is_file():
        return _info_source(path, name, kind)
    if name is not None:
        raise BadInput(
            f"data '{ref}': ':{name}' names a dataset, but {path.name} is not {INFO}", f"use DIR/{INFO}:NAME"
        )
    return _file_source(path)
