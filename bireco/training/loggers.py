"""logs/metrics.csv, a small Lightning logger whose history survives a resume.

Lightning's CSV logger deletes an existing metrics.csv when a new process starts writing to the same directory, so a
resumed run would lose every row logged before the crash. This one appends to the file the run already has (its old
columns kept; when new columns appear the file is rewritten, atomically, with the union as its header); train.run
trims rows past the checkpoint first, so each step appears once. Rows are flushed every `flush_every` steps and
whenever Lightning saves (before every checkpoint).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from bireco.core.files import atomic_path


class MetricsCSVLogger(Logger):
    def __init__(self, path: str | Path, flush_every: int = 10):
        super().__init__()
        self.path, self.flush_every = Path(path), max(1, flush_every)
        self.rows: list[dict[str, Any]] = []
        self.keys: list[str] = []
        if (
            self.path.is_file()
        ):  # a resumed run: its columns stay in the header, so old rows keep their values
            with self.path.open(newline="") as f:
                self.keys = sorted(next(csv.reader(f), []))

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> int:
        return 0

    @property
    def save_dir(self) -> str:
        return str(self.path.parent.parent)  # the run directory

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Nothing: the run's resolved config is its config.yaml."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        step = len(self.rows) if step is None else step
        self.rows.append(
            {**{k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}, "step": step}
        )
        if (step + 1) % self.flush_every == 0:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        if not self.rows:
            return
        new = set().union(*self.rows) - set(self.keys)
        exists = self.path.is_file()
        if new or not exists:
            self.keys = sorted({*self.keys, *new})
            old = list(csv.DictReader(self.path.open(newline=""))) if exists else []
            with atomic_path(self.path) as tmp, tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.keys)
                writer.writeheader()
                writer.writerows(old + self.rows)
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.keys).writerows(self.rows)
        self.rows = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
