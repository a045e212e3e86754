"""How many of the families `inspect` covers the probe covers, each from transformers' default
config: a narrow replica with the full model's names, one forward + backward pass. Families it
cannot probe must fail with one clear `probe:` line, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # also run as a script: python tests/test_probe_coverage.py FAMILY…

from tests.test_inspect_architectures import NO_VISION, UNBUILDABLE, _architectures  # noqa: E402
from vlmsurgeon.model.support import upstream_breakage  # noqa: E402

# Dead trainable parameters the probe finds in default configs with everything trainable:
# LLaVA-1.5's feature layer -2 leaves the last CLIP layer and the post-layernorm without a gradient.
_CLIP_LAYER_23 = ["model.vision_tower.encoder.layers.23.*", "model.vision_tower.post_layernorm.*"]
EXPECTED_DEAD = {
    "llava": _CLIP_LAYER_23,
    "llava_next": _CLIP_LAYER_23,
    "llava_next_video": _CLIP_LAYER_23,
    "vipllava": _CLIP_LAYER_23,
    # the probe's batch holds an image, no video: Video-LLaVA's separate video tower gets nothing
    "video_llava": [
        "model.image_tower.encoder.layers.23.*",
        "model.image_tower.post_layernorm.*",
        "model.video_tower.*",
    ],
    # SigLIP, features from the last layer: only the post-layernorm is left out
    "llava_onevision": ["model.vision_tower.post_layernorm.*"],
    # families whose every trainable parameter learns
    "qwen2_5_vl": [],
    "qwen3_vl": [],
    "qwen3_vl_moe": [],
    "mllama": [],
    "internvl": [],
}
# Default configs that contradict themselves (a projector that pools 14 × 14 patches into 16 × 16
# tokens, three rotary sections that need half the head's dims): the values the released
# checkpoints hold (gemma-3-4b-it, GLM-4.1V-9B, Idefics3-8B, SmolVLM-Instruct) replace them.
_SIGLIP_896 = {"model_type": "siglip_vision_model", "image_size": 896, "patch_size": 14, "vision_use_head": False}
_GLM_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [8, 12, 12]}
REAL_VALUES = {
    "gemma3": {"vision_config": _SIGLIP_896},
    "shieldgemma2": {"vision_config": _SIGLIP_896},
    "glm4v": {"text_config": {"rope_parameters": _GLM_ROPE}},
    "glm46v": {"text_config": {"model_type": "glm4v_text", "rope_parameters": _GLM_ROPE}},
    "glmga": {"text_config": {"rope_parameters": _GLM_ROPE}},
    "idefics3": {"vision_config": {"image_size": 364, "patch_size": 14}},
    "smolvlm": {"vision_config": {"image_size": 512, "patch_size": 16}, "scale_factor": 4},
}
EXPECTED_DEAD.update({"gemma3": [], "glm4v": [], "idefics3": [], "smolvlm": [], "llama4": []})
MIN_COVERED = 41


def run_chunk(families: list[str]) -> dict[str, dict]:
    """Probe `families` in child processes, one after another in the same child while it lives;
    a child that dies (e.g. out of memory) marks its current family and a new one goes on."""
    results: dict[str, dict] = {}
    todo = list(families)
    while todo:
        proc = subprocess.run(
            [sys.executable, __file__, *todo],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=1200,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                record = json.loads(line[7:])
                results[record["model_type"]] = record
        todo = [m for m in todo if m not in results]
        if todo:  # the child died on todo[0]
            results[todo[0]] = {
                "model_type": todo[0],
                "status": f"crashed (exit {proc.returncode}): {proc.stderr.strip()[-200:]}",
                "dead": [],
                "seconds": 0.0,
            }
            todo = todo[1:]
    return results


@pytest.mark.sweep  # every family, like the training sweep: `make sweep` (CI runs both)
def test_probe_coverage_of_the_families_inspect_covers(capsys):
    families = [m for m in _architectures() if m not in UNBUILDABLE and m not in NO_VISION]
    chunks = [families[0::2], families[1::2]]
    with ThreadPoolExecutor(2) as pool:  # two children at a time: this machine's two cores
        results = {k: v for part in pool.map(run_chunk, chunks) for k, v in part.items()}
    covered = {m: r["dead"] for m, r in results.items() if r["status"] == "ok"}
    failed = {m: r["status"] for m, r in results.items() if r["status"] != "ok"}
    for model_type, dead in EXPECTED_DEAD.items():
        broken = upstream_breakage(model_type)  # the installed transformers breaks its forward
        if broken is not None:
            assert failed[model_type] == f"probe: cannot probe {model_type}: {broken[0]}"
            continue
        assert covered[model_type] == dead, model_type
    slowest = sorted(results.values(), key=lambda r: -r["seconds"])[:3]
    total = sum(r["seconds"] for r in results.values())
    with capsys.disabled():
        print(
            f"\nthe probe covers {len(covered)} of the {len(families)} families inspect covers "
            f"(default configs, preset full; {len(REAL_VALUES)} with the released checkpoints' "
            f"values where the default contradicts itself: {', '.join(sorted(REAL_VALUES))}); "
            f"{sum(bool(d) for d in covered.values())} have "
            f"dead trainable parameters: "
            + "; ".join(f"{m}: {', '.join(d[:2])}" for m, d in sorted(covered.items()) if d)
        )
        print(
            f"probe time {total:.0f} s in all; slowest: "
            + ", ".join(f"{r['model_type']} {r['seconds']:.1f} s" for r in slowest)
        )
        print("covered: " + ", ".join(sorted(covered)))
        print("not covered:")
        for model_type in sorted(failed):
            print(f"  {model_type}: {failed[model_type]}")
    for model_type, reason in failed.items():
        assert reason.startswith("probe:"), (model_type, reason)  # one clear line, no crash
    upstream = [m for m in families if upstream_breakage(m) is not None]  # llama4 on transformers 5.24
    assert len(covered) + len(upstream) >= MIN_COVERED


def _probe(model_type: str, directory: Path) -> tuple[str, list[str]]:
    from tests.conftest import save_config
    from vlmsurgeon.errors import BadInput
    from vlmsurgeon.model.inspection import meta_model
    from vlmsurgeon.plan.plan import resolve_preset
    from vlmsurgeon.plan.probe import probe_model
    from vlmsurgeon.recipe.freeze import classified_tree, present_components

    try:
        source, full = meta_model(str(save_config(model_type, directory, **REAL_VALUES.get(model_type, {}))))
        # `full`: every component trains (no peft injection to wait for), so every parameter is
        # checked; no gradient checkpointing: the same gradients, one forward pass fewer
        preset = resolve_preset("full", None, present_components(classified_tree(full, model_type)))
        return "ok", probe_model(source, full, preset, gradient_checkpointing=False).report.grouped()
    except BadInput as exc:
        return exc.what, []


if __name__ == "__main__":
    import gc
    import warnings

    warnings.filterwarnings("ignore")
    for name in sys.argv[1:]:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            status, dead = _probe(name, Path(tmp))
        gc.collect()
        print(
            "RESULT "
            + json.dumps({"model_type": name, "status": status, "dead": dead, "seconds": time.perf_counter() - start}),
            flush=True,
        )
