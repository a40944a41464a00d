"""The in-training dev check's encoding on a CPU: bf16 weights cast once per check vs autocast's per-batch casts.

    python experiments/bench/dev_check.py                     # the demo's dev check: 200 queries, 500 documents
    python experiments/bench/dev_check.py --repeats 1

SmolLM2-135M-Instruct (offline) with the demo's Stage II LoRA (r16) in fp32, as a bf16-mixed Stage II holds it
between steps; the demo's dev set (WordNet dev, 32 / 48 tokens). Each variant runs the stage module's own validation
hooks over the dev check's loaders (the check Lightning runs every `trainer.dev_check_every_n_steps`), in turn
(A B A B, best of `--repeats`): "per batch" is the path before 2026-12-02 (autocast casts each fp32 weight at
every forward), "once" casts the Linear weights once per check (bireco.core.precision.inference_casts). The two
embeddings must be equal bit for bit. Writes markdown + JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> dict:
    import bireco.stages.base as stage_base
    from bireco.config.compose import compose_train
    from bireco.evaluation.dev_check import DevCheckData, dev_retrieval_set
    from bireco.stages.contrastive import ContrastiveModule
    from bireco.tools.offline_lm import offline_lm_path
    from bireco.training.builders import build_backbone

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--docs", type=int, default=500)
    ap.add_argument(
        "--batch-size", type=int, default=16, help="bireco's CPU encoding batch (encode_batch.py)"
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "dev_check")
    args = ap.parse_args(argv)

    path = str(offline_lm_path("smollm2-135m-instruct"))
    cfg = compose_train(["model=smollm2", f"model.name_or_path={path}", "stage=baseline", "data.max_query_length=32",
                         "data.max_doc_length=48", f"data.dev_queries={args.queries}",
                         f"data.dev_corpus_size={args.docs}"])  # fmt: skip
    backbone = build_backbone(cfg)
    module = ContrastiveModule(backbone, cfg.stage.optim, lr_horizon=10)
    module.eval()
    data = DevCheckData(dev_retrieval_set(cfg), backbone, 32, 48)
    loaders = data.loaders(0, 1, args.batch_size)
    n_tokens = sum(s.length for s in data.queries) + sum(s.length for s in data.corpus)
    real_casts = stage_base.inference_casts

    def check(once: bool) -> torch.Tensor:
        stage_base.inference_casts = real_casts if once else (lambda device, mixed, *models: [])
        try:
            with torch.no_grad():
                module.on_validation_epoch_start()
                for idx, loader in enumerate(loaders):
                    for i, batch in enumerate(loader):
                        module.validation_step(batch, i, dataloader_idx=idx)
            return torch.cat([e for side in module._dev_parts for _, e in side])
        finally:
            stage_base.inference_casts = real_casts

    best = {"per batch": float("inf"), "once": float("inf")}
    out = {}
    for _ in range(args.repeats):
        for name in best:
            t = time.perf_counter()
            out[name] = check(name == "once")
            best[name] = min(best[name], time.perf_counter() - t)
    equal = torch.equal(out["per batch"], out["once"])
    machine = (f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
               f"SmolLM2-135M-Instruct + LoRA r16 (fp32 master weights), bf16 autocast")  # fmt: skip
    lines = [
        f"The dev check's encoding: {args.queries} WordNet dev queries + {args.docs} documents ({n_tokens} tokens, "
        f"32 / 48 max), batch {args.batch_size}; machine: {machine}; best of {args.repeats}.",
        "",
        "| Linear weights cast to bf16 | seconds per check | tokens/s |",
        "|---|---|---|",
        *(f"| {name} | {s:.1f} | {n_tokens / s:.0f} |" for name, s in best.items()),
        "",
        f"- once / per batch: **{best['once'] / best['per batch']:.2f}×** the time; embeddings equal bit for bit: "
        f"{equal}",
    ]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dev_check.md").write_text(text)
    result = {"seconds": best, "tokens": n_tokens, "bit_equal": equal, "machine": machine, "args": vars(args)}
    (args.out / "dev_check.json").write_text(json.dumps(result, indent=2, default=str))
    print(text)
    if not equal:
        raise SystemExit("the two paths embedded differently")
    return result


if __name__ == "__main__":
    main()
