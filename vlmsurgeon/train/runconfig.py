"""RUN.yaml: any of a command's options in a file (`--config`, else ./vlmsurgeon.yaml when
present). Flags given on the command line override the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlmsurgeon.errors import BadInput
from vlmsurgeon.recipe.preset import read_yaml

DEFAULT_FILE = "vlmsurgeon.yaml"
# which objectives read each knob (train/objectives.py holds their defaults)
KNOBS = {
    "beta": ("dpo", "ipo", "orpo", "simpo", "kto", "grpo"),
    "simpo_gamma": ("simpo",),
    "desirable_weight": ("kto",),
    "undesirable_weight": ("kto",),
    "num_generations": ("grpo",),
    "max_completion_length": ("grpo",),
    "temperature": ("grpo",),
    "epsilon": ("grpo",),
    "loss_type": ("grpo",),
    "importance_sampling": ("grpo",),
    "reward": ("grpo",),
    "completions_every": ("grpo",),
}
OBJECTIVE_NAMES = Literal["sft", "dpo", "ipo", "orpo", "simpo", "kto", "grpo"]


class RunOptions(BaseModel):
    """Options of `plan` and `finetune`; one RUN.yaml serves both."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    preset: str | None = None
    freeze: str | None = None
    seq_len: int = Field(default=2048, gt=0)
    batch_size: int = Field(default=1, gt=0)
    image_tokens: int = Field(default=256, ge=0)
    gradient_checkpointing: bool = True
    probe: bool = False  # plan only
    # finetune only
    data: str | None = None
    eval_data: str | None = None
    output: str | None = None
    steps: int | None = Field(default=None, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    lr: float = Field(default=2e-4, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    seed: int = 0
    save_every: int | None = Field(default=None, gt=0)
    quantize: Literal["4bit", "none"] = "4bit"
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    skip_bad_rows: bool = False
    image_root: str | None = None
    max_pixels: int | None = Field(default=None, gt=0)
    min_pixels: int | None = Field(default=None, gt=0)
    image_size: int | None = Field(default=None, gt=0)
    video_frames: int | None = Field(default=None, gt=0)
    video_fps: float | None = Field(default=None, gt=0)
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    eval_generate: int | None = Field(default=None, gt=0)
    strict_grads: bool = False
    chunked_loss: bool = True  # cross-entropy a few rows at a time, never the full logits
    offload_activations: bool = False  # checkpointed layer inputs in pinned CPU memory (GPU only)
    packing: bool = False  # rows packed into sequences of --seq-len tokens, kept apart (data/packing.py)
    # what the loss is (sft: the model's own); the knobs default to TRL's for the objective
    objective: OBJECTIVE_NAMES = "sft"
    beta: float | None = Field(default=None, ge=0)  # > 0 for the preference objectives; grpo: 0 = no KL term
    simpo_gamma: float | None = Field(default=None, ge=0)
    desirable_weight: float | None = Field(default=None, gt=0)
    undesirable_weight: float | None = Field(default=None, gt=0)
    # grpo (TRL GRPOConfig's names and defaults, train/grpo.py): G answers sampled per prompt, scored by the rewards
    num_generations: int | None = Field(default=None, ge=2)  # the group baseline needs two
    max_completion_length: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, gt=0)
    epsilon: float | None = Field(default=None, gt=0)
    loss_type: Literal["grpo", "dr_grpo", "dapo"] | None = None
    importance_sampling: Literal["token", "sequence"] | None = None  # sequence: GSPO
    reward: list[str] | None = None  # BUILTIN[=weight] or file.py:function[=weight]
    completions_every: int | None = Field(default=None, gt=0)  # RUN/completions.jsonl every N steps

    from_run: str | None = None  # a finished run whose adapter continues to train (and is the reference)
    precompute_ref: bool = False  # the reference's log-probs once, before training, not every step

    @model_validator(mode="after")
    def _knobs_of_the_objective(self) -> RunOptions:
        """A knob the objective does not read is refused, not ignored."""
        for knob, objectives in KNOBS.items():
            if getattr(self, knob) is not None and self.objective not in objectives:
                raise ValueError(f"{knob} applies to objective {' or '.join(objectives)}, not {self.objective}")
        if self.beta == 0 and self.objective != "grpo":
            raise ValueError(f"beta must be > 0 for {self.objective} (0 is grpo's: no KL term)")
        if self.eval_generate is not None and self.objective == "grpo":
            raise ValueError(
                "eval_generate scores answers against each row's answer, and grpo's prompt rows have none "
                "(its eval loss samples and scores answers; `vlmsurgeon eval RUN --reward …` after training)"
            )
        if self.from_run is not None and self.objective == "sft":
            raise ValueError("from_run applies to the preference objectives (dpo, ipo, orpo, simpo, kto), not sft")
        if self.packing and self.objective != "sft":
            raise ValueError(f"packing applies to objective sft only for now, not {self.objective}")
        if self.precompute_ref and self.objective not in ("dpo", "ipo"):
            raise ValueError(f"precompute_ref applies to dpo and ipo (a reference per pair), not {self.objective}")
        return self

    def require(self, key: str, flag: str) -> str:
        value = getattr(self, key)
        if not value:
            raise BadInput(f"no {key} given", f"pass {flag}, or set `{key}:` in --config RUN.yaml or ./{DEFAULT_FILE}")
        return str(value)

    def require_model(self) -> str:
        return self.require("model", "MODEL")


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
