"""Stage I on a CPU: AdamW's fused kernel vs its multi-tensor (foreach) loop, the optimizer step of a full
fine-tuning run (every one of SmolLM2's 135 M weights and its two moments touched once per step).

    python experiments/bench/fused_adamw.py                 # SmolLM2-135M, bench.py's smollm2 setup, 8 + 8 steps
    python experiments/bench/fused_adamw.py --mode smoke --steps 1   # the toy model (the test suite runs it)

One Lightning run of bireco's Stage I (alternate schedule, no recomputation), the two variants interleaved step by
step (A B A B ...: the optimizer's param groups switched between `fused` and `foreach` before every step; they share
the optimizer's state), so the machine's drift falls on both alike; the medians of each variant's step times and
their ratio, and of the update alone (from the end of forward, backward and clipping to the end of the step: the
step's spread on a 2-core CPU is larger than the update's share). The two compute the same update up to float
rounding (tests/unit/stages/test_optim.py). Writes markdown + JSON to --out.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench import Interleaved, build_backbone, interleaved_setup, make_batches, optim_cfg, write_interleaved

ROOT = Path(__file__).resolve().parents[2]


def use_fused(fused: bool, stepped: list[tuple[bool, float]]):
    """Switch the run's AdamW to the fused kernel or the foreach loop before a step; `stepped` records, per optimizer
    step, which one it ran and how long its update took (Lightning runs forward, backward and clipping in a closure
    inside `optimizer.step`: the time from the closure's return to the step's end; hooks set on the first switch)."""

    def apply(module):
        opt = module.trainer.optimizers[0]
        if not getattr(opt, "_bench_hooked", False):
            done = []

            def pre(o, args, kwargs):
                closure = kwargs["closure"]

                def timed():
                    out = closure()
                    done.append(time.perf_counter())
                    return out

                return args, {**kwargs, "closure": timed}

            opt.register_step_pre_hook(pre)
            opt.register_step_post_hook(
                lambda o, args, kwargs: stepped.append(
                    (o.param_groups[0]["fused"], time.perf_counter() - done[-1])
                )
            )
            opt._bench_hooked = True
        for group in opt.param_groups:
            group["fused"], group["foreach"] = fused, (None if fused else True)

    return apply


def measure(setup, steps: int) -> dict:
    from bireco.stages.reconstruction import ReconstructionModule

    backbone = build_backbone(setup, ckpt=False)
    warmup = 2 * setup.warmup
    batches = make_batches(warmup + 2 * steps, setup, backbone.text_format.eos_id(backbone.tokenizer),
                           backbone.pad_id, False)  # fmt: skip
    module = ReconstructionModule(backbone, optim_cfg(1e-5), len(batches), alpha=0.2, schedule="alternate")
    stepped: list[tuple[bool, float]] = []
    turns = Interleaved({"fused": use_fused(True, stepped), "foreach": use_fused(False, stepped)}, warmup)
    medians = turns.fit(module, batches, setup)
    timed = stepped[warmup:]
    opt_s = {name: statistics.median(t for f, t in timed if f is (name == "fused")) for name in medians}
    n = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    return {"setting": "Stage I alternate, full fine-tuning", "steps_each": steps, "trained_params": n,
            "median_s": medians, "times_s": turns.times, "ratio": medians["fused"] / medians["foreach"],
            "optimizer_step_median_s": opt_s, "fused_by_step": [f for f, _ in stepped]}  # fmt: skip


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["smollm2", "smoke"], default="smollm2")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per variant (interleaved)")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "fused_adamw")
    args = ap.parse_args(argv)
    setup = interleaved_setup(args.mode)
    r = measure(setup, args.steps)
    m, o = r["median_s"], r["optimizer_step_median_s"]
    table = [
        "| setting | trained weights | fused AdamW: median s/step | foreach AdamW | ratio | the update alone: "
        "fused / foreach, median s |", "|---|---|---|---|---|---|",
        f"| {r['setting']} | {r['trained_params'] / 1e6:.1f} M | {m['fused']:.3f} | {m['foreach']:.3f} | "
        f"**{r['ratio']:.2f}×** | {o['fused']:.3f} / {o['foreach']:.3f} |",
    ]  # fmt: skip
    write_interleaved(args.out, f"fused-adamw-{args.mode}", "Stage I", args.mode, setup, args.steps, table, r)
    return r


if __name__ == "__main__":
    main()
