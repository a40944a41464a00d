"""Where a training step's time goes: torch.profiler over bireco's real Stage I and Stage II steps (Backbone + the
stage's LightningModule under a Lightning Trainer with the CPU fast path, as trainer=cpu trains), grouped into GEMMs, attention, norms and elementwise, casts, the
fused CE, the optimizer and the rest (Lightning hooks, Python, data) = wall time not inside any op.

    python experiments/bench/profile_steps.py                         # SmolLM2-135M on CPU, bench.py's smollm2 setup
    python experiments/bench/profile_steps.py --mode cpu --steps 3    # the tiny model

Self time of every op, summed per group over the profiled steps, per step; the share is of the step's wall time.
The GEMM group's throughput is its model FLOPs (bench.py's count, attention left out) over its time, beside the
matmul limit measured at the model's shapes in the same process: a step cannot reach a higher MFU than its GEMMs
do, however little else it spends. Writes profile-<mode>.md / .json to --out.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import lightning as L
import torch
from bench import (
    SETUPS,
    StepWork,
    build_backbone,
    make_batches,
    model_arch,
    precision,
    stage1_module,
    stage1_work,
    stage2_module,
)
from matmul_limit import matmul_limit
from torch.utils.data import DataLoader

GROUPS = [  # first match wins
    ("GEMM", r"^aten::(mm|addmm|bmm|matmul|linear|_addmm_activation|baddbmm)$|mkldnn.*(matmul|linear)|onednn"),
    ("attention", r"scaled_dot_product|_flash_attention|_efficient_attention|attention"),
    ("fused CE (chunked)", r"cross_entropy|log_softmax|nll_loss|logsumexp|_softmax"),
    ("optimizer", r"_foreach_|adamw|_fused_adam|Optimizer"),
    ("casts and copies", r"^aten::(to|_to_copy|copy_|clone|contiguous|empty_like|type_as)$"),
    ("norms and elementwise", r"^aten::(mul|add|sub|div|pow|rsqrt|mean|sum|silu|neg|cat|where|exp|sqrt|norm|"
                              r"linalg_vector_norm|masked_fill|clamp|sigmoid|cos|sin|index|gather|scatter|"
                              r"embedding|embedding_dense_backward|threshold|fill_|zero_|ones_like|zeros_like)"),
]  # fmt: skip


def group_of(name: str) -> str:
    for group, pattern in GROUPS:
        if re.search(pattern, name):
            return group
    return "other ops"


class ProfileSteps(L.Callback):
    def __init__(self, start: int, steps: int):
        self.start, self.steps = start, steps
        self.prof, self.wall = None, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.start:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.start + self.steps - 1:
            self.wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)


def profile(name: str, module, batches, setup, steps: int, work: StepWork) -> dict:
    cb = ProfileSteps(setup.warmup + 1, steps)
    from bireco import CpuFastPath

    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision(setup), max_steps=len(batches),
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[cb, CpuFastPath()], gradient_clip_val=1.0, num_sanity_val_steps=0,
                        limit_val_batches=0)  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    self_ms: dict[str, float] = {}
    for e in cb.prof.key_averages():
        self_ms[group_of(e.key)] = self_ms.get(group_of(e.key), 0.0) + e.self_cpu_time_total / 1e3
    wall_ms = cb.wall * 1e3
    self_ms["outside ops (Lightning hooks, Python, data)"] = max(0.0, wall_ms - sum(self_ms.values()))
    per_step = {k: v / steps for k, v in sorted(self_ms.items(), key=lambda kv: -kv[1])}
    top = sorted(cb.prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    profiled = batches[cb.start : cb.start + steps]
    gemm_gflop = sum(work.flops(module.backbone, b, attention=False) for b in profiled) / steps / 1e9
    return {"name": name, "step_ms": wall_ms / steps, "groups_ms": per_step,
            "top_ops_ms": {e.key: e.self_cpu_time_total / 1e3 / steps for e in top},
            "gemm_gflop_per_step": gemm_gflop,
            "gemm_gflops": gemm_gflop / (per_step.get("GEMM", 0.0) / 1e3 or float("nan"))}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["smollm2", "cpu", "smoke"], default="smollm2")
    ap.add_argument(
        "--steps", type=int, default=2, help="profiled steps per stage (after bench.py's warm-up)"
    )
    ap.add_argument("--out", type=Path, default=Path("outputs/bench"))
    ap.add_argument(
        "--stages",
        default="stage1,stage2,stage2_ckpt",
        help="comma-separated: stage1 (joint, full fine-tuning), stage2 (LoRA r16, the demo's: no recomputation), "
        "stage2_ckpt (LoRA r16 with recomputation)",
    )
    args = ap.parse_args(argv)
    stages = args.stages.split(",")
    if unknown := set(stages) - {"stage1", "stage2", "stage2_ckpt"}:
        raise SystemExit(f"--stages: unknown {sorted(unknown)}; choose from stage1, stage2, stage2_ckpt")
    setup = SETUPS[args.mode]
    n = setup.warmup + 1 + args.steps
    rows = []
    if "stage1" in stages:
        backbone = build_backbone(setup, ckpt=False)
        eos = backbone.text_format.eos_id(backbone.tokenizer)
        module = stage1_module(backbone, n, "joint")
        rows.append(profile("Stage I, joint (full fine-tuning)", module, make_batches(n, setup, eos, backbone.pad_id,
                            False), setup, args.steps, stage1_work(both=True, recompute=False)))  # fmt: skip
    for name, ckpt in (("stage2", False), ("stage2_ckpt", True)):
        if name not in stages:
            continue
        backbone = build_backbone(setup, ckpt=ckpt, lora=True)
        eos = backbone.text_format.eos_id(backbone.tokenizer)
        module = stage2_module(backbone, n)
        label = (
            "Stage II (LoRA r16, recomputation)"
            if ckpt
            else "Stage II (LoRA r16, no recomputation: the demo's)"
        )
        work = StepWork(body=dict.fromkeys(("query", "positive", "negatives"), 1), recompute=ckpt)
        batches = make_batches(n, setup, eos, backbone.pad_id, True)
        rows.append(profile(label, module, batches, setup, args.steps, work))
    limit = matmul_limit(model_arch(setup), torch.bfloat16 if precision(setup).startswith("bf16") else torch.float32,
                         tokens=setup.batch * (setup.q_len + setup.d_len))  # fmt: skip
    lines = [f"# Where a step's time goes ({args.mode}, {precision(setup)}, batch {setup.batch}, lengths "
             f"{setup.q_len}/{setup.d_len}, {torch.get_num_threads()} threads)", ""]  # fmt: skip
    for r in rows:
        lines += [
            f"## {r['name']}: {r['step_ms']:.0f} ms per step",
            "",
            f"GEMMs: {r['gemm_gflop_per_step']:.0f} GFLOP per step at {r['gemm_gflops']:.0f} GFLOP/s in the step, "
            f"**{r['gemm_gflops'] / limit['gflops']:.2f}** of the {limit['dtype']} matmul limit at the model's shapes "
            f"in this process ({limit['gflops']:.0f} GFLOP/s)",
            "",
            "| group | ms per step | share |",
            "|---|---|---|",
        ]
        lines += [f"| {g} | {ms:.0f} | {ms / r['step_ms']:.0%} |" for g, ms in r["groups_ms"].items()]
        lines += ["", "Top ops (self time, ms per step): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in r["top_ops_ms"].items()), ""]  # fmt: skip
    report = "\n".join(lines)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"profile-{args.mode}.md").write_text(report)
    (args.out / f"profile-{args.mode}.json").write_text(json.dumps({"limit": limit, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
