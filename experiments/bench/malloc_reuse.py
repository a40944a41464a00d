"""Stage I on a CPU with malloc keeping large freed buffers for reuse (bireco.core.allocator, the default:
`trainer.cpu_keep_freed_memory=true`) vs glibc's default of mapping large buffers afresh.

    python experiments/bench/malloc_reuse.py                 # SmolLM2-135M, bench.py's smollm2 setup, 2 rounds
    python experiments/bench/malloc_reuse.py --mode smoke --steps 2 --rounds 1   # the toy model (the test suite)

malloc's setting is the process's, and what it changes is carried from step to step (the heap keeps a freed buffer
for the next), so the two variants cannot take turns inside one run: each round runs one fresh process per variant
(default, then kept), each training bireco's Stage I (alternate schedule, full fine-tuning) for --steps steps after
the warm-up; per variant the median step time, page faults and system CPU seconds per step, and the process's peak
resident memory. The computation is the same: only where its memory comes from differs. Writes markdown + JSON to
--out.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from bench import Interleaved, build_backbone, interleaved_setup, make_batches, optim_cfg, precision

ROOT = Path(__file__).resolve().parents[2]
KEEP, MAP = "kept for reuse", "mapped afresh"


def usage() -> tuple[int, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_stime


def worker(mode: str, keep: bool, steps: int) -> dict:
    """One process: malloc set first, then the timed Stage I steps."""
    from bireco.core.allocator import keep_freed_memory
    from bireco.stages.reconstruction import ReconstructionModule

    if keep:
        keep_freed_memory()
    setup = interleaved_setup(mode, keep_freed=False)
    backbone = build_backbone(setup, ckpt=False)
    n = setup.warmup + 1 + steps
    batches = make_batches(n, setup, backbone.text_format.eos_id(backbone.tokenizer), backbone.pad_id, False)
    module = ReconstructionModule(backbone, optim_cfg(1e-5), n, alpha=0.2, schedule="alternate")
    marks: list[tuple[int, float]] = []
    # one variant: Interleaved times its steps after bench.py's warm-up + 1, marking page faults before each
    turns = Interleaved({"step": lambda _m: marks.append(usage())}, setup.warmup + 1)
    median = turns.fit(module, batches, setup)["step"]
    marks.append(usage())
    timed = marks[setup.warmup + 1 :]
    return {"median_s": median, "times_s": turns.times["step"],
            "faults_per_step": statistics.median(b[0] - a[0] for a, b in zip(timed, timed[1:])),
            "sys_s_per_step": statistics.median(b[1] - a[1] for a, b in zip(timed, timed[1:])),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["smollm2", "smoke"], default="smollm2")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per process")
    ap.add_argument("--rounds", type=int, default=2, help="pairs of processes (default, then kept)")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "malloc_reuse")
    ap.add_argument("--worker", choices=["keep", "map"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.mode, args.worker == "keep", args.steps)))
        return {}
    runs: dict[str, list[dict]] = {MAP: [], KEEP: []}
    for _ in range(args.rounds):
        for name, flag in ((MAP, "map"), (KEEP, "keep")):
            cmd = [
                sys.executable,
                __file__,
                "--mode",
                args.mode,
                "--steps",
                str(args.steps),
                "--worker",
                flag,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
            runs[name].append(json.loads(out.stdout.split("RESULT ", 1)[1].splitlines()[0]))
    med = {k: statistics.median(r["median_s"] for r in v) for k, v in runs.items()}
    rows = ["| malloc | median s/step (per process) | page faults per step | system CPU s per step | peak RSS MB |",
            "|---|---|---|---|---|"]  # fmt: skip
    for name, rs in runs.items():
        cols = [" / ".join(fmt.format(r[key]) for r in rs) for key, fmt in
                (("median_s", "{:.3f}"), ("faults_per_step", "{:,.0f}"), ("sys_s_per_step", "{:.3f}"),
                 ("peak_rss_mb", "{:,.0f}"))]  # fmt: skip
        rows.append(f"| {name} | {' | '.join(cols)} |")
    result = {"runs": runs, "median_s": med, "ratio": med[KEEP] / med[MAP], "steps_each": args.steps}
    rows += ["", f"- Stage I step, kept for reuse / mapped afresh (median of the processes' medians): "
                 f"**{result['ratio']:.2f}×**"]  # fmt: skip
    setup = interleaved_setup(args.mode, keep_freed=False)
    report = "\n".join([
        f"Stage I alternate, full fine-tuning ({args.mode}, {precision(setup)}, batch {setup.batch}, lengths "
        f"{setup.q_len}/{setup.d_len}, {torch.get_num_threads()} threads; {platform.machine()}, torch "
        f"{torch.__version__}), {args.steps} timed steps per process, {args.rounds} rounds of one process per "
        f"variant:", "", *rows,
    ])  # fmt: skip
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"malloc-reuse-{args.mode}.md").write_text(report + "\n")
    (args.out / f"malloc-reuse-{args.mode}.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
