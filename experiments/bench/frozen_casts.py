"""Stage II on a CPU under bf16-mixed: LoRA's frozen base weights cast to bf16 once for the run
(bireco.core.precision.training_casts, the default) vs autocast's casts at every forward.

    python experiments/bench/frozen_casts.py                 # SmolLM2-135M, bench.py's smollm2 setup, 8 + 8 steps
    python experiments/bench/frozen_casts.py --steps 12
    python experiments/bench/frozen_casts.py --mode smoke --steps 1   # the toy model (the test suite runs it)

One Lightning run per setting (without / with activation recomputation), the two variants interleaved step by step
(A B A B ...: the stage module's swap list emptied on every other step), so the machine's drift, up to 24% between two
runs of the same variant here, falls on both alike; the medians of each variant's step times and their ratio.
The two give the same losses and weights bit for bit (tests/unit/model/test_precision.py). Writes markdown + JSON
to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import Interleaved, build_backbone, interleaved_setup, make_batches, optim_cfg, write_interleaved

ROOT = Path(__file__).resolve().parents[2]


def measure(setup, ckpt: bool, steps: int) -> dict:
    from bireco.stages.contrastive import ContrastiveModule

    backbone = build_backbone(setup, ckpt=ckpt, lora=True)
    warmup = 2 * setup.warmup
    batches = make_batches(warmup + 2 * steps, setup, backbone.text_format.eos_id(backbone.tokenizer),
                           backbone.pad_id, True)  # fmt: skip
    module = ContrastiveModule(backbone, optim_cfg(2e-4), len(batches), scale=50.0)
    cast = {}  # the module's cast-once list, made in its on_train_start, kept while the autocast steps run without

    def with_casts(use: bool):
        def apply(m):
            cast.setdefault("list", m._frozen_casts)
            m._frozen_casts = cast["list"] if use else []

        return apply

    turns = Interleaved({"cast once": with_casts(True), "autocast per forward": with_casts(False)}, warmup)
    medians = turns.fit(module, batches, setup)
    n_cast = sum(c.numel() for _, _, c in cast["list"])
    return {"setting": "LoRA r16" + (", ckpt" if ckpt else ""), "steps_each": steps, "cast_params": n_cast,
            "median_s": medians, "times_s": turns.times,
            "ratio": medians["cast once"] / medians["autocast per forward"]}  # fmt: skip


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["smollm2", "smoke"], default="smollm2")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per variant (interleaved)")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "frozen_casts")
    args = ap.parse_args(argv)
    setup = interleaved_setup(args.mode)
    rows = [measure(setup, ckpt, args.steps) for ckpt in (False, True)]
    table = ["| setting | frozen weights cast to bf16 | cast once: median s/step | autocast per forward | ratio |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        m = r["median_s"]
        table.append(f"| {r['setting']} | {r['cast_params'] / 1e6:.1f} M | {m['cast once']:.3f} | "
                     f"{m['autocast per forward']:.3f} | **{r['ratio']:.2f}×** |")  # fmt: skip
    write_interleaved(
        args.out, f"frozen-casts-{args.mode}", "Stage II", args.mode, setup, args.steps, table, rows
    )
    return rows


if __name__ == "__main__":
    main()
