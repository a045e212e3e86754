#!/usr/bin/env bash
# `finetune` under `accelerate launch` on 2+ GPUs with each shipped config in examples/accelerate/:
# DDP, FSDP (LoRA and QLoRA), FSDP-QLoRA with CPU offload, DeepSpeed ZeRO-3 (QLoRA). What the
# CPU tests cannot run (accelerate runs FSDP on GPUs only; deepspeed is not a dependency).
#
# For each run it checks what tests/test_distributed.py checks on the CPU: one adapter, loaded by
# plain peft on the plain base; the log written once; world_size and steps in vlmsurgeon.json;
# and prints each adapter's largest difference from the DDP run's (same seed, data and batches).
# Peak GPU memory per run is printed by `nvidia-smi` sampling into RUN/gpu_mem.csv.
#
# Usage (2 GPUs, from the repository root):
#   bash bench/distributed_gpu.sh [MODEL] [DATA] [STEPS]
# MODEL defaults to a tiny qwen2_vl built by `vlmsurgeon tiny`, DATA to examples/make_shapes.py's
# data; a real check uses a real model, e.g. Qwen/Qwen2-VL-2B-Instruct, and STEPS 20.
# ZeRO-3 runs only when `python -c "import deepspeed"` works (pip install deepspeed).
set -euo pipefail

PY=${PY:-.venv/bin/python}
ACCELERATE=${ACCELERATE:-.venv/bin/accelerate}
WORK=${WORK:-$(mktemp -d /tmp/vlmsurgeon-dist.XXXXXX)}
STEPS=${3:-4}
NPROC=${NPROC:-2}

MODEL=${1:-}
if [[ -z "$MODEL" ]]; then
  MODEL="$WORK/tiny"
  .venv/bin/vlmsurgeon tiny qwen2_vl -o "$MODEL" >/dev/null
fi
DATA=${2:-}
if [[ -z "$DATA" ]]; then
  "$PY" examples/make_shapes.py "$WORK/shapes" >/dev/null
  DATA="$WORK/shapes/train.jsonl"
fi
echo "model $MODEL · data $DATA · $STEPS steps · $NPROC processes · work in $WORK"

run() {  # run NAME CONFIG [finetune options...]
  local name=$1 config=$2
  shift 2
  local out="$WORK/$name"
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 200 >"$WORK/$name.mem" &
  local sampler=$!
  local started=$SECONDS
  "$ACCELERATE" launch --config_file "examples/accelerate/$config" --num_processes "$NPROC" \
    -m vlmsurgeon.cli finetune "$MODEL" --data "$DATA" --freeze vision --steps "$STEPS" -o "$out" "$@" \
    >"$WORK/$name.out" 2>"$WORK/$name.err" || { kill "$sampler" 2>/dev/null || true; echo "$name: FAILED"; tail -5 "$WORK/$name.err"; return 0; }
  kill "$sampler" 2>/dev/null || true
  local peak
  peak=$(sort -t, -k2 -n "$WORK/$name.mem" | tail -1 | cut -d, -f2)
  echo "$name: $((SECONDS - started)) s, peak GPU memory ${peak} MiB (one GPU)"
  "$PY" - "$MODEL" "$out" "$WORK/ddp" "$STEPS" "$NPROC" <<'EOF'
import json, sys
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

model, run, ddp, steps, nproc = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
record = json.loads((run / "vlmsurgeon.json").read_text())
logged = [r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]
assert logged == list(range(1, steps + 1)), logged
assert record["training"]["world_size"] == nproc and record["training"]["global_step"] == steps
saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
assert all(torch.isfinite(t).all() for t in saved.values())
PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(model), run / "adapter")
line = f"  adapter: {len(saved)} tensors, {sum(t.numel() for t in saved.values()):,} values, loads in plain peft"
if ddp.resolve() != run.resolve() and (ddp / "adapter").is_dir():
    other = load_file(str(ddp / "adapter" / "adapter_model.safetensors"))
    worst = max((saved[k].float() - other[k].float()).abs().max().item() for k in saved)
    line += f"; max |diff| vs DDP {worst:.2e}"
print(line)
EOF
}

run ddp ddp.yaml
run fsdp-lora fsdp.yaml --quantize none
run fsdp-qlora fsdp.yaml
run fsdp-qlora-offload fsdp_qlora.yaml
if "$PY" -c "import deepspeed" 2>/dev/null; then
  run zero3-qlora deepspeed_zero3.yaml
else
  echo "zero3-qlora: skipped (deepspeed is not installed: pip install deepspeed)"
fi
