"""Turn evaluation summaries of runs into the paper's table: baseline vs Anchor per experiment, category
averages and deltas (markdown + CSV + a bar plot).

    python experiments/paper_table/aggregate.py outputs                 # every outputs/<experiment>/<variant>/<run>/eval
    python experiments/paper_table/aggregate.py outputs --out results/  # where to write table.md, table.csv, table.png
    python experiments/paper_table/aggregate.py outputs --baseline paper_llama32_1b/default   # a sweep's Anchor rows vs one baseline

One row per experiment/variant and setting (Stage I only, Baseline, Anchor), so a sweep (e.g. ablation_alpha's
alpha0.2 / alpha0.5 / alpha0.8) reads as one table. Anchor rows show their delta against the baseline of the same
variant, else against --baseline (a sweep's variants usually share one baseline run).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from bireco import CATEGORIES as PAPER_CATEGORIES

CATEGORIES = (*PAPER_CATEGORIES, "Average")


def collect(root: Path) -> dict[tuple[str, str], dict[str, dict]]:
    """{(experiment, variant): {run_name: summary}} from <root>/<experiment>/<variant>/<run>/eval/summary.json."""
    out: dict[tuple[str, str], dict[str, dict]] = {}
    for f in sorted(root.glob("*/*/*/eval/summary.json")):
        run_dir = f.parent.parent
        exp, variant, run = run_dir.parent.parent.name, run_dir.parent.name, run_dir.name
        out.setdefault((exp, variant), {})[run] = json.loads(f.read_text())
    return out


def rows(found: dict, baseline: str | None = None) -> tuple[list[str], list[list[str]]]:
    cols = [
        c for c in CATEGORIES if any(c in s["categories"] for runs in found.values() for s in runs.values())
    ]
    shared = None
    if baseline is not None:
        key = tuple(baseline.strip("/").split("/", 1))
        shared = found.get(key, {}).get("baseline") if len(key) == 2 else None
        if shared is None:
            have = sorted(f"{e}/{v}" for (e, v), runs in found.items() if "baseline" in runs)
            raise SystemExit(
                f"--baseline {baseline}: no baseline/eval/summary.json there (baselines: {', '.join(have) or 'none'})"
            )
    table = []
    for (exp, variant), runs in found.items():
        base, anchor = runs.get("baseline"), runs.get("stage2")
        base = base or shared
        for label, s in (
            ("Stage I only", runs.get("stage1")),
            ("Baseline", runs.get("baseline")),
            ("Anchor", anchor),
        ):
            if s is None:
                continue
            cells = []
            for c in cols:
                v = s["categories"].get(c)
                if v is None:
                    cells.append("—")
                elif label == "Anchor" and base is not None and c in base["categories"]:
                    cells.append(f"{v:.2f} ({v - base['categories'][c]:+.2f})")
                else:
                    cells.append(f"{v:.2f}")
            table.append([f"{exp}/{variant}", label, *cells])
    return cols, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--baseline",
        default=None,
        help="EXPERIMENT/VARIANT whose baseline the Anchor rows without their own compare to",
    )
    args = ap.parse_args()
    found = collect(args.root)
    if not found:
        raise SystemExit(
            f"no */*/*/eval/summary.json under {args.root}; run `make eval` on your checkpoints first"
        )
    cols, table = rows(found, args.baseline)
    out = args.out or args.root
    out.mkdir(parents=True, exist_ok=True)
    header = ["model", "setting", *cols]
    md = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in table
    ]
    (out / "table.md").write_text("\n".join(md) + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *table])
    _plot(table, cols, out / "table.png")
    print("\n".join(md))


def _plot(table: list[list[str]], cols: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    avg = cols.index("Average")
    labels = [f"{r[0]}\n{r[1]}" for r in table]
    values = [float(r[2 + avg].split()[0]) for r in table]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(values)), 3.5), dpi=120)
    colors = {"Baseline": "tab:gray", "Stage I only": "tab:orange"}
    ax.bar(range(len(values)), values, color=[colors.get(r[1], "tab:blue") for r in table])
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("Average (x100)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
