"""Multi-process training through Lightning's DDP (gloo, 2 CPU processes) gives the single-process loss curve.

DDP never runs inside the pytest process (Lightning would re-launch pytest on rank 1): the 2-process run is the
real entry point, `python -m bireco.train trainer=ddp_cpu ...`, as a subprocess; the 1-process reference runs
in-process with the same global batch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_cfg, logged_losses, subprocess_env

from bireco.train import run

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6

CASES = {
    "stage1-alternate": ["stage=reconstruction", "stage.alpha=0.5"],
    "stage1-joint": ["stage=reconstruction", "stage.schedule=joint"],  # slow: same normalisation as alternate
    # dropout 0: ranks draw different dropout masks than one process would
    "stage2-lora-hardneg": ["stage=baseline", "stage.lora.dropout=0", "data.num_hard_negatives=1", "stage.optim.warmup_steps=1"],
    "stage2-gradcache": ["stage=baseline", "stage.lora.dropout=0", "data.num_hard_negatives=1", "stage.optim.warmup_steps=1",
                         "stage.grad_cache_chunk_size=2"],
}  # fmt: skip


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c == "stage1-joint" else c for c in CASES])
def test_ddp_two_processes_match_one_process_loss_curve(tmp_path, case):

    common = [
        f"output_root={tmp_path / 'out'}", "trainer.enable_progress_bar=false", f"trainer.max_steps={STEPS}",
        "trainer.log_every_n_steps=1", "data.global_batch_size=8", "data.max_train_records=96", *CASES[case],
        "trainer.precision=32-true",  # the equivalence is exact math; bf16 (trainer=cpu's auto on bf16 CPUs) differs by ~1e-3
    ]  # fmt: skip
    single = compose_cfg(common + ["variant=single"])
    run(single)
    env = subprocess_env(OMP_NUM_THREADS="1")
    env.pop("MASTER_PORT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bireco.train", "trainer=ddp_cpu", "variant=ddp", *common],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp_dir = Path(compose_cfg(common + ["variant=ddp", "trainer=ddp_cpu"]).run_dir)
    ref, got = logged_losses(Path(single.run_dir)), logged_losses(ddp_dir)
    assert sorted(ref) == sorted(got) == list(range(STEPS))
    for step in range(STEPS):
        assert got[step] == pytest.approx(ref[step], abs=1e-4), (step, got, ref)
    assert (ddp_dir / "final" / "bireco.json").is_file()  # rank 0 exported one HF directory
