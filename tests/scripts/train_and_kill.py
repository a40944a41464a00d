"""Run `bireco.train` and SIGKILL the process mid-run: used by tests/integration/training/test_reliability.py.

    python tests/scripts/train_and_kill.py after-step K  -- <hydra overrides>   # kill after optimizer step K
    python tests/scripts/train_and_kill.py during-save K -- <hydra overrides>   # kill halfway through writing
                                                                                # the checkpoint of step K
SIGKILL gives the process no chance to clean up, like an OOM-killer or a lost node.
"""

from __future__ import annotations

import os
import signal
import sys

import lightning as L

import bireco.training.callbacks
from bireco import train


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillAfterStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            die()


def kill_during_save(step: int) -> None:
    """Let the checkpoint write of optimizer step `step` put half its bytes on disk (into the file it writes), then
    die."""
    import io

    import torch

    state = {"trainer": None}
    save = torch.save

    def half_write_then_die(obj, f, *args, **kwargs):
        trainer = state["trainer"]
        if (
            trainer is not None
            and trainer.global_step >= step
            and isinstance(obj, dict)
            and "state_dict" in obj
        ):
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            with open(f, "wb") as out:
                out.write(buffer.getbuffer()[: len(buffer.getbuffer()) // 2])
                out.flush()
            die()
        return save(obj, f, *args, **kwargs)

    torch.save = half_write_then_die

    class Remember(L.Callback):
        def on_train_start(self, trainer, pl_module):
            state["trainer"] = trainer

    return Remember()


def main() -> None:
    mode, step, sep, *overrides = sys.argv[1:]
    assert sep == "--" and mode in ("after-step", "during-save"), __doc__
    extra = KillAfterStep(int(step)) if mode == "after-step" else kill_during_save(int(step))
    build = bireco.training.callbacks.build_callbacks
    bireco.training.callbacks.build_callbacks = lambda *args, **kwargs: [*build(*args, **kwargs), extra]
    sys.argv = [sys.argv[0], *overrides]
    train.main()


if __name__ == "__main__":
    main()
