"""Options shared by several commands, defined once: their flags, help and where defaults live."""

from __future__ import annotations

import typer


def _default(value: object) -> str:
    """A default that lives in RunOptions (the flag itself is None so that --config can set it),
    written as typer writes its own; the bracket is escaped, rich would read it as markup."""
    return f" \\[default: {value}]"


REVISION_HELP = "Hub revision: a branch, tag or commit."

# How rows' media are found and sized: the same options for `finetune` and `data check`.
MEDIA = {
    "image_root": typer.Option(None, "--image-root", help="Folder that relative media paths start from."),
    "max_pixels": typer.Option(None, "--max-pixels", help="Pixel budget per image (Qwen-style processors)."),
    "min_pixels": typer.Option(None, "--min-pixels", help="Smallest pixel count per image (Qwen-style)."),
    "image_size": typer.Option(None, "--image-size", help="Resize images to this side (fixed-size processors)."),
    "video_frames": typer.Option(None, "--video-frames", help="Most frames sampled from a video."),
    "video_fps": typer.Option(None, "--video-fps", help="Frames per second sampled from a video."),
}

# what the loss is, and the knobs of the preference objectives (defaults: TRL's, per objective)
OBJECTIVE = {
    "objective": typer.Option(
        None,
        "--objective",
        help="sft; preference training on pairs: dpo, ipo, orpo, simpo (kto: labelled rows); grpo: RL on prompts "
        "with --reward." + _default("sft"),
    ),
    "beta": typer.Option(
        None, "--beta", help="β of the preference loss, or grpo's KL weight (TRL's value for the objective unless set)."
    ),
    "simpo_gamma": typer.Option(None, "--simpo-gamma", help="SimPO's target reward margin γ."),
    "desirable_weight": typer.Option(None, "--desirable-weight", help="KTO: weight of desirable rows."),
    "undesirable_weight": typer.Option(None, "--undesirable-weight", help="KTO: weight of undesirable rows."),
    "from_run": typer.Option(
        None, "--from", help="A finished run (e.g. SFT) whose adapter trains on and is the reference."
    ),
    "precompute_ref": typer.Option(
        False, "--precompute-ref", help="dpo/ipo: the reference's log-probs once before training, not each step."
    ),
}

# grpo's knobs (TRL GRPOConfig's names and defaults; train/objectives.py GrpoKnobs)
GRPO = {
    "num_generations": typer.Option(
        None, "--num-generations", help="grpo: answers sampled per prompt (G)." + _default("8")
    ),
    "max_completion_length": typer.Option(
        None, "--max-completion-length", help="grpo: the longest answer sampled, in tokens." + _default("512")
    ),
    "temperature": typer.Option(None, "--temperature", help="grpo: sampling temperature." + _default("1.0")),
    "epsilon": typer.Option(None, "--epsilon", help="grpo: the clip range of the importance ratio." + _default("0.2")),
    "loss_type": typer.Option(None, "--loss-type", help="grpo: grpo, dr_grpo or dapo (TRL's)." + _default("dapo")),
    "importance_sampling": typer.Option(
        None, "--importance-sampling", help="grpo: token, or sequence (GSPO)." + _default("token")
    ),
    "reward": typer.Option(
        None,
        "--reward",
        help="grpo: a reward, repeatable: exact, choice, numeric, format, iou, or FILE.py:FUNCTION; =WEIGHT after it.",
    ),
    "completions_every": typer.Option(
        None,
        "--completions-every",
        help="grpo: write step 1's and every N-th step's answers to RUN/completions.jsonl." + _default("10"),
    ),
}

# --packing: the same flag for `finetune`, `plan` and `data check`
PACKING_HELP = (
    "Pack rows into sequences of --seq-len tokens, kept apart (positions restart per row); "
    "sft only, families in `vlmsurgeon tiny --list`."
)
