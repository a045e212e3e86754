"""What a run leaves and what is made of it: the run record (provenance, what a run trained),
merge and export, sharded writing, exact verification and diff. A new export goes here.

May import: `plan/`, `data/`, `recipe/`, `model/` and the leaves; not `use/`, `train/` or `cli/`."""
