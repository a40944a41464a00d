"""The anchor-reading study at real scale, one command for one H100/H200 (~10 minutes of device time):

    python experiments/scale/anchor_study.py --mode gpu --out outputs/anchor_scale       # on the GPU machine
    python experiments/scale/anchor_study.py --mode smoke --out /tmp/anchor_smoke        # tiny model, CPU, ~1 min

SmolLM2-135M-Instruct (bireco's offline conversion), WordNet pairs, bf16 (`trainer=gpu`), global batch 64, 32 / 48
tokens. Stage I runs the paper's joint schedule (alpha 0.2) over 64k training pairs (1,000 steps) with the anchor
probe every 100 steps on 64 WordNet dev pairs, once with real anchors and once with `stage.anchor=constant`
(the control: the same LM fine-tuning without any reconstruction signal); Stage II (the paper's LoRA recipe,
300 steps) then runs as the baseline (from the base), Anchor (from Stage I) and the constant-anchor control (from
the control's Stage I). Every model is evaluated on the built-in suite (WordNet test + out-of-domain, the demo's
subsample), and one table goes to <out>/anchor_study.md / .json with the probe's last anchor gains. `--frozen-decoder` adds a Stage I with `stage.decoder=frozen` (beyond the paper:
a frozen copy of the base decodes, only the encoder side trains; on CPU it grew held-out reading from a model that
already read, experiments/anchor_reading/README.md) and its Stage II. Test splits are read only for the final
table; nothing is chosen on them. The smoke mode saves its random-init tiny model first and starts every run from
that directory, as the GPU mode starts from SmolLM2's, so a frozen decoder can rebuild its start by path.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

MODES = {
    "gpu": {
        "common": [
            "model=smollm2",
            "trainer=gpu",
            "data.global_batch_size=64",
            "data.max_query_length=32",
            "data.max_doc_length=48",
            "trainer.log_every_n_steps=20",
        ],  # fmt: skip
        "stage1": [
            "trainer.max_steps=1000",
            "stage.optim.lr=1e-4",
            "stage.optim.warmup_steps=50",
            "stage.probe.every_n_steps=100",
        ],  # fmt: skip
        "stage2": ["trainer.max_steps=300", "stage.optim.lr=2e-4", "stage.optim.warmup_steps=20"],
        "eval": {"max_queries": 150, "max_docs": 350},
    },
    "smoke": {
        "common": [
            "data.global_batch_size=4",
            "data.max_train_records=64",
            "data.max_query_length=48",
            "data.max_doc_length=48",
            "trainer.log_every_n_steps=1",
        ],  # fmt: skip
        "stage1": ["trainer.max_steps=2", "stage.probe.every_n_steps=1", "stage.probe.pairs=8"],
        "stage2": ["trainer.max_steps=2"],
        "eval": {
            "max_queries": 10,
            "max_docs": 30,
            "tasks": ["WordNetDefinitionsRetrieval", "PythonAPIRetrieval"],
        },
    },
}
ROWS = {  # row -> (run variant, stage, extra overrides)
    "baseline (Stage II alone)": ("base", "stage=baseline", []),
    "Stage I only": ("anchor", "stage=reconstruction", []),
    "Anchor (Stage I -> II)": ("anchor", "stage=contrastive", []),
    "constant-anchor Stage I only": ("constant", "stage=reconstruction", ["stage.anchor=constant"]),
    "constant-anchor control (-> II)": ("constant", "stage=contrastive", []),
}
FROZEN_ROWS = {  # --frozen-decoder
    "frozen-decoder Stage I only": ("frozen", "stage=reconstruction", ["stage.decoder=frozen"]),
    "frozen-decoder Anchor (-> II)": ("frozen", "stage=contrastive", []),
}


def smoke_start(out: Path, common: list[str]) -> str:
    """The smoke mode's random-init tiny model, saved once, so every run (a frozen decoder too) loads it by path."""
    from bireco import build_backbone, compose_train

    start = out / "tiny-start"
    if not (start / "bireco.json").is_file():
        build_backbone(compose_train([*common, "stage=baseline", "stage.lora.enabled=false"])).save(start)
    return str(start)


def run_study(mode: str, out: Path, seed: int = 42, frozen_decoder: bool = False) -> dict:
    from bireco import compose_train, evaluate_checkpoint
    from bireco import train_stage as run

    m = MODES[mode]
    common = list(m["common"])
    if mode == "smoke":
        common.append(f"model.name_or_path={smoke_start(out, common)}")
    rows, seconds = {}, {}
    for label, (variant, stage, extra) in {**ROWS, **(FROZEN_ROWS if frozen_decoder else {})}.items():
        stage_args = m["stage1"] if stage == "stage=reconstruction" else m["stage2"]
        cfg = compose_train([*common, stage, *stage_args, *extra, f"output_root={out}", "experiment_name=anchor_study",
                             f"variant={variant}", f"seed={seed}", "trainer.enable_progress_bar=false"])  # fmt: skip
        final = Path(cfg.run_dir) / "final"
        if not (final / "bireco.json").is_file():
            t0 = time.perf_counter()
            run(cfg)
            seconds[label] = round(time.perf_counter() - t0)
        ev = m["eval"]
        summary = evaluate_checkpoint(str(final), tasks=ev.get("tasks"), max_queries=ev["max_queries"], max_docs=ev["max_docs"],
                                      progress=False, wandb=False)  # fmt: skip
        train_summary = json.loads((final / "train_summary.json").read_text())
        rows[label] = {"categories": summary["categories"], "tasks": {k: v["main_score"] for k, v in summary["tasks"].items()},
                       **{k: v for k, v in train_summary.items() if k.startswith("probe/anchor_gain")}}  # fmt: skip
    result = {"mode": mode, "seed": seed, "frozen_decoder": frozen_decoder, "rows": rows, "train_seconds": seconds,
              "machine": platform.node(), "overrides": m}  # fmt: skip
    (out / "anchor_study.json").write_text(json.dumps(result, indent=2))
    (out / "anchor_study.md").write_text(table(rows))
    return result


def table(rows: dict) -> str:
    tasks = sorted({t for r in rows.values() for t in r["tasks"]})
    lines = ["| run | Average | " + " | ".join(tasks) + " | anchor gain d2q / q2d (last probe) |",
             "|---|---|" + "---|" * len(tasks) + "---|"]  # fmt: skip
    for label, r in rows.items():
        gain = (f"{r['probe/anchor_gain_d2q']:+.3f} / {r['probe/anchor_gain_q2d']:+.3f}"
                if "probe/anchor_gain_d2q" in r else "—")  # fmt: skip
        cells = " | ".join(f"{r['tasks'][t]:.2f}" for t in tasks)
        lines.append(f"| {label} | {r['categories']['Average']:.2f} | {cells} | {gain} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="gpu")
    ap.add_argument("--out", type=Path, default=Path("outputs/anchor_scale"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--frozen-decoder", action="store_true", help="add a stage.decoder=frozen Stage I and its Stage II"
    )
    args = ap.parse_args()
    result = run_study(args.mode, args.out, args.seed, args.frozen_decoder)
    print(table(result["rows"]))


if __name__ == "__main__":
    main()
