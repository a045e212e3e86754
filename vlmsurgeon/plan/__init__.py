"""Before a run: what would train and what it costs. The plan, the memory estimate (of an SFT or
a preference step: objective.py), parameter budgets for CI, the gradient probe and its replica,
and amounts as people write them.

May import: `recipe/`, `model/` and the leaves; not `data/` (a sibling)."""
