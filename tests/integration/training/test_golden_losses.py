"""Golden losses: seeded tiny runs of both stages through `bireco.training.run`, their first six losses hard-coded.

Any change to the loss maths, masking, data order, initialisation, optimizer or the CPU fast path moves these
numbers, so a refactor that is meant to change nothing shows here first. Recorded on a 2-core AMD EPYC
(AVX512-BF16, no AMX), torch 2.13.0. fp32 runs hold to a relative 1e-4 on any CPU (only the summation order of
the matrix products may differ); bf16-mixed runs (trainer=cpu's `precision: auto` on a CPU with native bf16, the
fast path included) hold to 2e-3 nats on CPUs with AVX512-BF16 and without AMX, whose bf16 kernels round as those
of the recording machine did; elsewhere they are skipped.
"""

from __future__ import annotations

import pytest
from conftest import logged_losses

COMMON = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "data.global_batch_size=8",
          "stage.optim.lr=1e-3", "stage.optim.warmup_steps=2", "trainer.max_steps=6"]  # fmt: skip
RUNS = {  # run -> its overrides (Stage II starts from the joint Stage I of the same experiment)
    "stage1": ["stage=reconstruction", "stage.probe.every_n_steps=0"],
    "stage1_alternate": [
        "stage=reconstruction",
        "stage.schedule=alternate",
        "stage.probe.every_n_steps=0",
        "variant=alternate",
    ],  # fmt: skip
    "stage2": ["stage=contrastive"],
}
GOLDEN = {
    "32-true": {
        "stage1": [
            8.361958503723145,
            8.283330917358398,
            8.257521629333496,
            8.169085502624512,
            8.118208885192871,
            8.17453670501709,
        ],
        "stage1_alternate": [
            8.369413375854492,
            8.274152755737305,
            8.250597953796387,
            8.152227401733398,
            8.241387367248535,
            8.194622993469238,
        ],
        "stage2": [
            2.8687169551849365,
            2.818132162094116,
            2.7557315826416016,
            2.809706687927246,
            2.755525588989258,
            2.7495038509368896,
        ],
    },  # fmt: skip
    "auto": {
        "stage1": [
            8.362085342407227,
            8.28323745727539,
            8.257669448852539,
            8.169254302978516,
            8.11831283569336,
            8.17460823059082,
        ],
        "stage1_alternate": [
            8.369565963745117,
            8.27407169342041,
            8.250788688659668,
            8.152647972106934,
            8.24151611328125,
            8.194632530212402,
        ],
        "stage2": [
            2.888676643371582,
            2.812765598297119,
            2.7627408504486084,
            2.811933994293213,
            2.772571086883545,
            2.7617499828338623,
        ],
    },  # fmt: skip
}


def bf16_like_the_recording_machine() -> bool:
    from bireco.core.precision import cpu_has_fast_bf16

    flags = open("/proc/cpuinfo").read() if cpu_has_fast_bf16() else ""
    return "avx512_bf16" in flags and "amx_bf16" not in flags


@pytest.mark.parametrize("precision", ["32-true", "auto"])
def test_seeded_tiny_runs_give_the_golden_losses(cfg_factory, precision):
    if precision == "auto" and not bf16_like_the_recording_machine():
        pytest.skip(
            "bf16 golden losses hold on CPUs with AVX512-BF16 and without AMX (the recording machine's)"
        )
    from bireco.training.run import run

    for name, overrides in RUNS.items():
        cfg = cfg_factory(*COMMON, *overrides, f"trainer.precision={precision}")
        run(cfg)
        losses = [v for _, v in sorted(logged_losses(cfg.run_dir).items())]
        if precision == "32-true":
            assert losses == pytest.approx(GOLDEN[precision][name], rel=1e-4), name
        else:
            assert losses == pytest.approx(GOLDEN[precision][name], abs=2e-3), name
