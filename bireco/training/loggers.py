"""A CSV logger whose history survives a resume.

Lightning's CSV writer deletes an existing metrics.csv when a new process starts writing to the same directory,
so a resumed run would lose every row logged before the crash. This writer appends instead (the first flush
re-writes the file with the union of old and new columns, keeping the old rows); train.run trims rows past the
checkpoint first, so each step appears once.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(
            self.metrics_file_path
        ):  # old columns stay in the header, so old rows keep their values
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def _check_log_dir_exists(self) -> None:  # the parent deletes metrics.csv here
        return None


class AppendingCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
