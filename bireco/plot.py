"""Training curves from logs/metrics.csv, without wandb: one run, several, or a whole sweep.

python -m bireco.plot outputs/default/default/stage1                 # one run -> <run>/curves.png
python -m bireco.plot outputs/my_sweep --out sweep.png                # every run below a directory
python -m bireco.plot RUN_A RUN_B --metrics train/loss probe/anchor_gain_d2q
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bireco.core.runs import find_runs, metrics_csv

DEFAULT_METRICS = ["train/loss", "train/lr", "val/ndcg@10", "probe/anchor_gain_d2q", "probe/anchor_gain_q2d"]


def plot_runs(runs: list[Path], out: Path, metrics: list[str] | None = None) -> list[str]:
    """Write one panel per metric that any run logged; returns the metrics drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frames = {r: pd.read_csv(metrics_csv(r)) for r in runs}
    wanted = metrics or DEFAULT_METRICS
    drawn = [m for m in wanted if any(m in f.columns and f[m].notna().any() for f in frames.values())]
    if not drawn:
        raise ValueError(f"none of {', '.join(wanted)} was logged by {', '.join(map(str, runs))}")
    root = Path(*Path(runs[0]).parts[: len(Path(runs[0]).parts) - 3]) if len(runs) > 1 else None
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.2 * len(drawn), 3.4), dpi=110, squeeze=False)
    for ax, metric in zip(axes[0], drawn):
        for run, frame in frames.items():
            if metric in frame.columns:
                rows = frame[["step", metric]].dropna()
                label = str(run.relative_to(root)) if root and run.is_relative_to(root) else run.name
                ax.plot(rows["step"], rows[metric], marker="." if len(rows) < 30 else None, label=label)
        ax.set_title(metric)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path, help="run directories, or directories holding runs")
    ap.add_argument(
        "--out", type=Path, help="PNG to write (default: curves.png in the one run, or the first path)"
    )
    ap.add_argument(
        "--metrics", nargs="+", help=f"columns of metrics.csv (default: {' '.join(DEFAULT_METRICS)})"
    )
    args = ap.parse_args(argv)
    try:
        runs = find_runs(args.paths)
        out = args.out or args.paths[0] / "curves.png"
        drawn = plot_runs(runs, out, args.metrics)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"Error: {err}")
    print(f"{out}: {', '.join(drawn)} for {len(runs)} run(s)")


if __name__ == "__main__":
    main()
