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

from bireco.training.run import run

ROOT = Path(__file__).resolve().parents[3]
STEPS = 6

# slow (make test-full): joint has alternate's normalisation; lora-hardneg's overrides are a subset of gradcache's,
# which runs the same LoRA + hard-negative gather across ranks in chunks (make test hit 12 min 39 s with all four)
SLOW_CASES = {
    "stage1-joint",
    "stage2-lora-hardneg",
    "stage2-gradcache",
}  # make test-full; the fast suite keeps one DDP case a stage family
CASES = {
    "stage1-alternate": ["stage=reconstruction", "stage.schedule=alternate", "stage.alpha=0.5"],
    "stage1-joint": ["stage=reconstruction", "stage.schedule=joint"],  # slow: same normalisation as alternate
    # dropout 0: ranks draw different dropout masks than one process would
    "stage2-lora-hardneg": ["stage=baseline", "stage.lora.dropout=0", "data.num_hard_negatives=1", "stage.optim.warmup_steps=1"],
    "stage2-gradcache": ["stage=baseline", "stage.lora.dropout=0", "data.num_hard_negatives=1", "stage.optim.warmup_steps=1",
                         "stage.grad_cache_chunk_size=2"],
}  # fmt: skip


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES]
)
def test_ddp_two_processes_match_one_process_loss_curve(tmp_path, case):
    common = [
        f"output_root={tmp_path / 'out'}", "trainer.enable_progress_bar=false", f"trainer.max_steps={STEPS}",
        "trainer.log_every_n_steps=1", "data.global_batch_size=8", "data.max_train_records=96", *CASES[case],
        "trainer.precision=32-true",  # the equivalence is exact math; bf16 (trainer=cpu's auto on bf16 CPUs) differs by ~1e-3
    ]  # fmt: skip
    ddp_dir = assert_ddp_matches_one_process(common, STEPS)
    assert (ddp_dir / "final" / "bireco.json").is_file()  # rank 0 exported one HF directory


def run_ddp(args: list[str], timeout: int = 600) -> None:
    """`python -m bireco.train trainer=ddp_cpu ...` in a subprocess (Lightning DDP must not re-run pytest)."""
    env = subprocess_env(OMP_NUM_THREADS="1")
    env.pop("MASTER_PORT", None)
    proc = subprocess.run([sys.executable, "-m", "bireco.train", "trainer=ddp_cpu", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]


def assert_ddp_matches_one_process(common: list[str], steps: int, timeout: int = 600) -> Path:
    """Train once in this process and once as 2 gloo processes; the logged loss curves agree to 1e-4."""
    single = compose_cfg(common + ["variant=single"])
    run(single)
    run_ddp(["variant=ddp", *common], timeout)
    ddp_dir = Path(compose_cfg(common + ["variant=ddp", "trainer=ddp_cpu"]).run_dir)
    ref, got = logged_losses(Path(single.run_dir)), logged_losses(ddp_dir)
    assert sorted(ref) == sorted(got) == list(range(steps))
    for step in range(steps):
        assert got[step] == pytest.approx(ref[step], abs=1e-4), (step, got, ref)
    return ddp_dir


def test_ddp_with_hard_negatives_on_one_rank_only_matches_one_process(tmp_path):
    """Records with a hard negative sit only in rank 0's half of every global batch: rank 1 holds none, and must
    still issue the same collectives (else a hang, or a gather that pairs the wrong tensors)."""
    import json

    from bireco.data import wordnet
    from bireco.data.instructions import load_table
    from bireco.data.samplers import PairBatchSampler

    records = [r for r in wordnet.pair_records("train") if r["negatives"]][:32]
    sampler = PairBatchSampler(["pairs"] * len(records), 4, rank=0, world_size=2, seed=42)
    rank0 = {int(i) for block in sampler._blocks() for i in block[:2]}
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as f:
        for i, r in enumerate(records):
            row = {
                "query": r["query"],
                "positive": r["positive"],
                "instruction": load_table("wordnet")[r["dataset"]],
            }
            f.write(json.dumps({**row, "negatives": r["negatives"][:1] if i in rank0 else []}) + "\n")
    common = [
        f"output_root={tmp_path / 'out'}", "trainer.enable_progress_bar=false", "trainer.max_steps=4",
        "trainer.log_every_n_steps=1", "data=jsonl", f"data.path={path}", "data.global_batch_size=4",
        "data.max_query_length=64", "data.max_doc_length=48", "stage=baseline", "stage.lora.dropout=0",
        "stage.optim.warmup_steps=1", "trainer.precision=32-true",
    ]  # fmt: skip
    assert_ddp_matches_one_process(common, 4, timeout=300)


@pytest.mark.slow
def test_ddp_stage2_full_fine_tuning_of_an_untied_head_model(tmp_path):
    """Stage II never uses the LM head: with untied weights DDP would stop on an unused parameter. Tied heads (the
    embeddings) stay trainable."""
    from bireco.training.builders import build_backbone, build_module

    common = [
        f"output_root={tmp_path / 'out'}", "trainer.enable_progress_bar=false", "trainer.max_steps=2",
        "data.global_batch_size=4", "data.max_train_records=32", "stage=baseline", "stage.lora.enabled=false",
        "model.architecture.tie_word_embeddings=false", "trainer.precision=32-true",
    ]  # fmt: skip
    run_ddp(common, timeout=300)
    assert (Path(compose_cfg(common + ["trainer=ddp_cpu"]).run_dir) / "final" / "bireco.json").is_file()
    for tied in (False, True):
        cfg = compose_cfg([*common, f"model.architecture.tie_word_embeddings={str(tied).lower()}"])
        module = build_module(cfg, build_backbone(cfg), batches_per_epoch=8)
        assert module.backbone.lm_head.weight.requires_grad == tied
