"""Training-memory estimate (bytes) from parameter figures and a few config dimensions, and its
per-GPU share under ddp/fsdp/zero3. Pure arithmetic; the formulas are in docs/plan.md ("Memory
estimate", "Scale-out")."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vlmsurgeon.model.report import NF4_BITS, human

from .objective import Objective

LORA_BYTES = 4  # peft keeps adapters in fp32 (autocast_adapter_dtype)
HALF = 2  # bf16
# A frozen component that is not 4-bit, as held: bf16, also in an fp32 run, where finetune keeps
# frozen blocks in the checkpoint's 16 bits and widens them per call (train/compact.py).
STORED = 2


@dataclass(frozen=True)
class Dims:
    """What activations depend on: a stack of `layers` with width `hidden`, MLP width `mlp`
    (for MoE: expert width × experts per token)."""

    hidden: int
    mlp: int
    layers: int

    def per_token_layer(self) -> int:
        # per token and layer, kept for backward in bf16: the layer input and q/k/v/o outputs
        # (5h), two norm outputs (2h), attention output and residual (2h), MLP gate/up/act (3·mlp)
        return HALF * (9 * self.hidden + 3 * self.mlp)


@dataclass(frozen=True)
class ComponentMemory:
    params: int
    linear: int  # Linear weights: what 4-bit applies to
    quantized: bool
    full_trainable: int
    lora_trainable: int


@dataclass
class Estimate:
    """A training step's peak: the state (weights, adapters, gradients, AdamW, a preference
    reference's frozen copies), then the largest of moments that never overlap: a forward without
    a graph that runs before the policy's (a preference reference), the policy's micro-batch (what
    the stacks keep for backward plus the larger of the loss (logits) and one layer's backward),
    and grpo's generation phase before both."""

    weights: int  # as loaded, plus the fp32 copies of what trains in full
    adapters: int
    gradients: int
    optimizer: int
    activations: int  # kept for backward: with checkpointing each layer's input only
    activations_no_ckpt: int
    logits: int
    backward: int = 0  # one layer's backward: its activations recomputed and their gradients, a dequantized weight
    backward_no_ckpt: int = 0
    reference_copies: int = 0  # a preference reference's frozen copy of what trains in full (no LoRA beside it)
    no_grad_forward: int = 0  # the largest moment of a forward without a graph before the policy's (reference)
    kv_cache: int = 0  # grpo's generation: the KV cache of every sequence at full length
    generation: int = 0  # grpo's generation phase, above the state: its largest moment (the cache included)

    @property
    def state(self) -> int:
        return self.weights + self.adapters + self.gradients + self.optimizer + self.reference_copies

    def training(self, checkpointing: bool = True) -> int:
        """What the training phase adds on top of the state: the policy's pass, or a pass without
        a graph before it, whichever is larger (they never hold memory at once)."""
        if checkpointing:
            policy = self.activations + max(self.logits, self.backward)
        else:
            policy = self.activations_no_ckpt + max(self.logits, self.backward_no_ckpt)
        return max(policy, self.no_grad_forward)

    def transient(self, checkpointing: bool = True) -> int:
        """What one micro-batch adds on top of the state at the step's peak: the training phase, or
        grpo's generation before it (its cache is freed before the policy's forward)."""
        return max(self.training(checkpointing), self.generation)

    def peak_phase(self, checkpointing: bool = True) -> str:
        return "generation" if self.generation > self.training(checkpointing) else "training"

    @property
    def total(self) -> int:
        return self.state + self.transient(True)

    @property
    def total_no_ckpt(self) -> int:
        return self.state + self.transient(False)

    def to_json(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total, "total_no_ckpt": self.total_no_ckpt}


# The chunked cross-entropy's chunks (loss.py uses the same rule): at least 2^22 logits (16 MiB in
# fp32), and at most MAX_CHUNKS chunks, because each chunk reads the whole head again (a 151,936 ×
# 1,536 head is 0.9 GB in fp32): on a CPU, bandwidth-bound, 76 chunks made a step 1.6x slower.
CHUNK_ELEMENTS = 1 << 22
MAX_CHUNKS = 8


def chunk_rows(rows: int, vocab: int) -> int:
    """Label positions per chunk of the chunked cross-entropy."""
    return max(1, CHUNK_ELEMENTS // max(vocab, 1), -(-rows // MAX_CHUNKS))


def logits_bytes(batch: int, seq_len: int, vocab: int, hidden: int, chunked: bool, rows: int | None = None) -> int:
    """fp32 logits and their gradient for the whole batch (the model's own loss); chunked: one
    chunk's logits, softmax and gradient, chunks taken on the `rows` the head runs on (every
    token unless given: grpo's completions), plus the head's input kept and its gradient (fp32)."""
    if not chunked:
        return batch * seq_len * vocab * 4 * 2
    tokens = batch * seq_len
    rows = tokens if rows is None else rows
    return 3 * 4 * min(rows, chunk_rows(rows, vocab)) * vocab + 2 * 4 * tokens * hidden


def no_grad_forward_bytes(
    lm: Dims | None,
    tokens: int,
    vision: Dims | None,
    patches: int,
    dequantized: int,
    *,
    head_tokens: int,
    vocab: int,
    chunked: bool,
    captured: int | None = None,
) -> int:
    """The largest moment of a forward without a graph (a preference reference, KTO's KL pass):
    nothing is kept for backward, so it is one layer's activations as they are computed with the
    largest 4-bit weight dequantized, or at the head the input captured (`captured` tokens, the
    labelled ones unless given), the labelled rows picked from it and one chunk's logits in the
    compute dtype, in fp32 and log-softmaxed; without the chunked loss every logit in fp32 and its
    log-softmax."""
    if not head_tokens:
        return 0
    layer = max(
        tokens * lm.per_token_layer() if lm and tokens else 0,
        patches * vision.per_token_layer() if vision and patches else 0,
    )
    if chunked:
        head = (HALF + 2 * 4) * min(head_tokens, chunk_rows(head_tokens, vocab)) * vocab
        head += HALF * (head_tokens + (head_tokens if captured is None else captured)) * (lm.hidden if lm else 0)
    else:
        head = 2 * 4 * head_tokens * vocab
    return max(layer + HALF * dequantized, head)


def weight_bytes(c: ComponentMemory) -> int:
    if c.quantized:
        return int(c.linear * NF4_BITS / 8) + HALF * (c.params - c.linear)
    # LoRA inside its blocks makes them record a graph: those stay in the compute dtype
    return (HALF if c.lora_trainable else STORED) * c.params


def stack_activations(dims: Dims | None, tokens: int, checkpointing: bool) -> int:
    """What a stack keeps for backward: without checkpointing every layer's activations, with it
    each layer's input (the layer being recomputed is priced in `backward_bytes`)."""
    if dims is None or tokens == 0:
        return 0
    if checkpointing:
        return tokens * dims.layers * HALF * dims.hidden
    return tokens * dims.layers * dims.per_token_layer()


def backward_bytes(
    lm: Dims | None, tokens: int, vision: Dims | None, patches: int, dequantized: int, checkpointing: bool = True
) -> int:
    """What one layer's backward adds while it runs, of the larger stack that gradients cross:
    with checkpointing its activations recomputed, and with or without their gradients (as large
    as the activations); the largest 4-bit weight dequantized to the compute dtype (bitsandbytes
    dequantizes a 4-bit weight whole for every matmul over more than one token); and the gradient
    of the head's input, which the loss leaves for backward (fp32)."""
    if not tokens:
        return 0
    layer = max(
        tokens * lm.per_token_layer() if lm else 0, patches * vision.per_token_layer() if vision and patches else 0
    )
    head_grad = 4 * tokens * lm.hidden if lm else 0
    return (2 if checkpointing else 1) * layer + HALF * dequantized + head_grad


def estimate(
    components: dict[str, ComponentMemory],
    *,
    lm: Dims | None,
    vision: Dims | None,
    vocab: int,
    batch: int,
    seq_len: int,
    vision_tokens: int,
    chunked: bool = True,
    dequantized: int = 0,
    objective: Objective | None = None,
) -> Estimate:
    """Weights (4-bit NF4 with double quant for quantized Linear weights, bf16 otherwise), fp32
    LoRA adapters; what trains in full gets master weights in fp32 when anything is 4-bit
    (`finetune` casts it; else it trains in bf16), as a copy beside the original when LoRA is
    there too (peft's modules_to_save) or in its place; gradients and two AdamW states in each
    trained tensor's dtype; what the LM keeps for backward (and the vision encoder when it
    trains); then the larger of the loss's logits (one chunk with the chunked cross-entropy, all
    of them without) and one layer's backward (`dequantized`: elements of the largest 4-bit
    Linear weight, 0 when nothing is 4-bit). Priced with and without gradient checkpointing.
    A preference `objective`: a pair's chosen and rejected answers run as 2 sequences, so the
    policy's pass is priced on 2 × batch sequences; a reference (dpo, ipo, kto) runs first without
    a graph (its largest moment, on its own), and keeps a frozen copy of what trains in full where
    no LoRA adapter can be disabled to get the start back (beside LoRA peft keeps the original).
    grpo: G sequences per prompt, the head on their completion positions only (plan/generation.py
    prices the generation before them)."""
    objective = objective or Objective()
    full = sum(c.full_trainable for c in components.values())
    lora = sum(c.lora_trainable for c in components.values())
    master = 4 if any(c.quantized for c in components.values()) else HALF
    # what trains in full: a master copy beside the original (peft's modules_to_save, next to
    # LoRA), or the original itself at the master's width
    copies = sum(
        c.full_trainable * (master if lora else master - (HALF if c.lora_trainable else STORED))
        for c in components.values()
    )
    trains_before_head = any(c.full_trainable or c.lora_trainable for name, c in components.items() if name != "head")
    vision_trains = any(
        components[n].full_trainable or components[n].lora_trainable for n in ("vision",) if n in components
    )
    sequences, no_grad = objective.sequences(batch), objective.no_grad_sequences(batch)
    scored = min(objective.completion or seq_len, seq_len)  # positions the head runs on: grpo's completions
    tokens = sequences * seq_len if trains_before_head else 0
    patches = sequences * vision_tokens if vision_trains else 0
    trains = bool(full or lora)
    return Estimate(
        weights=sum(weight_bytes(c) for c in components.values()) + copies,
        adapters=LORA_BYTES * lora,
        gradients=LORA_BYTES * lora + master * full,
        optimizer=2 * (LORA_BYTES * lora + master * full),
        activations=stack_activations(lm, tokens, True) + stack_activations(vision, patches, True),
        activations_no_ckpt=stack_activations(lm, tokens, False) + stack_activations(vision, patches, False),
        logits=logits_bytes(sequences, seq_len, vocab, lm.hidden if lm else 0, chunked, sequences * scored)
        if trains
        else 0,
        backward=backward_bytes(lm, tokens, vision, patches, dequantized, True),
        backward_no_ckpt=backward_bytes(lm, tokens, vision, patches, dequantized, False),
        reference_copies=master * full if objective.reference and not lora else 0,
        no_grad_forward=no_grad_forward_bytes(
            lm,
            no_grad * seq_len if trains_before_head else 0,
            vision,
            no_grad * vision_tokens if vision_trains else 0,
            dequantized,
            head_tokens=no_grad * scored if trains else 0,
            vocab=vocab,
            chunked=chunked,
            captured=no_grad * seq_len,
        ),
    )


def _get(config: Any, *names: str, default: int = 0) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def lm_dims(config: Any) -> tuple[Dims | None, int]:
    """(LM dims, vocab) from a transformers config (its text config for VLMs)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _get(text, "hidden_size", "d_model", "n_embd")
    if not hidden:
        return None, 0
    experts_per_token = _get(text, "num_experts_per_tok", "moe_topk", "num_selected_experts")
    moe = _get(text, "moe_intermediate_size") if experts_per_token else 0
    mlp = moe * experts_per_token if moe else _get(text, "intermediate_size", "ffn_dim", default=4 * hidden)
    layers = _get(text, "num_hidden_layers", "num_layers", "n_layer")
    return Dims(hidden, mlp, layers), _get(text, "vocab_size")


def vision_dims(config: Any) -> tuple[Dims | None, int]:
    """(vision dims, patches per image token) from a VLM config's vision config."""
    vision = getattr(config, "vision_config", None)
    if vision is None:
        return None, 1
    hidden = _get(vision, "embed_dim", "hidden_size", "width")
    if not hidden:
        return None, 1
    mlp = _get(vision, "intermediate_size", default=0)
    if not mlp:
        ratio = getattr(vision, "mlp_ratio", 4)
        mlp = int(hidden * ratio)
    layers = _get(vision, "depth", "num_hidden_layers", "num_layers")
    merge = _get(vision, "spatial_merge_size") ** 2 if _get(vision, "spatial_merge_size") else 1
    scale = getattr(config, "scale_factor", None) or 0
    ratio = getattr(config, "downsample_ratio", None) or 0
    if isinstance(scale, int) and scale > 1:
        merge = scale * scale
    elif isinstance(ratio, float) and 0 < ratio < 1:
        merge = round(1 / (ratio * ratio))
    return Dims(hidden, mlp, layers), merge


STRATEGIES = ("ddp", "fsdp", "zero3")


def gib(n: float) -> str:
    return human(n, "B")


@dataclass(frozen=True)
class ScaleRequest:
    """`plan --gpus N --strategy S --gpu-memory M`, validated."""

    strategy: str = "ddp"
    gpus: int = 1
    gpu_memory: int = 80 * 2**30


def scale_request(gpus: int | None, strategy: str | None, gpu_memory: str | None) -> ScaleRequest | None:
    """None when no scale-out option was given; BadInput for a bad value."""
    from vlmsurgeon.errors import BadInput

    from .amounts import parse_amount

    if gpus is None and strategy is None and gpu_memory is None:
        return None
    if gpus is not None and gpus < 1:
        raise BadInput(f"--gpus {gpus}: a run needs at least one GPU", "e.g. --gpus 8")
    if strategy is not None and strategy not in STRATEGIES:
        raise BadInput(f"--strategy '{strategy}': unknown strategy", "one of " + ", ".join(STRATEGIES))
    memory = ScaleRequest.gpu_memory
    if gpu_memory is not None:
        text = str(gpu_memory).strip()
        try:
            value, _ = parse_amount(text, "memory")
        except ValueError as exc:
            raise BadInput(f"--gpu-memory '{gpu_memory}': {exc}", "e.g. --gpu-memory 80GiB") from exc
        if text[-1:].isdigit() or value < 1:
            raise BadInput(
                f"--gpu-memory '{gpu_memory}': give a positive size with its unit", "e.g. --gpu-memory 80GiB (or 80GB)"
            )
        memory = int(value)
    return ScaleRequest(strategy or "ddp", gpus or 1, memory)


@dataclass(frozen=True)
class ScaleOut:
    """Per-GPU memory of a data-parallel run. ddp: every GPU holds the whole single-GPU estimate.
    fsdp/zero3: weights, adapters, gradients and optimizer states sharded 1/N (4-bit storage
    included, as FSDP-QLoRA does), plus the largest unit gathered whole, plus the activations
    kept and the larger of logits and one layer's backward, of each GPU's own micro-batch (never
    sharded; a preference reference's no-graph pass instead where it is larger)."""

    strategy: str
    gpus: int
    gpu_memory_bytes: int
    state_bytes: int  # weights + adapters + gradients + optimizer, single-GPU figures
    gathered_bytes: int  # largest unit, whole (fsdp/zero3 only)
    gathered_unit: str
    activation_bytes: int  # activations kept + the larger of logits and one layer's backward, of one micro-batch

    def per_gpu(self, gpus: int) -> int:
        if self.strategy == "ddp":
            return self.state_bytes + self.activation_bytes
        return -(-self.state_bytes // gpus) + self.gathered_bytes + self.activation_bytes

    @property
    def per_gpu_bytes(self) -> int:
        return self.per_gpu(self.gpus)

    @property
    def fits(self) -> bool:
        return self.per_gpu_bytes <= self.gpu_memory_bytes

    @property
    def gpus_needed(self) -> int | None:
        """Smallest N whose per-GPU figure fits; None when no N does."""
        if self.strategy == "ddp":
            return 1 if self.per_gpu(1) <= self.gpu_memory_bytes else None
        # ceil(state / N) <= room  <=>  N >= state / room
        room = self.gpu_memory_bytes - self.gathered_bytes - self.activation_bytes
        if room <= 0:
            return 1 if room == 0 and not self.state_bytes else None
        return max(1, -(-self.state_bytes // room))

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "gpus": self.gpus,
            "per_gpu_bytes": self.per_gpu_bytes,
            "gpu_memory_bytes": self.gpu_memory_bytes,
            "fits": self.fits,
            "gpus_needed": self.gpus_needed,
            "state_bytes": self.state_bytes,
            "gathered_bytes": self.gathered_bytes,
            "gathered_unit": self.gathered_unit,
            "activation_bytes": self.activation_bytes,
        }

    def describe(self) -> str:
        if self.strategy == "ddp":
            parts = f"everything on every GPU: state {gib(self.state_bytes)}"
        else:
            parts = (
                f"state {gib(self.state_bytes)} / {self.gpus} + largest unit gathered "
                f"{gib(self.gathered_bytes)} ({self.gathered_unit})"
            )
        needed, size = self.gpus_needed, gib(self.gpu_memory_bytes)
        if needed is not None:
            need = f"needs {needed} GPU(s) of {size}"
        elif self.strategy == "ddp":
            need = "does not fit at any N (ddp keeps everything on every GPU; try fsdp or zero3)"
        else:
            need = (
                f"does not fit at any N (the gathered unit and one micro-batch's activations alone need "
                f"{gib(self.gathered_bytes + self.activation_bytes)})"
            )
        return (
            f"{self.strategy} on {self.gpus} GPU(s): {gib(self.per_gpu_bytes)} per GPU ({parts} + "
            f"one micro-batch's activations {gib(self.activation_bytes)}): "
            f"{'fits' if self.fits else 'does not fit'} in {size}; {need}"
        )


def scale_out(
    memory: Estimate, request: ScaleRequest, gathered: tuple[str, int], checkpointing: bool = True
) -> ScaleOut:
    sharded = request.strategy != "ddp"
    return ScaleOut(
        request.strategy,
        request.gpus,
        request.gpu_memory,
        memory.state,
        gathered[1] if sharded else 0,
        gathered[0] if sharded else "",
        memory.transient(checkpointing),
    )
