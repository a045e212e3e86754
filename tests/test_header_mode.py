"""Header mode: a remote-code checkpoint (Phi-3.5-vision layout, seed 000) inspected from its
safetensors headers alone, without --trust-remote-code and without reading tensor data."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from vlmsurgeon.errors import BadInput
from vlmsurgeon.model.inspection import inspect_model

CLIP = "model.vision_embed_tokens.img_processor.vision_model"


def phi3v_shapes(V=64, H=16, C=8, FF=32, TI=24, P=2, NPOS=17, VL=2, TL=2) -> dict[str, dict[str, tuple]]:
    """Tensor names from seed 000's module tree, by component, with small shapes."""
    vision = {
        "model.vision_embed_tokens.glb_GN": (1, 1, 4 * C),
        "model.vision_embed_tokens.sub_GN": (1, 1, 1, 4 * C),
        f"{CLIP}.embeddings.class_embedding": (C,),
        f"{CLIP}.embeddings.patch_embedding.weight": (C, 3, P, P),
        f"{CLIP}.embeddings.position_embedding.weight": (NPOS, C),
        f"{CLIP}.pre_layrnorm.weight": (C,),
        f"{CLIP}.pre_layrnorm.bias": (C,),
        f"{CLIP}.post_layernorm.weight": (C,),
        f"{CLIP}.post_layernorm.bias": (C,),
    }
    for i in range(VL):
        p = f"{CLIP}.encoder.layers.{i}"
        for norm in ("layer_norm1", "layer_norm2"):
            vision[f"{p}.{norm}.weight"] = (C,)
            vision[f"{p}.{norm}.bias"] = (C,)
        vision[f"{p}.mlp.fc1.weight"], vision[f"{p}.mlp.fc1.bias"] = (FF, C), (FF,)
        vision[f"{p}.mlp.fc2.weight"], vision[f"{p}.mlp.fc2.bias"] = (C, FF), (C,)
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            vision[f"{p}.self_attn.{proj}.weight"] = (C, C)
            vision[f"{p}.self_attn.{proj}.bias"] = (C,)
    merger = {
        "model.vision_embed_tokens.img_projection.0.weight": (H, 4 * C),
        "model.vision_embed_tokens.img_projection.0.bias": (H,),
        "model.vision_embed_tokens.img_projection.2.weight": (H, H),
        "model.vision_embed_tokens.img_projection.2.bias": (H,),
    }
    lm = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    for i in range(TL):
        p = f"model.layers.{i}"
        lm.update(
            {
                f"{p}.self_attn.o_proj.weight": (H, H),
                f"{p}.self_attn.qkv_proj.weight": (3 * H, H),
                f"{p}.mlp.gate_up_proj.weight": (2 * TI, H),
                f"{p}.mlp.down_proj.weight": (H, TI),
                f"{p}.input_layernorm.weight": (H,),
                f"{p}.post_attention_layernorm.weight": (H,),
            }
        )
    head = {"lm_head.weight": (V, H)}
    return {"vision": vision, "merger": merger, "lm": lm, "head": head}


PHI3V_CONFIG = {
    "architectures": ["Phi3VForCausalLM"],
    "model_type": "phi3_v",
    "auto_map": {
        "AutoConfig": "configuration_phi3_v.Phi3VConfig",
        "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
    },
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "vocab_size": 64,
    "tie_word_embeddings": False,
}


def write_header_only(path: Path, shapes: dict[str, tuple], dtype: str = "BF16", itemsize: int = 2) -> None:
    """A valid safetensors file whose data region is a hole: header written, size set by truncate."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape) * itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.truncate(8 + len(raw) + offset)


def make_phi3v(directory: Path, **dims) -> dict[str, int]:
    import torch
    from safetensors.torch import save_file

    by_component = phi3v_shapes(**dims)
    flat = {n: s for part in by_component.values() for n, s in part.items()}
    names = sorted(flat)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    directory.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for shard, shard_names in shards.items():
        save_file({n: torch.zeros(flat[n], dtype=torch.bfloat16) for n in shard_names}, directory / shard)
        weight_map.update({n: shard for n in shard_names})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(PHI3V_CONFIG))
    return {c: sum(math.prod(s) for s in part.values()) for c, part in by_component.items()}


def test_phi3v_layout_without_trust_remote_code(tmp_path):
    expected = make_phi3v(tmp_path / "phi3v")
    r = inspect_model(str(tmp_path / "phi3v"))
    assert r.source == "safetensors-headers" and r.model_type == "phi3_v"
    for component, count in expected.items():
        assert r.components[component].params == count, component
    assert r.other == 0
    assert r.total_params == sum(expected.values())
    assert r.components["vision"].roots == ["model.vision_embed_tokens"]
    assert r.components["merger"].roots == ["model.vision_embed_tokens.img_projection"]
    assert r.components["lm"].roots == ["model.embed_tokens", "model.layers", "model.norm"]
    assert r.components["lm"].embeddings == 64 * 16
    assert r.components["head"].roots == ["lm_head"]


def test_no_tensor_data_is_read_sparse_file(tmp_path):
    """Real Phi-3.5-vision sizes (4.1B params, 8.3 GB of bf16) in a file that is one big hole."""
    dims = dict(V=32064, H=3072, C=1024, FF=4096, TI=8192, P=14, NPOS=577, VL=24, TL=32)
    by_component = phi3v_shapes(**dims)
    directory = tmp_path / "sparse"
    directory.mkdir()
    flat = {n: s for part in by_component.values() for n, s in part.items()}
    write_header_only(directory / "model.safetensors", flat)
    (directory / "config.json").write_text(json.dumps(PHI3V_CONFIG))
    stat = (directory / "model.safetensors").stat()
    assert stat.st_size > 8e9 and stat.st_blocks * 512 < 10e6  # a hole, not data

    r = inspect_model(str(directory))
    for component, part in by_component.items():
        assert r.components[component].params == sum(math.prod(s) for s in part.values())
    assert 4.0e9 < r.total_params < 4.3e9 and r.other == 0
    assert (directory / "model.safetensors").stat().st_blocks == stat.st_blocks


def test_prequantized_bnb_checkpoint_counts_represented_params(tmp_path):
    directory = tmp_path / "q"
    directory.mkdir()
    shapes = {"model.embed_tokens.weight": (64, 16), "lm_head.weight": (64, 16)}
    tensors = {n: ("BF16", s) for n, s in shapes.items()}
    w = "model.layers.0.self_attn.qkv_proj.weight"
    tensors[w] = ("U8", (48 * 16 // 2, 1))  # two 4-bit values per byte
    for aux, shape in (
        ("absmax", (12,)),
        ("quant_map", (16,)),
        ("nested_absmax", (1,)),
        ("nested_quant_map", (256,)),
        ("quant_state.bitsandbytes__nf4", (120,)),
    ):
        tensors[f"{w}.{aux}"] = ("U8" if "quant_state" in aux else "F32", shape)
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * (1 if dtype == "U8" else 4)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    with (directory / "model.safetensors").open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)
    (directory / "config.json").write_text(
        json.dumps({**PHI3V_CONFIG, "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}})
    )
    r = inspect_model(str(directory))
    assert r.prequantized and any("pre-quantized" in n for n in r.notes)
    assert r.components["lm"].params == 64 * 16 + 48 * 16
    assert r.total_params == 64 * 16 * 2 + 48 * 16 and r.other == 0


def test_tied_head_in_header_mode(tmp_path):
    directory = tmp_path / "tied"
    directory.mkdir()
    write_header_only(
        directory / "model.safetensors",
        {"model.embed_tokens.weight": (64, 16), "model.layers.0.mlp.down_proj.weight": (16, 8)},
    )
    (directory / "config.json").write_text(json.dumps({**PHI3V_CONFIG, "tie_word_embeddings": True}))
    r = inspect_model(str(directory))
    assert r.components["head"].params == 0
    assert r.components["head"].tied_to == "model.embed_tokens.weight"


@pytest.mark.parametrize("damage", ["short", "length", "json", "data"])
def test_damaged_safetensors_is_bad_input(tmp_path, damage):
    directory = tmp_path / "bad"
    directory.mkdir()
    path = directory / "model.safetensors"
    write_header_only(path, {"model.embed_tokens.weight": (64, 16)})
    raw = path.read_bytes()
    if damage == "short":
        path.write_bytes(raw[:5])
    elif damage == "length":
        path.write_bytes(struct.pack("<Q", 10**9) + raw[8:])
    elif damage == "json":
        path.write_bytes(raw[:8] + b"x" + raw[9:])
    else:
        path.write_bytes(raw[:-100])
    (directory / "config.json").write_text(json.dumps(PHI3V_CONFIG))
    with pytest.raises(BadInput) as info:
        inspect_model(str(directory))
    assert "model.safetensors" in info.value.line()
    assert ("truncated" in info.value.what) or ("corrupt" in info.value.what)
