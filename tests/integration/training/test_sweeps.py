"""Hydra sweeps: one run directory per job, Stage II pairs with the Stage I of its own variant, every experiment preset
composes with every stage, and the ablation presets run both stages."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, subprocess_env
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from safetensors.torch import load_file

from bireco.config.validate import validate
from bireco.core.paths import CONF_DIR
from bireco.training.sweep import job_variant

# the tiny CPU model in place of a preset's GPU settings (what a user smoke-tests a sweep with)
TINY = ["model=tiny_llama", "size=tiny", "data=wordnet", "trainer=cpu", "trainer.devices=1", "trainer.precision=32-true",
        "trainer.accumulate_grad_batches=1", "model.dtype=float32", "model.gradient_checkpointing=false",
        "data.global_batch_size=4", "data.max_query_length=48", "data.max_doc_length=24", "data.max_train_records=64",
        "trainer.enable_progress_bar=false", "stage.optim.warmup_steps=0"]  # fmt: skip


def multirun(out: Path, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "bireco.train", "-m", f"output_root={out}", *TINY, *overrides]
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def weights(run: Path) -> torch.Tensor:
    return load_file(str(run / "final" / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]


def test_job_variant_from_overrides():
    # plain sweep: the job's own overrides, sorted; the stage selector and bookkeeping are not part of the name
    assert job_variant(
        "default", ["stage=reconstruction", "stage.alpha=0.5", "trainer.max_steps=2", "output_root=/x"]
    ) == ("stage.alpha=0.5,trainer.max_steps=2")
    # a preset's readable name stays; its own sweep key is not repeated, other overrides are appended
    assert job_variant("alpha0.2", ["ablation.alpha=0.2", "seed=1"], ["ablation.alpha"]) == "alpha0.2,seed=1"
    assert job_variant("alpha0.2", ["ablation.alpha=0.2"], ["ablation.alpha"]) == "alpha0.2"
    # a path stays one directory name, and a long name stays under the file system's limit, still unique
    assert job_variant("default", ["model.name_or_path=/m/x"]) == "model.name_or_path=%2Fm%2Fx"
    long = [
        job_variant("default", [f"data.fields.f{i}=v{i}" for i in range(40)] + [f"seed={s}"]) for s in (1, 2)
    ]
    assert len(set(long)) == 2 and all(len(n) <= 150 for n in long)


def test_every_experiment_preset_composes_with_every_stage():
    presets = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
    stages = sorted(p.stem for p in (Path(CONF_DIR) / "stage").glob("*.yaml"))
    assert {"ablation_alpha", "ablation_direction", "ablation_compute"} <= set(presets)
    for preset in presets:
        for stage in stages:
            cfg = compose_cfg([f"experiment={preset}", f"stage={stage}", "data.path=/data/echo-data"])
            validate(cfg)
            assert cfg.run_dir.endswith(f"{cfg.variant}/{cfg.stage.run_name}")


def test_ablation_alpha_reaches_stage1_and_typos_fail():
    cfg = compose_cfg(
        ["experiment=ablation_alpha", "stage=reconstruction", "ablation.alpha=0.5", "data.path=/d"]
    )
    assert cfg.stage.alpha == 0.5 and cfg.variant == "alpha0.5"
    assert (
        compose_cfg(["stage=reconstruction"]).stage.alpha == 0.2
    )  # the paper's default when no sweep sets it
    assert (
        compose_cfg(["stage=reconstruction", "ablation.alpha=0.5", "stage.alpha=0.8"]).stage.alpha == 0.8
    )  # explicit wins
    with pytest.raises(ConfigCompositionException, match="alhpa"):
        compose_cfg(["ablation.alhpa=0.5"])


def stage1_runs(root: Path) -> dict[float, Path]:
    """alpha -> Stage I run directory, for every Stage I under an experiment directory."""
    runs = {OmegaConf.load(c).stage.alpha: c.parent for c in root.glob("*/stage1/config.yaml")}
    assert len(runs) == len(list(root.glob("*/stage1/config.yaml"))), "two jobs shared an alpha"
    return runs


@pytest.mark.slow
def test_multirun_jobs_get_their_own_run_dirs_and_stage2_finds_its_stage1(tmp_path):
    out = tmp_path / "out"
    multirun(
        out, "stage=reconstruction", "ablation.alpha=0.0,1.0", "trainer.max_steps=2", "stage.optim.lr=1e-2"
    )
    s1 = stage1_runs(out / "default")
    assert sorted(s1) == [0.0, 1.0] and all(len(r.parent.name) <= 150 for r in s1.values())
    assert not torch.equal(weights(s1[0.0]), weights(s1[1.0])), "the second job overwrote the first"
    multirun(
        out, "stage=contrastive", "ablation.alpha=0.0,1.0", "trainer.max_steps=1", "stage.lora.enabled=false"
    )
    started = {}
    for c in (out / "default").glob("*/stage2/config.yaml"):
        summary = json.loads((c.parent / "final" / "train_summary.json").read_text())
        started[OmegaConf.load(c).ablation.alpha] = Path(summary["init_from"])
    assert started == {a: run / "final" for a, run in s1.items()}
    # the README's plain Stage I sweep (no TINY overrides: the tiny model is the default): one directory per value
    cmd = [sys.executable, "-m", "bireco.train", "-m", f"output_root={out}", "experiment_name=plain", "stage=reconstruction",
           "stage.alpha=0.2,0.5", "trainer.max_steps=1", "data.global_batch_size=4", "data.max_train_records=32"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.parent.parent.name for p in (out / "plain").glob("*/stage1/config.yaml")) == [
        "data.global_batch_size=4,data.max_train_records=32,stage.alpha=0.2,trainer.max_steps=1",
        "data.global_batch_size=4,data.max_train_records=32,stage.alpha=0.5,trainer.max_steps=1"]  # fmt: skip


@pytest.mark.parametrize(
    "preset,values",
    [
        pytest.param("ablation_alpha", (0.2, 0.5, 0.8), marks=pytest.mark.slow),
        # slow too: make test hit 12 min 39 s; the multirun test above keeps a 2-job sweep feeding Stage II in CI
        pytest.param("ablation_direction", (0.0, 1.0), marks=pytest.mark.slow),
    ],
)
def test_ablation_presets_run_both_stages(tmp_path, preset, values):
    """The README's commands, on the tiny model: Stage I then Stage II of every swept value, one step each."""
    out = tmp_path / "out"
    for stage in ("reconstruction", "contrastive"):
        multirun(out, f"experiment={preset}", f"stage={stage}", "trainer.max_steps=1")
    s1 = stage1_runs(out / preset)
    assert sorted(s1) == list(values) and all(r.parent.name.startswith(f"alpha{a},") for a, r in s1.items())
    for run in s1.values():
        summary = json.loads((run.parent / "stage2" / "final" / "train_summary.json").read_text())
        assert Path(summary["init_from"]) == run / "final" and summary["steps"] == 1
