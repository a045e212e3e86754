"""The whole chain on every family `tiny` lists (marked `sweep`: `make sweep`, run by CI):
tiny build → finetune 2 steps on the default path (--freeze vision, 4-bit LM) → merge →
verify → reload in plain transformers → one image + text forward."""

from __future__ import annotations

import pytest

from tests.family_sweep import sweep
from vlmsurgeon.tiny.families import FAMILIES

# Families `tiny` builds whose chain is known not to complete, by reason (none today).
KNOWN_FAILURES: dict[str, str] = {}


@pytest.mark.sweep
def test_every_tiny_family_trains_merges_and_reloads(capsys):
    families = sorted(FAMILIES)
    with capsys.disabled():
        passed, failed = sweep(families)
        print(f"\n{len(passed)}/{len(families)} families train, merge and reload")
        for family, reason in sorted(failed.items()):
            print(f"  {family}: {reason}")
    assert set(failed) <= set(KNOWN_FAILURES), {f: failed[f] for f in set(failed) - set(KNOWN_FAILURES)}
    fixed = set(KNOWN_FAILURES) & set(passed)
    assert not fixed, f"now passing, remove from KNOWN_FAILURES: {sorted(fixed)}"
