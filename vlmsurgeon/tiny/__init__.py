"""Tiny random-weight VLMs built from the installed transformers' own config classes, with an
offline tokenizer and the family's processor: `build.py` writes one, `families.py` is the table
(its shared dims in `base.py`, one module per kind of family).

May import: the leaves only. Beside `model/`, not below or above it."""
