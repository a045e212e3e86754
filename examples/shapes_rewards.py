"""A reward for the shapes demo's GRPO step (`make demo-grpo`), in TRL's reward signature: the
answer names the shape's colour, and no other colour. `--reward examples/shapes_rewards.py:colour`.

The built-in `exact` asks for the colour word alone; a model that learned captions ("A red
circle.") starts at 0 there, so every answer of a group scores the same and GRPO has no signal.
This one gives credit for the colour wherever it stands, so the groups differ from the start."""

import re

COLOURS = ("red", "green", "blue")


def colour(prompts, completions, solution, **kwargs):
    scores = []
    for completion, truth in zip(completions, solution, strict=True):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        named = set(re.findall(r"[a-z]+", text.lower())) & set(COLOURS)
        scores.append(1.0 if named == {truth.lower()} else 0.0)
    return scores
