#!/usr/bin/env bash
# The logged training numbers of five short runs (tiny: Stage I with the anchor probe, Stage II, baseline; SmolLM2:
# Stage I, Stage II), for checking that a restructure changed no behaviour: run it on the checkout before and after
# (same machine, same OMP_NUM_THREADS) and compare the two outputs' metrics.json with `cmp`.
#   OMP_NUM_THREADS=1 bash tests/scripts/loss_fingerprint.sh /path/to/checkout OUTDIR
set -euo pipefail
TREE=$(cd "$1" && pwd); OUT=$2
rm -rf "$OUT"; mkdir -p "$OUT"
cd "$TREE"
export PYTHONPATH=$TREE HF_HUB_OFFLINE=1 WANDB_MODE=offline HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
COMMON="output_root=$OUT/runs trainer.log_every_n_steps=1 trainer.enable_progress_bar=false"
SMOL="model=smollm2 data.global_batch_size=8 data.max_query_length=32 data.max_doc_length=48 experiment_name=sm"
python -m bireco.train stage=reconstruction trainer.max_steps=12 stage.probe.every_n_steps=6 $COMMON > "$OUT/t1.log" 2>&1
python -m bireco.train stage=contrastive trainer.max_steps=12 $COMMON > "$OUT/t2.log" 2>&1
python -m bireco.train stage=baseline trainer.max_steps=6 $COMMON > "$OUT/t3.log" 2>&1
python -m bireco.train stage=reconstruction trainer.max_steps=4 $SMOL $COMMON > "$OUT/s1.log" 2>&1
python -m bireco.train stage=contrastive trainer.max_steps=3 $SMOL $COMMON > "$OUT/s2.log" 2>&1
python - "$OUT" <<'PY'
import csv, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
keep = ("train/loss", "train/acc", "train/grad_norm", "train/lr", "probe/", "val/")
runs = {}
for f in sorted((out / "runs").rglob("metrics.csv")):
    rows = [{k: v for k, v in r.items() if k == "step" or k.startswith(keep)} for r in csv.DictReader(open(f))]
    runs[str(f.relative_to(out / "runs"))] = [{k: v for k, v in r.items() if v != ""} for r in rows]
(out / "metrics.json").write_text(json.dumps(runs, indent=1, sort_keys=True))
print(f"{out / 'metrics.json'}: {sum(len(r) for r in runs.values())} rows of {len(runs)} runs")
PY
