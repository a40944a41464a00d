"""On a GPU: both stages train under `trainer=gpu` (bf16 weights and compute, as the paper) with the CPU fast path off,
and the dev check runs there too. Skipped without a CUDA device (CI has none)."""

import pytest
import torch
from conftest import logged_losses

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("stage", ["reconstruction", "baseline"])
def test_a_stage_trains_on_the_gpu_in_bf16_without_the_cpu_fast_path(cfg_factory, stage):
    from bireco.cpu.fast_path import CpuFastPath
    from bireco.training.callbacks import build_callbacks
    from bireco.training.run import run

    cfg = cfg_factory("trainer=gpu", f"stage={stage}", "trainer.max_steps=4", "trainer.log_every_n_steps=1",
                      "data.global_batch_size=8", "trainer.dev_check_every_n_steps=2", "data.dev_queries=20",
                      "data.dev_corpus_size=60", "stage.optim.warmup_steps=0")  # fmt: skip
    assert not any(isinstance(c, CpuFastPath) for c in build_callbacks(cfg, cfg.run_dir))
    metrics = run(cfg)
    losses = logged_losses(cfg.run_dir)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert 0 <= metrics["val/ndcg@10"] <= 1
