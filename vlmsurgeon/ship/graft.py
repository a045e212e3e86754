"""`graft`: BASE with components taken from other checkpoints. `--lm` from a text model of the
architecture `extract` writes for BASE (its tensors through extract's map, inverted) or from a VLM of
BASE's family; `--vision` and `--merger` from a VLM of BASE's family. Every tensor of a grafted
component must be found and fit before anything is written (a vocabulary smaller than BASE's keeps
BASE's rows beyond it); then BASE is streamed into OUT one tensor at a time, in its stored dtypes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmsurgeon.errors import BadInput
from vlmsurgeon.fsutil import clean_leftovers
from vlmsurgeon.model.sources import read_json

from .provenance import versions
from .shards import TensorReader, write_shards
from .textlm import Renamed, disk_pairs, located, renamer, text_lm

GRAFTABLE = {"lm": ("lm", "head"), "vision": ("vision",), "merger": ("merger",)}  # --lm carries the head
STAGING = ".{name}.graft-*"
_OWN = ("vlmsurgeon.json", "README.md")  # BASE's provenance is not OUT's
_WEIGHTS = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


@dataclass(frozen=True)
class Take:
    """Where one grafted BASE tensor comes from."""

    file: Path
    key: str
    swaps: tuple[tuple[int, int], ...] = ()  # into BASE's stored layout
    rows: int | None = None  # the donor's vocabulary rows, where fewer than BASE's (the rest stay BASE's)


@dataclass
class Donor:
    """A donor checkpoint's tensors: plain ones by parameter name, converted ones by on-disk key."""

    path: Path
    model: Any
    by_memory: dict[str, tuple[Path, str, tuple[int, ...]]]
    by_key: dict[str, tuple[Path, str, tuple[int, ...]]]
    used: set[str]

    def find(self, memory: str, key: str | None) -> tuple[Path, str, tuple[int, ...]] | None:
        found = self.by_key.get(key) if key is not None else self.by_memory.get(memory)
        if found is not None:
            self.used.add(found[1])
        return found


def _donor(path: Path, model: Any) -> Donor:
    from .trained import base_files

    read = renamer(model)
    by_memory, by_key = {}, {}
    for file, key, shape, _ in located(base_files(path)):
        r: Renamed = read(key)
        (by_key if r.converter is not None else by_memory)[key if r.converter is not None else r.memory] = (
            file,
            key,
            shape,
        )
    return Donor(path, model, by_memory, by_key, set())


def _fit(name: str, donor: tuple[int, ...], base: tuple[int, ...], vocab: bool, flag: str, source: Path) -> int | None:
    """None when the shapes agree; the donor's row count when it is a smaller vocabulary of BASE's."""
    if donor == base:
        return None
    if vocab and len(donor) == len(base) and donor[1:] == base[1:] and donor[0] < base[0]:
        return donor[0]
    raise BadInput(
        f"{flag} {source}: {name} is {donor} there, {base} in BASE", f"graft from a checkpoint whose {flag[2:]} fits"
    )


def _unused(donor: Donor, wanted: set[str], flag: str) -> None:
    left = sorted(k for k in wanted if k not in donor.used)
    if left:
        raise BadInput(f"{flag} {donor.path}: its tensor {left[0]} has no place in BASE", "graft a same-size model")


def _text_lm_takes(base_model: Any, files: list[Path], source: Path) -> tuple[dict[str, Take], dict[str, Any]]:
    """--lm from a text model: each BASE LM key found through extract's map."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    lm = text_lm(base_model)
    config = AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    donor = _donor(source, model)
    donor_tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    if lm.tied and not donor_tied:
        raise BadInput(
            f"--lm {source}: its head is its own, while BASE's is tied to its embeddings", "graft a tied text model"
        )
    embed = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    takes, rows = {}, {}
    for pair in disk_pairs(files, base_model, lm):
        # a tied donor's head is its embeddings: BASE's own head takes them
        memory = embed if donor_tied and lm.embeddings.get(pair.memory) == "head" else pair.text
        plain = not pair.rerooted
        found = donor.find(memory, None if plain else pair.name)
        if found is None:
            raise BadInput(f"--lm {source}: it has no {memory if plain else pair.name} (BASE's {pair.key})")
        fit = _fit(found[1], found[2], pair.out_shape, pair.memory in lm.embeddings, "--lm", source)
        takes[pair.key] = Take(found[0], found[1], tuple(reversed(pair.swaps)), fit)
        if fit is not None:
            rows[pair.key] = pair.shape[0] - fit
    _unused(donor, {k for _, k, _ in [*donor.by_memory.values(), *donor.by_key.values()]}, "--lm")
    return takes, {"kind": "text", "model_type": config.model_type, "vocab_rows_kept": rows, "left": lm.left_out}


def _vlm_takes(
    component: str, base_model: Any, layout: list[tuple[Path, str, tuple[int, ...], str]], source: Path
) -> tuple[dict[str, Take], dict[str, Any]]:
    """--vision/--merger/--lm from a VLM of BASE's family: the same tensor names on both sides."""
    from vlmsurgeon.model.inspection import meta_model
    from vlmsurgeon.recipe.freeze import _component_map, _owner, classified_tree

    _, model = meta_model(str(source))
    donor = _donor(source, model)
    read = renamer(base_model)
    owner = _component_map(classified_tree(base_model, base_model.config.model_type))
    vocab = {
        n
        for n, p in base_model.named_parameters()
        if p is base_model.get_input_embeddings().weight or p is base_model.get_output_embeddings().weight
    }
    takes, rows = {}, {}
    for _, key, shape, _ in layout:
        r = read(key)
        if _owner(r.memory, owner) not in GRAFTABLE[component]:
            continue
        found = donor.find(r.memory, key if r.converter is not None else None)
        if found is None:
            raise BadInput(f"--{component} {source}: it has no {r.memory} ({key} in BASE)")
        fit = _fit(key, found[2], shape, component == "lm" and r.memory in vocab, f"--{component}", source)
        takes[key] = Take(found[0], found[1], (), fit)
        if fit is not None:
            rows[key] = shape[0] - fit
    if not takes:
        raise BadInput(f"--{component}: BASE has no {component} tensors", "graft a component BASE has")
    donor_owner = _component_map(classified_tree(model, model.config.model_type))
    mine = {k for m, (_, k, _) in donor.by_memory.items() if _owner(m, donor_owner) in GRAFTABLE[component]}
    dread = renamer(model)
    mine |= {k for k in donor.by_key if _owner(dread(k).memory, donor_owner) in GRAFTABLE[component]}
    _unused(donor, mine, f"--{component}")
    return takes, {"kind": "vlm", "model_type": model.config.model_type, "vocab_rows_kept": rows}


def _plan(base: Path, donors: dict[str, Path]) -> tuple[list[Any], dict[str, Take], dict[str, Any]]:
    from vlmsurgeon.model.inspection import meta_model

    from .trained import base_files

    files = base_files(base)
    _, model = meta_model(str(base))
    family = model.config.model_type
    layout = located(files)
    takes: dict[str, Take] = {}
    record: dict[str, Any] = {}
    for component, source in donors.items():
        if not (source / "config.json").is_file():
            raise BadInput(f"--{component} {source}: no config.json there", "point at a saved checkpoint")
        kind = read_json(source / "config.json").get("model_type")
        if kind == family:
            got, info = _vlm_takes(component, model, layout, source)
        elif component == "lm":
            target = text_lm(model).target
            if kind != target:
                raise BadInput(
                    f"--lm {source}: a {kind} model; BASE ({family}) holds a {target} language model",
                    f"graft a {target} text model, or a {family} checkpoint",
                )
            got, info = _text_lm_takes(model, files, source)
        else:
            raise BadInput(
                f"--{component} {source}: a {kind} model, BASE is {family}", f"graft from a {family} checkpoint"
            )
        takes.update(got)
        record[component] = {"from": str(source), "tensors": len(got), **info}
    return layout, takes, record


def _grafted(layout: list[Any], takes: dict[str, Take]) -> Iterator[tuple[str, Any]]:
    """BASE's tensors in order, each grafted one read from its donor and cast to BASE's dtype."""
    import torch

    readers: dict[Path, TensorReader] = {}

    def reader(path: Path) -> TensorReader:
        if path not in readers:
            readers[path] = TensorReader(path)
        return readers[path]

    try:
        for path, key, _, _ in layout:
            tensor = reader(path).get(key)
            take = takes.get(key)
            if take is not None:
                stored = tensor.dtype
                donor = reader(take.file).get(take.key)
                for a, b in take.swaps:
                    donor = donor.transpose(a, b)
                if take.rows is not None:
                    donor = torch.cat([donor.to(stored), tensor[take.rows :]])
                tensor = donor.to(stored)
            yield key, tensor.contiguous()
    finally:
        for handle in readers.values():
            handle.__exit__()


def graft(
    base: Path, out: Path, donors: dict[str, Path], *, force: bool = False, max_shard_bytes: int = 5 * 10**9
) -> dict[str, Any]:
    """Write BASE with `donors` ({component: checkpoint}) grafted in to OUT, renamed into place."""
    from .extract import is_run, shard_plan, staging_beside
    from .merge import _remove, check_output, commit

    unknown = sorted(set(donors) - set(GRAFTABLE))
    if unknown or not donors:
        raise BadInput(f"graft: nothing to graft ({', '.join(unknown)})", "pass --lm, --vision or --merger FROM")
    check_output(out, force)
    for path in (base, *donors.values()):
        if not path.is_dir():
            raise BadInput(f"'{path}': no such directory", "point at checkpoints saved with save_pretrained")
        if is_run(path):
            raise BadInput(f"'{path}' is a run or adapter, not a checkpoint", f"vlmsurgeon merge {path} first")
    layout, takes, record = _plan(base, donors)
    clean_leftovers(out, (STAGING,))
    staging = staging_beside(out, (base, *donors.values()), "graft")
    try:
        plan = shard_plan([(key, shape, dtype) for _, key, shape, dtype in layout], max_shard_bytes)
        weight_map = write_shards(_grafted(layout, takes), plan, staging)
        for file in base.iterdir():
            if file.is_file() and not file.name.endswith(_WEIGHTS) and file.name not in _OWN:
                shutil.copy2(file, staging / file.name)
        summary = {
            "base": str(base),
            "out": str(out),
            "components": record,
            "tensors": len(layout),
            "grafted": len(takes),
            "shards": len(set(weight_map.values())),
        }
        (staging / "vlmsurgeon.json").write_text(
            json.dumps({"vlmsurgeon_graft": summary, "versions": versions()}, indent=2) + "\n"
        )
        commit(staging, out, force)
    except BaseException:
        _remove(staging)
        raise
    return summary
