"""vlmsurgeon: inspect, freeze, fine-tune (QLoRA), merge and guard vision-language models.

One package per stage of the user's path (`model/` → `recipe/` → `plan/` | `data/` → `ship/` →
`use/` → `train/` → `cli/`), imports pointing down only; see docs/development.md. Modules of the
old flat layout (0.1: `vlmsurgeon.freeze`, `vlmsurgeon.generation`, …) still import, with a
DeprecationWarning naming the new path (`MOVED`)."""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings

__version__ = "0.1.0"

# old flat module -> where it lives now (the old names that are now packages are not here:
# `data`, `plan`, `tiny`, `train`, `cli`; CHANGELOG names their new paths)
MOVED = {
    "sources": "model.sources",
    "checkpoint": "model.checkpoint",
    "components": "model.components",
    "tree": "model.tree",
    "report": "model.report",
    "inspection": "model.inspection",
    "support": "model.support",
    "tiny_families": "tiny.families",
    "preset": "recipe.preset",
    "freeze": "recipe.freeze",
    "memory": "plan.memory",
    "budget": "plan.budget",
    "probe": "plan.probe",
    "replica": "plan.replica",
    "readers": "data.readers",
    "formats": "data.formats",
    "media": "data.media",
    "collate": "data.collate",
    "datacheck": "data.check",
    "trainer_parts": "train.trainer",
    "loss": "train.loss",
    "prepare": "train.prepare",
    "resume": "train.resume",
    "runlock": "train.runlock",
    "telemetry": "train.telemetry",
    "distributed": "train.distributed",
    "runconfig": "train.runconfig",
    "merge": "ship.merge",
    "shards": "ship.shards",
    "verify": "ship.verify",
    "diff": "ship.diff",
    "provenance": "ship.provenance",
    "trained": "ship.trained",
    "generation": "use.generation",
    "evaluate": "use.evaluate",
    "eval_report": "use.eval_report",
    "render": "cli.render",
}


class _Moved:
    """`import vlmsurgeon.freeze` gives `vlmsurgeon.recipe.freeze` itself (one module object, so
    monkeypatching either name patches both), with a DeprecationWarning."""

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        old = fullname.removeprefix(__name__ + ".")
        if fullname.startswith(__name__ + ".") and old in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        new = f"{__name__}.{MOVED[spec.name.removeprefix(__name__ + '.')]}"
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):  # type: ignore[no-untyped-def]
        pass


if not any(isinstance(finder, _Moved) for finder in sys.meta_path):
    sys.meta_path.append(_Moved())
