"""Stage II on a CPU under bf16-mixed: the casts a training step makes once (bireco.stages.base
`training_forward_casts`, the default) against each of them made at every forward again: LoRA's frozen base
weights cast to bf16 by autocast, and each LoRA input cast to the adapter's fp32 weight by peft (and back by
autocast).

    python experiments/bench/frozen_casts.py                 # SmolLM2-135M, bench.py's smollm2 setup, 8 steps each
    python experiments/bench/frozen_casts.py --steps 12
    python experiments/bench/frozen_casts.py --mode smoke --steps 1   # the toy model (the test suite runs it)

One Lightning run per setting (without / with activation recomputation), the three variants interleaved step by
step (A B C A B C ...: the stage module's swap list emptied, or peft's input casts left on, for its turn), so the
machine's drift, up to 24% between two runs of the same variant here, falls on all alike; the medians of each
variant's step times and their ratios to the default. All three give the same losses and weights bit for bit
(tests/unit/model/test_precision.py). Writes markdown + JSON to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import Interleaved, build_backbone, interleaved_setup, make_batches, optim_cfg, write_interleaved

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = "both cast once (default)"
BY_AUTOCAST = "frozen weights cast by autocast"
BY_PEFT = "LoRA inputs cast by peft"


def measure(setup, ckpt: bool, steps: int) -> dict:
    from bireco.stages.contrastive import ContrastiveModule

    backbone = build_backbone(setup, ckpt=ckpt, lora=True)
    warmup = 2 * setup.warmup
    batches = make_batches(warmup + 3 * steps, setup, backbone.text_format.eos_id(backbone.tokenizer),
                           backbone.pad_id, True)  # fmt: skip
    module = ContrastiveModule(backbone, optim_cfg(2e-4), len(batches), scale=50.0)
    cast = {}  # the module's cast-once list, made in its on_train_start, kept while the autocast steps run without

    def variant(frozen_once: bool, lora_inputs_bf16: bool):
        def apply(m):
            cast.setdefault("list", m._frozen_casts)
            m._frozen_casts = cast["list"] if frozen_once else []
            m._lora_input_casts_off = lora_inputs_bf16

        return apply

    turns = Interleaved({DEFAULT: variant(True, True), BY_AUTOCAST: variant(False, True),
                         BY_PEFT: variant(True, False)}, warmup)  # fmt: skip
    medians = turns.fit(module, batches, setup)
    n_cast = sum(c.numel() for _, _, c in cast["list"])
    return {"setting": "LoRA r16" + (", ckpt" if ckpt else ""), "steps_each": steps, "cast_params": n_cast,
            "median_s": medians, "times_s": turns.times,
            "ratio": {k: medians[k] / medians[DEFAULT] for k in (BY_AUTOCAST, BY_PEFT)}}  # fmt: skip


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["smollm2", "smoke"], default="smollm2")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per variant (interleaved)")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "frozen_casts")
    args = ap.parse_args(argv)
    setup = interleaved_setup(args.mode)
    rows = [measure(setup, ckpt, args.steps) for ckpt in (False, True)]
    table = [f"| setting | frozen weights cast to bf16 | {DEFAULT}: median s/step | {BY_AUTOCAST} | {BY_PEFT} |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        m, x = r["median_s"], r["ratio"]
        table.append(f"| {r['setting']} | {r['cast_params'] / 1e6:.1f} M | {m[DEFAULT]:.3f} | "
                     f"{m[BY_AUTOCAST]:.3f} (**{x[BY_AUTOCAST]:.2f}×**) | {m[BY_PEFT]:.3f} (**{x[BY_PEFT]:.2f}×**) |")  # fmt: skip
    write_interleaved(
        args.out, f"frozen-casts-{args.mode}", "Stage II", args.mode, setup, args.steps, table, rows
    )
    return rows


if __name__ == "__main__":
    main()
