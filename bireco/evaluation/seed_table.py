"""Seeds side by side: a markdown table with a column per seed and the mean ± sd of each row.

At toy scale a single seed says little (docs/results.md §2), so every multi-seed comparison in experiments/ reports
through these three functions, and a delta row (a run minus its control) reads the same everywhere.
"""

from __future__ import annotations

import statistics


def mean_sd(values: list[float], fmt: str = "{:.2f}") -> str:
    """`mean ± sd` of two or more values (the sample sd), the value itself for one; `fmt` formats the mean."""
    if len(values) < 2:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {statistics.stdev(values):.2f}"


def paired_difference(diffs: list[float]) -> str:
    """`+1.23 [−0.45, +2.91]`: the mean of paired differences (a run minus its control, seed by seed) and its 95%
    t-interval over the seeds; a single seed gives its difference and no interval."""
    if len(diffs) < 2:
        return f"{diffs[0]:+.2f} (one seed)"
    from scipy import stats

    m, se = statistics.mean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5
    half = float(stats.t.ppf(0.975, len(diffs) - 1)) * se
    return f"{m:+.2f} [{m - half:+.2f}, {m + half:+.2f}]"


def seed_table_head(seeds: list[int]) -> list[str]:
    return [
        "| run | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
        "|---" * (len(seeds) + 2) + "|",
    ]


def seed_row(
    label: str, values: dict[int, float], seeds: list[int], fmt: str = "{:.2f}", spread: bool = True
) -> str:
    """A cell per seed ("–" where a seed lacks the run), then the mean ± sd of the seeds it has (`fmt` formats cells
    and mean: "{:+.2f}" for a delta). `spread=False` for a run that is one model whatever the seed (a shared start):
    its value is repeated, and no sd is claimed."""
    cells = [fmt.format(values[s]) if s in values else "–" for s in seeds]
    got = list(values.values())
    summary = mean_sd(got, fmt) if spread else fmt.format(got[0])
    return f"| {label} | " + " | ".join(cells) + f" | {summary} |"
