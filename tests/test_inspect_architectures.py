"""Every architecture in transformers' image-text-to-text mapping, built on meta from its
default config: components add up, `other` is 0, vision and lm are found."""

from __future__ import annotations

import pytest

from tests.conftest import save_config
from vlmsurgeon.errors import BadInput
from vlmsurgeon.model.inspection import inspect_model

# Families whose default config does not build (a bug or a missing piece upstream), by reason.
UNBUILDABLE = {
    "aya_vision": "ValueError: default vision embed_dim 1152 not divisible by 14 heads",
    "chameleon": "AttributeError: a default sub-config is None",
    "cohere_compass": "KeyError: 'full_attention' (no rope parameters for that layer type)",
    "deepseek_ocr2": "TypeError: a default sub-config is None",
    "diffusion_gemma": "TypeError: a default size is None",
    "emu3": "AttributeError: a default sub-config is None",
    "granite4_vision": "TypeError: a default list is None",
    "hunyuan_vl": "TypeError: a default rope value is None",
    "perception_lm": "TypeError: a default sub-config is None",
    "qwen4_exp": "TypeError: default head sizes are None",
}
# Families that build, but whose default config has no vision encoder.
NO_VISION = {
    "gemma4": "default config is text-only (no vision_config)",
    "gemma4_unified": "default config is text-only",
    "mistral4": "default config is text-only",
    "evolla": "protein-language model: its encoder is counted as `protein`",
}


def _architectures() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def test_every_image_text_to_text_architecture(tmp_path, capsys):
    covered, unbuildable, no_vision = [], {}, []
    for model_type in _architectures():
        directory = tmp_path / model_type
        try:
            save_config(model_type, directory)
            result = inspect_model(str(directory))
        except BadInput as exc:
            assert model_type in UNBUILDABLE, f"{model_type} newly fails: {exc.line()}"
            unbuildable[model_type] = exc.what
            continue
        figures = result.components
        total = sum(f.params for f in figures.values()) + result.other
        assert total == result.total_params, model_type
        assert result.other == 0, (model_type, result.other_names[:5])
        assert figures["lm"].params > 0, model_type
        if model_type in NO_VISION:
            assert figures["vision"].params == 0, model_type
            no_vision.append(model_type)
            continue
        assert figures["vision"].params > 0, model_type
        covered.append(model_type)
    with capsys.disabled():
        print(
            f"\ninspect covers {len(covered)} of {len(_architectures())} image-text-to-text "
            f"architectures; {len(no_vision)} build without vision; "
            f"{len(unbuildable)} do not build from their default config:"
        )
        for model_type in sorted(unbuildable):
            print(f"  {model_type}: {unbuildable[model_type]}")
    assert len(covered) >= 80


@pytest.mark.parametrize("model_type", sorted(UNBUILDABLE))
def test_unbuildable_default_configs_fail_with_one_clear_line(tmp_path, model_type):
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        pytest.skip(f"{model_type} is not in this transformers version")
    try:
        save_config(model_type, tmp_path)
        inspect_model(str(tmp_path))
    except BadInput as exc:
        assert model_type in exc.line() and "\n" not in exc.line()
    else:  # fixed upstream: it belongs in the covered set now
        pytest.fail(f"{model_type} builds now; remove it from UNBUILDABLE")
