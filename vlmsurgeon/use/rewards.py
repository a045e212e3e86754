"""Verifiable rewards for GRPO and for `eval` on prompt rows: the built-ins (`exact`, `choice`,
`numeric`, `format`, `iou`), the user's own functions (`FILE.py:FUNCTION`), both called with TRL's
reward signature `fn(prompts, completions, completion_ids, **columns) -> list[float | None]`, and
`score`, which calls them and refuses, as one line naming the function and the row, a reward that
raises or returns something that is not one finite number (or None) per completion."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmsurgeon.errors import BadInput

from .verifiers import BUILTINS

if TYPE_CHECKING:
    import torch

# what TRL passes every reward besides the data's columns: never a column a row must have
RESERVED = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


class RewardFailed(BadInput):
    """A reward function raised, or returned something other than one finite number (or None) per
    completion: exit 2, naming the function and the first row it failed on."""


@dataclass(frozen=True)
class Reward:
    name: str  # the metric is rewards/{name}/mean
    func: Callable[..., list[float | None]]
    weight: float = 1.0
    columns: tuple[str, ...] = ()  # row columns the function needs
    origin: str = "built-in"  # or the file it was loaded from, for messages


# ---------------------------------------------------------------- --reward specs

_FILE_SPEC = re.compile(r"^(?P<path>.+\.py):(?P<name>[A-Za-z_]\w*)$")
_LOADED: dict[Path, Any] = {}


def parse_rewards(specs: list[str]) -> list[Reward]:
    """Each spec is BUILTIN[=WEIGHT] or FILE.py:FUNCTION[=WEIGHT]; every one is checked (the file
    loads, the name is a function) before anything runs. Names must be unique: each is a metric."""
    rewards: list[Reward] = []
    for spec in specs:
        reward = _parse(spec)
        if any(r.name == reward.name for r in rewards):
            raise BadInput(
                f"--reward {spec}: a second reward named '{reward.name}' (each name is its own metric)",
                "give each reward once; rename one of the functions if two files share a name",
            )
        rewards.append(reward)
    return rewards


def _parse(spec: str) -> Reward:
    target, weight = spec.strip(), 1.0
    if "=" in target:
        target, _, text = target.rpartition("=")
        try:
            weight = float(text)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise BadInput(f"--reward {spec}: weight '{text}' is not a finite number", f"e.g. --reward {target}=0.5")
    if target in BUILTINS:
        func, columns = BUILTINS[target]
        return Reward(target, func, weight, columns)
    found = _FILE_SPEC.match(target)
    if found is None:
        if target.endswith(".py"):
            raise BadInput(f"--reward {spec}: name the function in the file", f"--reward {target}:FUNCTION")
        raise BadInput(
            f"--reward {spec}: no built-in reward '{target}'",
            f"one of {', '.join(BUILTINS)}, or a function of yours as FILE.py:FUNCTION",
        )
    path, name = Path(found["path"]), found["name"]
    func = getattr(_load(path, spec), name, None)
    if func is None:
        raise BadInput(f"--reward {spec}: {path} has no '{name}'", f"define def {name}(prompts, completions, **kwargs)")
    if not callable(func):
        raise BadInput(f"--reward {spec}: '{name}' in {path} is a {type(func).__name__}, not a function")
    return Reward(name, func, weight, needed_columns(func), path.name)


def _load(path: Path, spec: str) -> Any:
    """The user's file as a module (their own code, as `python FILE.py` would run it), once per file."""
    if not path.is_file():
        raise BadInput(f"--reward {spec}: no such file {path}", "give the path of a .py file that defines the function")
    key = path.resolve()
    if key in _LOADED:
        return _LOADED[key]
    module_name = f"_vlmsurgeon_rewards_{hashlib.sha1(str(key).encode()).hexdigest()[:12]}"
    loader = importlib.util.spec_from_file_location(module_name, key)
    if loader is None or loader.loader is None:
        raise BadInput(f"--reward {spec}: cannot load {path} as Python")
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up there
    try:
        loader.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise BadInput(f"--reward {spec}: loading {path} raised {exc!r}", "fix the file and try again") from exc
    _LOADED[key] = module
    return module


def needed_columns(func: Callable[..., Any]) -> tuple[str, ...]:
    """The row columns a function needs: its named parameters without a default, other than what
    TRL passes every reward (prompts, completions, completion_ids, trainer_state, log_extra, …)."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return ()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in parameters if p.kind in named and p.default is p.empty and p.name not in RESERVED)


def missing_columns(rewards: list[Reward], columns: Collection[str]) -> list[tuple[str, str]]:
    """(column, reward name) for each column a reward needs that `columns` (a row's) lacks."""
    return [(c, r.name) for r in rewards for c in r.columns if c not in columns]


# ---------------------------------------------------------------- scoring


def _span(rows: list[str]) -> str:
    first, last = rows[0], rows[-1]
    return first if first == last else f"rows {first}–{last}"


def _accepted(func: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """All of `kwargs` for a function taking **kwargs (TRL's convention), else what it names."""
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in parameters}


def _invoke(func: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Call as TRL does; an `async def` reward (TRL takes those too) is run to its result."""
    output = func(**_accepted(func, kwargs))
    if inspect.iscoroutine(output):
        import asyncio

        output = asyncio.run(output)
    return output


def _call(reward: Reward, kwargs: dict[str, Any], rows: list[str]) -> Any:
    """The function's output; when it raises, the first row that raises on its own is named."""
    try:
        return _invoke(reward.func, kwargs)
    except Exception as exc:
        where, error = _span(rows), exc
        for k, row in enumerate(rows):
            one = {key: value[k : k + 1] if isinstance(value, list) else value for key, value in kwargs.items()}
            try:
                _invoke(reward.func, one)
            except Exception as alone:
                where, error = row, alone
                break
        raise RewardFailed(
            f"reward '{reward.name}' ({reward.origin}) raised {error!r} on {where}", "fix the function and try again"
        ) from exc


def _values(reward: Reward, output: Any, rows: list[str]) -> list[float]:
    """Floats, NaN for None; RewardFailed for anything but one finite number (or None) per completion."""
    who = f"reward '{reward.name}' ({reward.origin})"
    fix = "return a list with one float (or None where it does not apply) per completion"
    if not isinstance(output, (list, tuple)):
        raise RewardFailed(f"{who} returned a {type(output).__name__}, not a list, on {_span(rows)}", fix)
    if len(output) != len(rows):
        raise RewardFailed(f"{who} returned {len(output)} values for {len(rows)} completions ({_span(rows)})", fix)
    values = []
    for value, row in zip(output, rows, strict=True):
        if value is None:
            values.append(math.nan)
            continue
        try:
            if isinstance(value, (str, bytes)):
                raise TypeError
            number = float(value)  # int, float, bool (0/1), numpy and 0-d torch scalars
        except (TypeError, ValueError):
            raise RewardFailed(
                f"{who} returned {value!r} ({type(value).__name__}) on {row}: not a number", fix
            ) from None
        if not math.isfinite(number):
            raise RewardFailed(
                f"{who} returned {number} on {row}: a reward must be finite", "return None to skip a row"
            )
        values.append(number)
    # a user's function that applies to none of a call's completions is broken; a built-in's None is
    # its documented "does not apply" (numeric on a non-number solution), checked over all rewards in score()
    if values and all(math.isnan(v) for v in values) and reward.origin != "built-in":
        raise RewardFailed(
            f"{who} returned None for all {len(values)} completions ({_span(rows)}): it applies to none of them",
            f"check the rows' {', '.join(reward.columns) or 'columns'}; None is for a row a reward does not apply to",
        )
    return values


def score(
    rewards: list[Reward],
    prompts: list[Any],
    completions: list[Any],
    columns: dict[str, list[Any]],
    rows: list[str],
    completion_ids: list[list[int]] | None = None,
) -> torch.Tensor:
    """Each reward on every completion, called as TRL calls it: (N completions, F rewards) float32,
    NaN where a function returned None. `rows` names each completion's data row for messages."""
    import torch

    n = len(completions)
    lengths = {"prompts": len(prompts), "rows": len(rows), **{c: len(v) for c, v in columns.items()}}
    if completion_ids is not None:
        lengths["completion_ids"] = len(completion_ids)
    wrong = {k: v for k, v in lengths.items() if v != n}
    if wrong:
        raise ValueError(f"score: {n} completions but {wrong}")
    table = torch.full((n, len(rewards)), math.nan, dtype=torch.float32)
    if n == 0:
        return table
    kwargs = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids, **columns}
    for j, reward in enumerate(rewards):
        values = _values(reward, _call(reward, kwargs, rows), rows)
        table[:, j] = torch.tensor(values, dtype=torch.float32)
    if bool(torch.isnan(table).all()):  # no reward applies to any completion: nothing to learn from
        names = ", ".join(f"'{r.name}'" for r in rewards)
        raise RewardFailed(
            f"no reward applies to any completion of {_span(rows)}: {names} returned None for every one",
            "check the rows' columns against what each reward reads (docs/grpo.md)",
        )
    return table


__all__ = [
    "BUILTINS",
    "RESERVED",
    "Reward",
    "RewardFailed",
    "missing_columns",
    "needed_columns",
    "parse_rewards",
    "score",
]
