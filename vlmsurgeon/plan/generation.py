"""grpo's generation phase, priced: `generate` samples G completions for each of B prompts at
once, with the model in eval mode and no graph, filling a KV cache of B × G sequences. Its
largest moment is the vision tower's pass over every sequence's media, the prefill (the prompts'
cache and one layer's activations), or the last decoding step (the cache at full length and one
step's logits). The formulas are in docs/plan.md ("An RL step")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .memory import HALF, Dims, _get


@dataclass(frozen=True)
class KvDims:
    """What a token leaves in the cache: a key and a value per layer and KV head."""

    layers: int
    kv_heads: int
    key_dim: int
    value_dim: int

    def per_token(self) -> int:
        # bf16, every layer at full length (a sliding-window or linear-attention layer holds less)
        return HALF * self.layers * self.kv_heads * (self.key_dim + self.value_dim)


def kv_dims(config: Any) -> KvDims | None:
    """The cache's dims from a transformers config (its text config for VLMs): KV heads (all heads
    without grouped-query attention), head dim (hidden / heads unless stated); multi-head latent
    attention (DeepSeek's `kv_lora_rank`) caches keys of qk_nope + qk_rope dims and values of v_head_dim."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = _get(text, "num_hidden_layers", "num_layers", "n_layer")
    heads = _get(text, "num_attention_heads", "n_head", "num_heads")
    kv_heads = _get(text, "num_key_value_heads", default=heads)
    hidden = _get(text, "hidden_size", "d_model", "n_embd")
    head_dim = _get(text, "head_dim", default=hidden // heads if heads else 0)
    key_dim = value_dim = head_dim
    if _get(text, "kv_lora_rank"):
        key_dim = _get(text, "qk_nope_head_dim") + _get(text, "qk_rope_head_dim")
        value_dim = _get(text, "v_head_dim", default=head_dim)
    if not (layers and kv_heads and key_dim and value_dim):
        return None
    return KvDims(layers, kv_heads, key_dim, value_dim)


def generation_bytes(
    kv: KvDims | None,
    lm: Dims | None,
    vision: Dims | None,
    *,
    sequences: int,
    seq_len: int,
    completion: int,
    vision_tokens: int,
    vocab: int,
    dequantized: int,
) -> tuple[int, int]:
    """(the KV cache at full length, the phase's largest moment above the state) for `sequences`
    = B × G of `seq_len` tokens (prompt + completion), the prompt at most seq_len - completion.
    The moments follow one another: the vision tower on each sequence's media (one layer's
    activations, as a pass without a graph), the prefill (the prompts' cache and one layer's
    activations over them), each decoding step (the cache, at most full, and the step's logits in
    bf16, their fp32 copy, the processed scores and the sampling probabilities); with the largest
    4-bit weight dequantized throughout (more than one row reaches every matmul)."""
    per_token = kv.per_token() if kv else 0
    prompt = max(seq_len - completion, 0)
    cache = sequences * seq_len * per_token
    media = sequences * vision_tokens * vision.per_token_layer() if vision else 0
    prefill = sequences * prompt * (per_token + (lm.per_token_layer() if lm else 0))
    decode = cache + (HALF + 3 * 4) * sequences * vocab
    return cache, max(media, prefill, decode) + HALF * dequantized
