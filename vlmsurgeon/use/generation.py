"""`generate` and `chat`: load any SOURCE (hub id, model directory, run directory as trained,
bare peft adapter on its base, merged export) for inference; `answer.py` answers with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmsurgeon.errors import BadInput
from vlmsurgeon.use.answer import Loaded

KINDS = ("model", "run", "adapter", "export")
_WHAT = "a model directory, hub id, run directory (finetune -o), peft adapter or merged export"


def source_kind(source: str) -> str:
    """Which of KINDS `source` is, from the files it holds; BadInput naming what it is not."""
    from vlmsurgeon.model.sources import looks_like_hub_id, missing_path, read_json

    path = Path(source).expanduser()
    if not path.exists():
        if looks_like_hub_id(source):
            return "model"
        raise BadInput(f"'{source}': {missing_path(path)}", f"point at {_WHAT}")
    if not path.is_dir():
        raise BadInput(f"'{source}' is a file, not {_WHAT}", "point at the folder, not a file inside it")
    record = read_json(path / "vlmsurgeon.json") if (path / "vlmsurgeon.json").is_file() else {}
    if "vlmsurgeon_merge" in record and (path / "config.json").is_file():
        return "export"
    if "base" in record:
        return "run"
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        return "model"
    raise BadInput(
        f"'{source}' is not {_WHAT}: it has no config.json, vlmsurgeon.json or adapter_config.json",
        "point at a model directory, a `vlmsurgeon finetune -o` run or a merge output",
    )


def _device_dtype() -> tuple[str, Any]:
    import torch

    return ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)


def _processor(reference: str | Path, trust_remote_code: bool) -> Any:
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(reference), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BadInput(
            f"'{reference}': cannot load its processor ({first})",
            "point at a folder that holds the processor and tokenizer files",
        ) from exc
    video = getattr(processor, "video_processor", None)
    if video is not None and getattr(video, "cap_pixels_per_frame", False) is None:
        video.cap_pixels_per_frame = True  # as finetune sets it (train.load_processor)
    return processor


def _model(reference: str | Path, dtype: Any, device: str, trust_remote_code: bool) -> Any:
    from transformers import AutoModelForImageTextToText

    try:
        model = AutoModelForImageTextToText.from_pretrained(
            str(reference), dtype=dtype, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BadInput(
            f"model '{reference}': cannot load weights ({first})",
            "point at a local directory with the model's safetensors, or a cached hub id",
        ) from exc
    return model.to(device)


def _trained(trained: Any, dtype: Any, device: str) -> tuple[Any, Any, bool]:
    """A run or adapter loaded the way it trained: the QLoRA base in 4-bit NF4, then the
    adapter and trained components (verify's loader), and the run's own processor."""
    from vlmsurgeon.recipe.freeze import as_trained_quantization
    from vlmsurgeon.ship.provenance import PROCESSOR_DIR
    from vlmsurgeon.ship.verify import with_adapter

    quant = as_trained_quantization(trained, dtype)
    kwargs: dict[str, Any] = {"quantization_config": quant} if quant is not None else {}
    if quant is not None and device == "cuda":
        kwargs["device_map"] = {"": 0}
    model = with_adapter(trained.base, trained, dtype, **kwargs)
    if quant is None:
        model = model.to(device)
    run_processor = trained.run_dir / PROCESSOR_DIR if trained.run_dir else None
    processor_dir = run_processor if run_processor and run_processor.is_dir() else trained.base
    return model, processor_dir, quant is not None


def _buildable(reference: str, trust_remote_code: bool) -> None:
    """Refuse, from its config alone, a model transformers cannot build here: a missing hub
    model (cache first, the hub only when online), a model type this transformers does not know."""
    from vlmsurgeon.model.inspection import unbuildable
    from vlmsurgeon.model.sources import is_native, load_source, resolve

    config = load_source(resolve(reference))
    model_type = config.model_type
    if not model_type:
        raise BadInput(
            f"model '{reference}': its config.json has no model_type",
            "point at a model directory saved with save_pretrained",
        )
    if is_native(model_type) or (trust_remote_code and config.config.get("auto_map")):
        return
    raise unbuildable(reference, model_type, bool(config.config.get("auto_map")))


def _fitted(source: Path, base: str | None, trust_remote_code: bool) -> Any:
    """The run's or adapter's changes, checked against the base they will be loaded onto as merge
    checks them: peft would skip a module the base lacks and answer as the bare base."""
    from vlmsurgeon.model.inspection import meta_model
    from vlmsurgeon.ship.merge import check_fit
    from vlmsurgeon.ship.trained import load_trained, run_base

    trained = load_trained(source, base or run_base(source))
    _buildable(str(trained.base), trust_remote_code)
    _, meta = meta_model(str(trained.base), trust_remote_code=trust_remote_code)
    check_fit(trained, dict(meta.state_dict()))
    return trained


def _preflight(source: str, base: str | None, trust_remote_code: bool) -> tuple[str, Any]:
    kind = source_kind(source)
    if base is not None and kind in ("model", "export"):
        raise BadInput(
            f"--base {base}: '{source}' is a {'merged export' if kind == 'export' else 'model'}, which needs no base",
            "drop --base, or point SOURCE at a run or adapter",
        )
    if kind in ("run", "adapter"):
        return kind, _fitted(Path(source), base, trust_remote_code)
    _buildable(source, trust_remote_code)
    return kind, None


def check_source(source: str, *, base: str | None = None, trust_remote_code: bool = False) -> str:
    """SOURCE's kind, after every check that needs no weights (its base, its model type, a run's
    or adapter's tensors against the base), so that `eval` refuses a bad one before generating."""
    return _preflight(source, base, trust_remote_code)[0]


def load_for_inference(source: str, *, base: str | None = None, trust_remote_code: bool = False) -> Loaded:
    """SOURCE as a model ready to generate: fp32 on CPU, bf16 on GPU; runs and adapters as trained."""
    kind, trained = _preflight(source, base, trust_remote_code)
    device, dtype = _device_dtype()
    quantized = False
    if trained is not None:
        model, processor_dir, quantized = _trained(trained, dtype, device)
    else:
        model, processor_dir = _model(source, dtype, device, trust_remote_code), source
    return Loaded(
        model.eval(),
        _processor(processor_dir, trust_remote_code),
        kind,
        source,
        quantized,
        recorded_sampling(trained.record if trained is not None else _export_run(source)),
    )


def _export_run(source: str) -> dict[str, Any]:
    """The run record a merged export carries (its vlmsurgeon.json), else nothing."""
    from vlmsurgeon.model.sources import read_json

    path = Path(source) / "vlmsurgeon.json"
    try:
        record = read_json(path).get("run") if path.is_file() else None
    except BadInput:
        return {}
    return record if isinstance(record, dict) else {}


def recorded_sampling(record: dict[str, Any]) -> dict[str, Any]:
    """How the run sampled videos (its --video-frames / --video-fps / --max-pixels): a run or its
    export answers on frames taken the way it trained, not at the defaults."""
    from vlmsurgeon.data.collate import SAMPLING_OPTIONS

    training = record.get("training") if isinstance(record, dict) else None
    if not isinstance(training, dict):
        return {}
    return {k: training[k] for k in SAMPLING_OPTIONS if training.get(k) is not None}
