# `make demo`: set up and run the main job on a built-in default. `make test`: set up and test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
LATEST := .venv-latest

.PHONY: setup test lint sweep demo demo-dpo demo-grpo bench clean lock test-latest

# the tested set: every package at the version constraints.txt pins
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: these builds lie on this machine's disk (CPU here, CUDA-capable)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 $(PY) -m pytest -q -m "not sweep"

# the shape of the code: ruff (lint + format) and the import-linter layers contract in pyproject.toml
# (imports point down the user's path: cli > train > use > ship > plan | data > recipe > model | tiny)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# every family `tiny` lists through finetune → merge --verify → reload, and the probe on every
# family inspect covers, and QLoRA DPO from each peer's preference format on qwen2_vl and llava
# (CI runs it after `test`)
sweep: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 $(PY) -m pytest -q -m sweep

demo: $(STAMP)
	$(VENV)/bin/vlmsurgeon inspect examples/qwen3-vl-235b-a22b --depth 4
	rm -rf demo-out && $(VENV)/bin/vlmsurgeon tiny qwen2_vl -o demo-out/tiny-qwen2-vl
	$(VENV)/bin/vlmsurgeon inspect demo-out/tiny-qwen2-vl --depth 3
	$(PY) examples/make_shapes.py demo-out/shapes
	$(VENV)/bin/vlmsurgeon plan --config examples/vlmsurgeon.yaml --freeze vision --probe
	$(VENV)/bin/vlmsurgeon finetune --config examples/vlmsurgeon.yaml --freeze vision
	# ship it: fold the adapter into the base, a plain transformers checkpoint, checked against the run
	$(VENV)/bin/vlmsurgeon merge demo-out/run -o demo-out/merged --verify
	# ask the merged export about a demo image
	$(VENV)/bin/vlmsurgeon generate demo-out/merged --image demo-out/shapes/img/red_circle.png \
		--prompt "What is in the picture?" --max-new-tokens 16
	# did training work? exact match on held-out images (demo-out/shapes/eval/), export vs the base
	$(VENV)/bin/vlmsurgeon eval demo-out/merged --compare demo-out/tiny-qwen2-vl \
		--data demo-out/shapes/eval.jsonl --max-new-tokens 20

# after `make demo`: DPO on the SFT run's own mistakes, then preference accuracy on held-out images
demo-dpo: $(STAMP)
	test -f demo-out/run/vlmsurgeon.json -a -d demo-out/merged || $(MAKE) demo
	rm -rf demo-out/sft-answers demo-out/sft-answers-eval demo-out/dpo demo-out/dpo-merged
	# the SFT run's answers on the training and the held-out images; where wrong, they are rejected
	$(VENV)/bin/vlmsurgeon eval demo-out/run --data demo-out/shapes/train.jsonl -o demo-out/sft-answers \
		--max-new-tokens 20
	$(VENV)/bin/vlmsurgeon eval demo-out/run --data demo-out/shapes/eval.jsonl -o demo-out/sft-answers-eval \
		--max-new-tokens 20
	$(PY) examples/make_pairs.py demo-out/shapes/train.jsonl demo-out/sft-answers/predictions.jsonl \
		demo-out/shapes/sft_pairs.jsonl
	$(PY) examples/make_pairs.py demo-out/shapes/eval.jsonl demo-out/sft-answers-eval/predictions.jsonl \
		demo-out/shapes/sft_eval_pairs.jsonl
	$(VENV)/bin/vlmsurgeon finetune --config examples/vlmsurgeon-dpo.yaml --freeze vision
	$(VENV)/bin/vlmsurgeon merge demo-out/dpo -o demo-out/dpo-merged --verify
	# does the DPO export prefer the true caption over the SFT model's mistakes on held-out images?
	$(VENV)/bin/vlmsurgeon eval demo-out/dpo-merged --compare demo-out/merged \
		--data demo-out/shapes/sft_eval_pairs.jsonl

# after `make demo`: GRPO from the SFT run on one-word colour questions, then the rewards on held-out images
demo-grpo: $(STAMP)
	test -f demo-out/run/vlmsurgeon.json -a -d demo-out/merged || $(MAKE) demo
	rm -rf demo-out/grpo demo-out/grpo-merged
	$(VENV)/bin/vlmsurgeon finetune --config examples/vlmsurgeon-grpo.yaml --freeze vision
	$(VENV)/bin/vlmsurgeon merge demo-out/grpo -o demo-out/grpo-merged --verify
	# do the GRPO export's greedy answers name the colour more often than the SFT model's?
	$(VENV)/bin/vlmsurgeon eval demo-out/grpo-merged --compare demo-out/merged \
		--data demo-out/shapes/eval_grpo.jsonl --max-new-tokens 16 \
		--reward examples/shapes_rewards.py:colour --reward exact

# the newest versions pyproject.toml allows, in a venv of their own, to find drift early: prints
# what differs from constraints.txt, then runs the tests
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]"
	$(LATEST)/bin/python -m pip freeze --exclude-editable | sort > $(LATEST)/versions.txt
	@echo "drift from constraints.txt (- tested, + newest allowed):"
	@drift=$$(grep -v '^#' constraints.txt | sort | diff - $(LATEST)/versions.txt | grep '^[<>]' | sed 's/^</-/;s/^>/+/'); \
		echo "$${drift:-  none}"
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 $(LATEST)/bin/python -m pytest -q -m "not sweep"

# after a deliberate upgrade of the venv (and a green `make test sweep`): record it as the tested set
lock: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

bench: $(STAMP)
	$(PY) bench/inspect_bench.py
	$(PY) bench/plan_bench.py
	$(PY) bench/probe_bench.py

clean:
	rm -rf $(VENV) $(LATEST) demo-out .pytest_cache
