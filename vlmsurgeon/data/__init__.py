"""Training rows: the readers and formats users already have (conversations, and preference
pairs / KTO rows for the preference objectives, prompts for grpo), media (images, video), collation into model
inputs with labels, and the pre-pass that checks every row before any weight loads.
A new reader goes here.

May import: `recipe/`, `model/` and the leaves; not `plan/` (a sibling)."""
