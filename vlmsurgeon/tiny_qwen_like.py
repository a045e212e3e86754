"""Tiny-model table, continued (see tiny_families.py for the shared dims and the Family fields)."""

from __future__ import annotations

from typing import Any, Callable

from .tiny_families import CHATML, IMAGE_SIZE, TEXT, VISION, Family, _text  # noqa: F401

FAMILIES: dict[str, Family] = {
}
