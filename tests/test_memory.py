"""The memory estimate's formula, checked against figures computed by hand."""

from __future__ import annotations

from vlmsurgeon.plan.memory import ComponentMemory, Dims, estimate

NF4 = 4 + 8 / 64 + 32 / (64 * 256)  # bits per 4-bit weight with double quantisation


def test_qlora_estimate_by_hand():
    parts = {
        "vision": ComponentMemory(params=1000, linear=800, quantized=False, full_trainable=0, lora_trainable=0),
        "merger": ComponentMemory(params=200, linear=200, quantized=False, full_trainable=200, lora_trainable=0),
        "lm": ComponentMemory(params=10_000, linear=8_192, quantized=True, full_trainable=0, lora_trainable=512),
        "head": ComponentMemory(params=640, linear=640, quantized=False, full_trainable=0, lora_trainable=0),
    }
    lm = Dims(hidden=64, mlp=128, layers=2)
    e = estimate(parts, lm=lm, vision=Dims(32, 64, 2), vocab=10, batch=2, seq_len=8, vision_tokens=16)
    # weights: vision/merger/head bf16; LM: 8192 NF4 weights + 1808 others in bf16; the merger
    # trains in full beside LoRA: peft's modules_to_save copy of it in fp32 (a 4-bit model)
    assert e.weights == (2 * 1000 + 2 * 200 + int(8192 * NF4 / 8) + 2 * (10_000 - 8192) + 2 * 640 + 4 * 200)
    assert e.adapters == 4 * 512
    assert e.gradients == 4 * 512 + 4 * 200
    assert e.optimizer == 2 * (4 * 512 + 4 * 200)
    tokens = 2 * 8
    per_layer = 2 * (9 * 64 + 3 * 128)  # bytes per token and layer
    assert e.activations == tokens * 2 * 2 * 64  # each layer's input; vision frozen: no vision term
    assert e.activations_no_ckpt == tokens * 2 * per_layer
    # chunked cross-entropy (the default): one chunk's logits, softmax and gradient (here the whole
    # batch fits one chunk), plus the head's input and its gradient, all fp32
    assert e.logits == 3 * 4 * (2 * 8 * 10) + 2 * 4 * (2 * 8 * 64)
    plain = estimate(
        parts, lm=lm, vision=Dims(32, 64, 2), vocab=10, batch=2, seq_len=8, vision_tokens=16, chunked=False
    )
    assert plain.logits == 2 * 8 * 10 * 4 * 2  # --no-chunked-loss: every logit and its gradient
    # one layer's backward: its activations recomputed and their gradients, the head input's
    # gradient (fp32); no dequantized weight given, so none priced
    assert e.backward == 2 * tokens * per_layer + 4 * tokens * 64
    assert e.backward_no_ckpt == tokens * per_layer + 4 * tokens * 64  # activations kept already
    # the loss and a layer's backward never overlap: the larger of the two counts
    state = e.weights + e.adapters + e.gradients + e.optimizer
    assert e.backward > e.logits
    assert e.total == state + e.activations + e.backward
    assert e.total_no_ckpt == state + e.activations_no_ckpt + e.backward_no_ckpt
    big_vocab = estimate(parts, lm=lm, vision=None, vocab=10_000, batch=2, seq_len=8, vision_tokens=0)
    assert big_vocab.logits > big_vocab.backward
    assert big_vocab.total == state + big_vocab.activations + big_vocab.logits


def test_what_trains_in_full_gets_fp32_master_weights_only_beside_4bit():
    """`finetune` casts what trains in full to fp32 when the model loads in 4-bit (else it trains
    in bf16); beside LoRA peft keeps the original too (modules_to_save)."""

    def parts(quantized: bool, lora: int) -> dict[str, ComponentMemory]:
        return {
            "merger": ComponentMemory(200, 200, False, 200, 0),
            "lm": ComponentMemory(1000, 800, quantized, 0, lora),
        }

    def weights(quantized: bool) -> int:
        return 2 * 200 + (int(800 * NF4 / 8) + 2 * 200 if quantized else 2 * 1000)

    def run(quantized: bool, lora: int):
        return estimate(parts(quantized, lora), lm=None, vision=None, vocab=0, batch=1, seq_len=4, vision_tokens=0)

    e = run(True, 64)  # 4-bit + LoRA: bf16 original + fp32 copy
    assert (e.weights, e.gradients, e.optimizer) == (weights(True) + 4 * 200, 4 * 64 + 4 * 200, 2 * (4 * 64 + 4 * 200))
    e = run(True, 0)  # 4-bit, no LoRA: cast in place
    assert (e.weights, e.gradients) == (weights(True) + 2 * 200, 4 * 200)
    e = run(False, 64)  # bf16 + LoRA: a bf16 copy
    assert (e.weights, e.gradients, e.optimizer) == (weights(False) + 2 * 200, 4 * 64 + 2 * 200, 2 * (4 * 64 + 2 * 200))
    e = run(False, 0)  # bf16 alone: trains where it is
    assert (e.weights, e.gradients) == (weights(False), 2 * 200)


def test_backward_prices_one_layer_and_the_largest_dequantized_weight():
    parts = {"lm": ComponentMemory(params=10_000, linear=8_192, quantized=True, full_trainable=0, lora_trainable=512)}
    lm = Dims(hidden=64, mlp=128, layers=2)
    e = estimate(parts, lm=lm, vision=None, vocab=10, batch=1, seq_len=8, vision_tokens=0, dequantized=128 * 64)
    # 8 tokens × 2·(9·64 + 3·128) bytes, recomputed and their gradients, plus the 128×64 weight
    # in bf16 and the head input's fp32 gradient
    assert e.backward == 2 * 8 * 2 * (9 * 64 + 3 * 128) + 2 * 128 * 64 + 4 * 8 * 64
    # the vision stack's layer when it trains and is the larger one
    parts["vision"] = ComponentMemory(params=100, linear=50, quantized=False, full_trainable=100, lora_trainable=0)
    v = estimate(
        parts, lm=lm, vision=Dims(32, 64, 2), vocab=10, batch=1, seq_len=8, vision_tokens=100, dequantized=128 * 64
    )
    assert v.backward == 2 * 100 * 2 * (9 * 32 + 3 * 64) + 2 * 128 * 64 + 4 * 8 * 64
    # nothing before the head trains: no backward through the layers
    frozen = {"lm": ComponentMemory(100, 64, True, 0, 0)}
    assert (
        estimate(frozen, lm=lm, vision=None, vocab=10, batch=1, seq_len=8, vision_tokens=0, dequantized=64).backward
        == 0
    )


def test_chunked_logits_are_one_chunk_at_a_real_vocabulary():
    parts = {"lm": ComponentMemory(params=100, linear=64, quantized=False, full_trainable=0, lora_trainable=64)}
    e = estimate(parts, lm=Dims(1536, 8960, 28), vision=None, vocab=151_936, batch=1, seq_len=2048, vision_tokens=0)
    # 2048 rows in at most 8 chunks: 256 rows of 151,936 fp32 logits (445 MiB for three) + 24 MiB
    assert e.logits == 3 * 4 * 256 * 151_936 + 2 * 4 * 2048 * 1536
    plain = estimate(
        parts,
        lm=Dims(1536, 8960, 28),
        vision=None,
        vocab=151_936,
        batch=1,
        seq_len=2048,
        vision_tokens=0,
        chunked=False,
    )
    assert plain.logits == 2048 * 151_936 * 8  # 2.32 GiB
    assert e.logits > e.backward
    assert e.total == e.weights + e.adapters + e.gradients + e.optimizer + e.activations + e.logits


def test_vision_activations_only_when_vision_trains():
    parts = {"vision": ComponentMemory(100, 50, False, 100, 0), "lm": ComponentMemory(100, 50, False, 0, 0)}
    e = estimate(parts, lm=Dims(8, 16, 1), vision=Dims(4, 8, 3), vocab=5, batch=1, seq_len=4, vision_tokens=10)
    assert e.activations_no_ckpt == 4 * 1 * 2 * (9 * 8 + 3 * 16) + 10 * 3 * 2 * (9 * 4 + 3 * 8)
    assert e.activations == 4 * 1 * 2 * 8 + 10 * 3 * 2 * 4  # layer inputs
    frozen = estimate(
        {"vision": ComponentMemory(100, 50, False, 0, 0), "lm": parts["lm"]},
        lm=Dims(8, 16, 1),
        vision=Dims(4, 8, 3),
        vocab=5,
        batch=1,
        seq_len=4,
        vision_tokens=10,
    )
    assert frozen.activations_no_ckpt == 0  # nothing trains: no gradient, nothing kept


def test_nothing_trains_nothing_but_weights():
    parts = {"lm": ComponentMemory(100, 64, True, 0, 0)}
    e = estimate(parts, lm=Dims(8, 16, 1), vision=None, vocab=5, batch=1, seq_len=4, vision_tokens=0)
    assert e.total == e.weights == int(64 * NF4 / 8) + 2 * 36
