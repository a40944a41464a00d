"""Crash safety: exact resume after SIGKILL, atomic checkpoints, the non-finite guard, determinism.

Crashes are real: a subprocess running the training entry point is SIGKILLed (tests/scripts/train_and_kill.py),
then the run is resumed with resume=auto and compared with an uninterrupted run of the same config.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, logged_losses, subprocess_env
from safetensors.torch import load_file

from bireco.core.runs import checkpoint_step
from bireco.training.run import run

ROOT = Path(__file__).resolve().parents[3]
KILL = ROOT / "tests" / "scripts" / "train_and_kill.py"

STAGE1 = [
    "stage=reconstruction",
    "stage.schedule=alternate",
    "stage.alpha=0.5",
]  # the direction counter is resumed too
# LoRA with dropout: exact resume needs the RNG streams restored, not only weights and optimizer.
STAGE2_LORA = [
    "stage=baseline",
    "stage.lora.dropout=0.1",
    "data.num_hard_negatives=1",
    "stage.optim.warmup_steps=2",
]


def common(tmp_path: Path) -> list[str]:
    return [
        f"output_root={tmp_path / 'out'}",
        "trainer.enable_progress_bar=false",
        "trainer.max_steps=8",
        "trainer.checkpoint_every_n_steps=3",
        "trainer.log_every_n_steps=1",
        "data.global_batch_size=4",
        "data.max_train_records=64",  # 16 batches: the kill lands mid-epoch
    ]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(next((run_dir / "final").glob("*.safetensors")))


def kill(mode: str, step: int, overrides: list[str], **env_extra: str) -> subprocess.CompletedProcess:
    env = subprocess_env(**env_extra)
    return subprocess.run(
        [sys.executable, str(KILL), mode, str(step), "--", *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize(
    "stage",
    [STAGE1, pytest.param(STAGE2_LORA, marks=pytest.mark.slow)],
    ids=["stage1-full", "stage2-lora-dropout"],
)
def test_sigkill_mid_epoch_then_resume_auto_is_exact(tmp_path, stage):

    base = common(tmp_path) + stage
    reference = compose_cfg(base + ["variant=uninterrupted"])
    run(reference)

    crashed = base + ["variant=crashed"]
    proc = kill("after-step", 5, crashed)
    assert proc.returncode == -9, proc.stderr[
        -3000:
    ]  # SIGKILL, after the step-3 checkpoint and two more steps
    cfg = compose_cfg(crashed + ["resume=auto"])
    run_dir = Path(cfg.run_dir)
    assert checkpoint_step(str(run_dir / "checkpoints" / "last.ckpt")) == 3
    assert not (run_dir / "final").exists()
    run(cfg)

    ref_dir = Path(reference.run_dir)
    ref_w, res_w = weights(ref_dir), weights(run_dir)
    assert ref_w.keys() == res_w.keys()
    for k in ref_w:
        torch.testing.assert_close(res_w[k], ref_w[k], rtol=0, atol=1e-6, msg=k)
    ref_l, res_l = logged_losses(ref_dir), logged_losses(run_dir)
    assert sorted(res_l) == list(range(8))  # rows of the lost steps 4-5 were dropped, then relogged once
    for step in range(3, 8):
        assert res_l[step] == pytest.approx(ref_l[step], abs=1e-6), step


def test_kill_during_checkpoint_write_leaves_a_loadable_last(tmp_path):
    """...and the partial file lies in the run's checkpoints/ (the next run removes it), not in the system temp
    dir, where Lightning's own writer left a model-sized file."""
    overrides = common(tmp_path) + STAGE1 + ["variant=killed_saving"]
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    proc = kill(
        "during-save", 6, overrides, TMPDIR=str(system_tmp)
    )  # half of step 6's checkpoint, then SIGKILL
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert [p for p in system_tmp.rglob("*") if p.stat().st_size > 10_000] == []

    cfg = compose_cfg(overrides + ["resume=auto"])
    (partial,) = (Path(cfg.run_dir) / "checkpoints").glob("last.ckpt.tmp-*")
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # the step-3 checkpoint, intact
    assert ckpt["global_step"] == 3 and "optimizer_states" in ckpt and "bireco_rng" in ckpt
    run(cfg)
    assert (Path(cfg.run_dir) / "final" / "bireco.json").is_file() and not partial.exists()


def test_same_seed_same_loss_curve(cfg_factory):
    curves = []
    for variant in ("a", "b"):
        cfg = cfg_factory(
            "stage=reconstruction", "trainer.max_steps=5", "trainer.log_every_n_steps=1", f"variant={variant}"
        )
        run(cfg)
        curves.append(logged_losses(Path(cfg.run_dir)))
    assert len(curves[0]) == 5 and curves[0] == curves[1]


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_nonfinite_stops_naming_step_and_dataset_and_writes_nothing(cfg_factory, monkeypatch, where):
    from bireco.stages.reconstruction import ReconstructionModule

    step_loss = ReconstructionModule.step_loss

    def poisoned(self, batch):
        loss, logs = step_loss(self, batch)
        if self.global_step == 2:
            if where == "loss":
                loss = loss * float("nan")
            else:  # finite loss, infinite gradient
                loss = loss + _inf_grad(self)
        return loss, logs

    monkeypatch.setattr(ReconstructionModule, "step_loss", poisoned)
    cfg = cfg_factory("stage=reconstruction", "trainer.max_steps=4", "trainer.checkpoint_every_n_steps=1")
    with pytest.raises(FloatingPointError) as err:
        run(cfg)
    msg = str(err.value)
    assert f"non-finite {where}" in msg and "at step 2" in msg and "wordnet" in msg
    ckpts = sorted(p.name for p in (Path(cfg.run_dir) / "checkpoints").glob("*.ckpt"))
    assert checkpoint_step(str(Path(cfg.run_dir) / "checkpoints" / "last.ckpt")) == 2, (
        ckpts
    )  # nothing after step 2
    assert not (Path(cfg.run_dir) / "final").exists()


def _inf_grad(module) -> torch.Tensor:
    """A term with value 0 whose gradient is +inf: sqrt at 0."""
    w = module.backbone.model.get_input_embeddings().weight
    return (w[0, 0] - w[0, 0].detach()).abs().sqrt()


def test_nonfinite_skip_counts_and_leaves_weights_untouched(cfg_factory, monkeypatch):
    from bireco.stages.reconstruction import ReconstructionModule

    step_loss = ReconstructionModule.step_loss
    snapshots = {}

    def poisoned(self, batch):
        if self.global_step in (2, 3):
            snapshots[self.global_step] = {
                k: v.detach().clone() for k, v in self.backbone.state_dict().items()
            }
        loss, logs = step_loss(self, batch)
        return (loss * float("nan") if self.global_step == 2 else loss), logs

    monkeypatch.setattr(ReconstructionModule, "step_loss", poisoned)
    cfg = cfg_factory(
        "stage=reconstruction",
        "trainer.max_steps=4",
        "trainer.on_nonfinite=skip",
        "trainer.log_every_n_steps=1",
    )
    run(cfg)
    before, after = snapshots[2], snapshots[3]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the poisoned step changed nothing
    with (Path(cfg.run_dir) / "logs" / "metrics.csv").open(newline="") as f:
        skipped = [
            float(r["train/skipped_nonfinite"]) for r in csv.DictReader(f) if r.get("train/skipped_nonfinite")
        ]
    assert skipped == [0.0, 0.0, 1.0, 1.0]
    assert (Path(cfg.run_dir) / "final" / "bireco.json").is_file()  # the run went on and finished
