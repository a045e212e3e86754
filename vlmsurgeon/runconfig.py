"""RUN.yaml: any of a command's options in a file (`--config`, else ./vlmsurgeon.yaml when
present). Flags given on the command line override the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BadInput
from .preset import read_yaml

DEFAULT_FILE = "vlmsurgeon.yaml"


class RunOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Optional[str] = None
    preset: Optional[str] = None
    freeze: Optional[str] = None
    seq_len: int = Field(default=2048, gt=0)
    batch_size: int = Field(default=1, gt=0)
    image_tokens: int = Field(default=256, ge=0)
    gradient_checkpointing: bool = True

    def require_model(self) -> str:
        if not self.model:
            raise BadInput("no model given",
                           f"pass MODEL, or set `model:` in --config RUN.yaml or ./{DEFAULT_FILE}")
        return self.model


def merge_options(config: Path | None, **flags: Any) -> RunOptions:
    """File values (if any) overlaid with the flags that were given (not None)."""
    path = config
    if path is None and Path(DEFAULT_FILE).is_file():
        path = Path(DEFAULT_FILE)
    data: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise BadInput(f"--config {path}: no such file", "check the path")
        loaded = read_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise BadInput(f"{path}: expected a mapping of option: value", "see examples/vlmsurgeon.yaml")
        data.update(loaded)
    data.update({k: v for k, v in flags.items() if v is not None})
    try:
        return RunOptions.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BadInput(f"{path or 'options'}: {problems}", "fix the option names/values") from exc
