"""A few training steps of each stage on a Llama-3.2-1B-shaped model (random init, bf16) under `trainer=gpu` and
`trainer=fsdp` on one GPU: median step time and peak memory, plus the FSDP sharded checkpoint and the one-directory
Hugging Face export.

    python experiments/bench/one_gpu_strategies.py --out outputs/scale

Objects come from bireco's own config composition, builders and strategies (conf/trainer/gpu.yaml, fsdp.yaml,
conf/model_size/tiny_llama_1b.yaml); batches are synthetic token ids of fixed length (query 64 / document 256 /
hard negative 256, global batch 32), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import time
from pathlib import Path

import torch
from bench import SETUPS, make_batches

from bireco import compose_train as compose


def one_run(trainer_name: str, stage: str, out: Path, steps: int, cpu_check: bool = False) -> dict:
    import lightning as L
    from torch.utils.data import DataLoader

    from bireco import (
        build_backbone,
        build_callbacks,
        build_module,
        build_trainer,
        checkpoint_step,
        export_backbone,
        validate,
    )

    ckpt_every = steps // 2 if trainer_name == "fsdp" and stage == "reconstruction" else None
    size = ["size=tiny", "trainer.precision=bf16-true"] if cpu_check else ["size=1b"]
    cfg = compose([
        "model=tiny_llama", *size, f"trainer={trainer_name}", f"stage={stage}", "trainer.devices=1",
        f"trainer.max_steps={steps}", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        f"trainer.checkpoint_every_n_steps={ckpt_every or 'null'}", "data.global_batch_size=32",
        "data.num_hard_negatives=1", f"output_root={out}", f"variant={trainer_name}",
    ])  # fmt: skip
    validate(cfg)
    L.seed_everything(0, verbose=False)
    t0 = time.perf_counter()
    with torch.device("cpu" if cpu_check else "cuda"):
        backbone = build_backbone(cfg)
    module = build_module(cfg, backbone)
    run_dir = Path(cfg.run_dir)
    trainer = build_trainer(cfg, run_dir, build_callbacks(cfg, run_dir), backbone=backbone)
    setup = SETUPS["smoke" if cpu_check else "gpu"]
    setup.arch["vocab_size"] = backbone.causal_lm.config.vocab_size
    eos = backbone.text_format.eos_id(backbone.tokenizer)
    batches = make_batches(steps, setup, eos, backbone.pad_id, negatives=stage != "reconstruction")
    if not cpu_check:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, pin_memory=not cpu_check))
    with (run_dir / "logs" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    step_s = [float(r["train/step_s"]) for r in rows if r.get("train/step_s")][2:]  # skip warm-up steps
    peak = max([float(r["train/peak_mem_gb"]) for r in rows if r.get("train/peak_mem_gb")] or [0.0])
    losses = [round(float(r["train/loss"]), 4) for r in rows if r.get("train/loss")]
    result = {
        "trainer": trainer_name, "stage": stage, "steps": steps, "median_step_s": statistics.median(step_s),
        "pairs_per_s": 32 / statistics.median(step_s), "peak_mem_gb": round(peak, 2), "losses": losses,
        "strategy": type(trainer.strategy).__name__,
    }  # fmt: skip
    if ckpt_every:
        last = run_dir / "checkpoints" / "last.ckpt"
        result["sharded_checkpoint"] = {"is_dir": last.is_dir(), "step": checkpoint_step(str(last))}
    if trainer_name == "fsdp" or cpu_check:
        t1 = time.perf_counter()
        export = export_backbone(cfg, module, backbone)
        export.save(run_dir / "final", cfg.save_mode)
        from safetensors import safe_open

        n = 0
        for f in (run_dir / "final").glob("*.safetensors"):
            with safe_open(str(f), "pt") as st:
                n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
        result["export"] = {"params_in_final": n, "seconds": round(time.perf_counter() - t1, 1)}
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    del trainer, module, backbone
    if not cpu_check:
        torch.cuda.empty_cache()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="outputs/scale")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--trainers", default="gpu,fsdp")
    ap.add_argument(
        "--cpu-check", action="store_true", help="dry run of this script on CPU (trainer=cpu, tiny model)"
    )
    args = ap.parse_args()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    out = Path(args.out)
    results = []
    for trainer_name in ("cpu",) if args.cpu_check else args.trainers.split(","):
        for stage in ("reconstruction", "baseline"):
            try:
                r = one_run(trainer_name, stage, out, args.steps, args.cpu_check)
            except Exception as e:  # keep the other runs
                import traceback

                traceback.print_exc()
                r = {"trainer": trainer_name, "stage": stage, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            print("[scale]", json.dumps(r), flush=True)
            results.append(r)
    (out / "scale.json").write_text(json.dumps(results, indent=1))
    device = "CPU" if args.cpu_check else torch.cuda.get_device_name(0)
    print(f"\nDevice: {device}, torch {torch.__version__}")
    print("| trainer | stage | median step s | pairs/s | peak GB |\n|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['trainer']} | {r['stage']} | failed: {r['error'][:80]} | | |")
        else:
            print(
                f"| {r['trainer']} | {r['stage']} | {r['median_step_s']:.3f} | {r['pairs_per_s']:.1f} | {r['peak_mem_gb']:.1f} |"
            )


if __name__ == "__main__":
    main()
