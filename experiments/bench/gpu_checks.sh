#!/usr/bin/env bash
# The GPU checks behind docs/benchmarks.md, in one go (about 8 minutes on one H100):
#   1. experiments/bench/one_gpu_strategies.py: a few steps of each stage, trainer=gpu and trainer=fsdp, 1B shape
#   2. experiments/bench/bench.py --mode gpu: bireco vs plain PyTorch loops (Stage I, Stage II, variable lengths)
# Usage: bash experiments/bench/gpu_checks.sh OUTDIR   (tables on stdout; logs and JSON in OUTDIR)
set -u
OUT=${1:-outputs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/env.txt"
$PY -c "import sys, torch, transformers, lightning, peft; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__, 'peft', peft.__version__)" | tee -a "$OUT/env.txt"
RUNS=$(mktemp -d)  # checkpoints and 2.5 GB exports stay out of OUT
$PY experiments/bench/one_gpu_strategies.py --out "$RUNS" > "$OUT/scale.log" 2>&1
grep -E "^\[scale\]|^\||^Device" "$OUT/scale.log"; cp "$RUNS/scale.json" "$OUT/" 2>/dev/null
$PY experiments/bench/bench.py --mode gpu --out "$OUT" > "$OUT/bench.log" 2>&1
grep -E "^\[bench\]" "$OUT/bench.log"; cat "$OUT/bench-gpu.md" 2>/dev/null || tail -30 "$OUT/bench.log"
rm -rf "$RUNS"
