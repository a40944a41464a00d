"""What a training run tells its user while it runs and when it ends.

On a terminal: one bar counting optimizer steps to trainer.max_steps (Lightning's shows batches of an endless
epoch: `Epoch 0/-2`, no ETA) with the loss, no `v_num`. Anywhere else (nohup, SLURM, tee, a notebook's captured
output): a plain line every trainer.log_every_n_steps steps with step/max, loss, tokens/s, elapsed time and ETA.
At the end `summary_lines` says what came out and where it lies.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from bireco.core.runs import final_dir, metrics_csv, wandb_id_file

log = logging.getLogger("bireco")


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _metric(trainer: L.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


class StepProgressBar(TQDMProgressBar):
    """Optimizer steps of the run (resumed runs start where they left off), named by the run (stage1, stage2...)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def on_train_epoch_start(self, trainer, *_):
        if self.train_progress_bar.total != trainer.max_steps:  # one bar for the whole run, not one per epoch
            self.train_progress_bar.reset(total=trainer.max_steps)
            self._show_step(trainer.global_step)
        self.train_progress_bar.set_description(self.name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.train_progress_bar is not None and self._should_update(
            trainer.global_step, trainer.max_steps
        ):
            self._show_step(trainer.global_step)
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def _show_step(self, step: int) -> None:
        bar = self.train_progress_bar  # a tqdm bar: its public position and redraw
        if not bar.disable:
            bar.n = step
            bar.refresh()

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class ProgressLog(L.Callback):
    """A plain-text progress line every `every` optimizer steps (and at the last), on rank 0."""

    def __init__(self, name: str, every: int):
        self.name, self.every = name, max(1, every)
        self._t0: float | None = None
        self._start_step = 0
        self._last = -1

    def on_train_start(self, trainer, pl_module):
        self._t0, self._start_step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if (
            not trainer.is_global_zero
            or step == self._last
            or (step % self.every and step != trainer.max_steps)
        ):
            return
        self._last = step
        elapsed = time.perf_counter() - self._t0
        done = step - self._start_step
        eta = elapsed / done * (trainer.max_steps - step) if done else float("nan")
        parts = [f"{self.name} step {step}/{trainer.max_steps} ({100 * step / trainer.max_steps:.0f}%)"]
        loss, tokens = _metric(trainer, "train/loss"), _metric(trainer, "train/tokens_per_s")
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if tokens is not None:
            parts.append(f"{tokens:,.0f} tokens/s")
        parts.append(f"elapsed {duration(elapsed)}" + (f", ETA {duration(eta)}" if done else ""))
        log.info(" | ".join(parts))


def progress_callbacks(name: str, every: int, bar: bool) -> tuple[list, bool]:
    """(callbacks, whether Lightning shows a bar): the step bar on a terminal, plain lines elsewhere."""
    if bar and sys.stderr.isatty():
        return [StepProgressBar(name)], True
    return [ProgressLog(name, every)], False


def summary_lines(run_dir: Path, seconds: float, steps: int, metrics: dict[str, float]) -> list[str]:
    """The end of a run: time, last losses (and the anchor probe), and where every output went."""
    losses = ", ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in sorted(metrics.items())
                       if k.startswith("train/loss") or k.startswith("probe/anchor_gain"))  # fmt: skip
    lines = [f"finished {steps} steps in {duration(seconds)}" + (f": {losses}" if losses else ""),
             f"model:   {final_dir(run_dir)}", f"metrics: {metrics_csv(run_dir)} "
             f"(plot: python -m bireco.plot {run_dir})"]  # fmt: skip
    wandb_id = wandb_id_file(run_dir)
    if wandb_id.is_file():
        lines.append(f"wandb:   run {wandb_id.read_text().strip()} (files under {run_dir / 'wandb'})")
    return lines
