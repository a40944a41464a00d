"""What LoRA's adapter adds to each projection it adapts, timed inside bireco's real Stage II steps on a CPU.

    python experiments/bench/lora_parts.py                   # SmolLM2-135M, bench.py's smollm2 setup, 2 timed steps
    python experiments/bench/lora_parts.py --mode smoke --steps 1   # the toy model (the test suite runs it)

profile_steps.py groups a step's time by op; this groups the forward passes by module: for every peft LoRA Linear,
forward hooks time the frozen base matmul, the adapter's dropout, its A and B matmuls and the whole module (the
whole minus those parts is the scaling and the add), summed per projection name over the timed steps (the
backward pass is not split: autograd runs it outside the modules). Hooks cost a little time of their own, so read
the parts against each other, not against bench.py's step times. Writes markdown + JSON to --out.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import time
from pathlib import Path

import torch
from bench import Interleaved, build_backbone, interleaved_setup, make_batches, optim_cfg, precision

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("base", "dropout", "A", "B", "whole")


def hook_parts(model: torch.nn.Module) -> dict:
    """Forward hooks on every LoRA Linear's parts; returns {projection: {part: [seconds, calls]}}, filled while
    autograd records (training forwards only)."""
    spent: dict = collections.defaultdict(lambda: {p: [0.0, 0] for p in PARTS})

    def timed(module: torch.nn.Module, projection: str, part: str) -> None:
        def before(m, args):
            m._lora_parts_t0 = time.perf_counter()

        def after(m, args, out):
            if torch.is_grad_enabled():
                slot = spent[projection][part]
                slot[0] += time.perf_counter() - m._lora_parts_t0
                slot[1] += 1

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    for name, m in model.named_modules():
        if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict) and hasattr(m, "base_layer"):
            projection = name.rsplit(".", 1)[-1]
            for adapter in m.lora_A:
                timed(m.lora_A[adapter], projection, "A")
                timed(m.lora_B[adapter], projection, "B")
                timed(m.lora_dropout[adapter], projection, "dropout")
            timed(m.base_layer, projection, "base")
            timed(m, projection, "whole")
    return spent


def main(argv=None) -> dict:
    from bireco.stages.contrastive import ContrastiveModule

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["smollm2", "smoke"], default="smollm2")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "lora_parts")
    args = ap.parse_args(argv)
    setup = interleaved_setup(args.mode)
    backbone = build_backbone(setup, ckpt=False, lora=True)
    batches = make_batches(setup.warmup + args.steps, setup, backbone.text_format.eos_id(backbone.tokenizer),
                           backbone.pad_id, True)  # fmt: skip
    module = ContrastiveModule(backbone, optim_cfg(2e-4), len(batches), scale=50.0)
    spent = hook_parts(backbone.causal_lm)

    def clear_after_warmup(m):
        if m.global_step == setup.warmup:
            spent.clear()

    turns = Interleaved({"step": clear_after_warmup}, setup.warmup)
    step_s = turns.fit(module, batches, setup)["step"]
    rows = {}
    for projection, parts in spent.items():
        ms = {part: 1e3 * sec / args.steps for part, (sec, _) in parts.items()}
        ms["scaling and add"] = max(0.0, ms["whole"] - sum(ms[p] for p in ("base", "dropout", "A", "B")))
        rows[projection] = {"ms_per_step": ms, "calls_per_step": parts["whole"][1] / args.steps,
                            "adapter_over_base": (ms["whole"] - ms["base"]) / ms["base"]}  # fmt: skip
    table = ["| projection | calls per step | base matmul ms | dropout | A | B | scaling and add | adapter / base |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for projection, r in rows.items():
        ms = r["ms_per_step"]
        table.append(f"| {projection} | {r['calls_per_step']:.0f} | {ms['base']:.0f} | {ms['dropout']:.0f} | "
                     f"{ms['A']:.0f} | {ms['B']:.0f} | {ms['scaling and add']:.0f} | **{r['adapter_over_base']:.2f}** |")  # fmt: skip
    base = sum(r["ms_per_step"]["base"] for r in rows.values())
    adapter = sum(r["ms_per_step"]["whole"] - r["ms_per_step"]["base"] for r in rows.values())
    table += ["", f"Forward passes per step: base matmuls {base:.0f} ms, adapters {adapter:.0f} ms "
                  f"({adapter / base:.2f} of the base); the median step {step_s:.3f} s (hooks included)."]  # fmt: skip
    data = {"rows": rows, "base_ms": base, "adapter_ms": adapter, "step_s": step_s, "times_s": turns.times}
    report = "\n".join([
        f"Stage II forward passes by LoRA part ({args.mode}, {precision(setup)}, batch {setup.batch}, lengths "
        f"{setup.q_len}/{setup.d_len}, {torch.get_num_threads()} threads; {platform.machine()}, "
        f"{platform.processor() or 'cpu'}, torch {torch.__version__}), {args.steps} timed steps:", "", *table,
    ])  # fmt: skip
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"lora-parts-{args.mode}.md").write_text(report + "\n")
    (args.out / f"lora-parts-{args.mode}.json").write_text(json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    main()
