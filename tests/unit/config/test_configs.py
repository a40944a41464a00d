import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_cfg
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from bireco.config.validate import validate
from bireco.core.errors import ConfigError
from bireco.core.paths import CONF_DIR
from bireco.stages.optim import lr_lambda
from bireco.training.builders import lr_horizon

ROOT = Path(__file__).resolve().parents[3]


def makefile_overrides() -> list[list[str]]:
    """The override sets of every Makefile target that trains or evaluates."""
    text = (ROOT / "Makefile").read_text()
    out = []
    for m in re.finditer(r"bireco\.train (.*)", text):
        args = [a for a in m.group(1).split() if "=" in a and "$" not in a]
        out.append(args)
    assert out, "Makefile has no bireco.train lines"
    return out


def test_every_config_file_is_counted():
    """Every shipped config file, counted exactly per group: a new or lost file shows here (and must be covered by
    the tests that walk each group)."""
    files = sorted(p.relative_to(CONF_DIR) for p in Path(CONF_DIR).rglob("*.yaml"))
    per_group: dict[str, int] = {}
    for p in files:
        per_group[p.parts[0] if len(p.parts) > 1 else "."] = (
            per_group.get(p.parts[0] if len(p.parts) > 1 else ".", 0) + 1
        )
    assert per_group == {".": 4, "callbacks": 5, "data": 3, "experiment": 10, "experiment_stage": 6, "hydra": 1,
                         "logger": 2, "model": 9, "model_size": 17, "size": 11, "stage": 3, "trainer": 6}, per_group  # fmt: skip
    assert len(files) == 77


@pytest.mark.parametrize("overrides", makefile_overrides())
def test_makefile_combinations_compose_and_validate(overrides):
    cfg = compose_cfg(overrides)
    validate(cfg)


def test_every_model_size_composes():
    for f in sorted((Path(CONF_DIR) / "model_size").glob("*.yaml")):
        stem = f.stem
        for family in sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml")):
            if (
                stem.startswith(family + "_")
                and (Path(CONF_DIR) / "size" / f"{stem[len(family) + 1 :]}.yaml").is_file()
            ):
                size = stem[len(family) + 1 :]
                cfg = compose_cfg([f"model={family}", f"size={size}"])
                assert cfg.model.family == family
                assert cfg.model.name_or_path or cfg.model.architecture
                assert dict(cfg.size) == {
                    "name": size
                }  # the size file's keys land at the top level (@package _global_)
                # sizes of 1B and more train with checkpointing; tiny and the CPU-sized 135m do not
                assert cfg.model.gradient_checkpointing == (size not in ("tiny", "135m"))
                validate(cfg)


def test_package_headers_are_on_the_first_line():
    """Hydra reads `# @package` only on a file's first line; anywhere else it is a comment and the keys nest."""
    for f in Path(CONF_DIR).rglob("*.yaml"):
        lines = f.read_text().splitlines()
        assert all("@package" not in line for line in lines[1:]), f


def test_missing_family_size_combination_lists_options():
    with pytest.raises(ConfigCompositionException, match="model_size/llama3_1_5b"):
        compose_cfg(["model=llama3", "size=1_5b"])


def test_wrong_type_fails_at_compose():
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["stage.alpha=abc"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["stage.alpha=1.5"], "stage.alpha=1.5 must be in"),
        (["data.global_batch_size=33", "trainer=ddp_cpu"], "not divisible by the world size 2"),
        (
            ["stage.anchor=shuffled", "data.global_batch_size=2", "trainer=ddp_cpu"],
            "stage.anchor=shuffled rolls the anchors within each device's batch",
        ),  # one pair per device: rolled by one it is its own anchor, and the "control" is the method
        (
            [
                "stage=contrastive",
                "stage.lora.enabled=false",
                "stage.grad_cache_chunk_size=8",
                "trainer=fsdp",
            ],
            "supported on one device and under ddp",
        ),
        (["trainer.strategy=fsdp"], "runs on GPUs only"),
        (["stage=contrastive", "trainer=fsdp"], "with LoRA (stage.lora.enabled=true) is not supported"),
        (["trainer=deepspeed", "trainer.deepspeed.stage=1"], "trainer.deepspeed.stage=1; valid: 2, 3"),
        (
            ["data=e5"],
            "data=e5 reads files: set data.path (a directory)",
        ),  # was a TypeError after the model loaded
        (["data=jsonl"], "data=jsonl reads files: set data.path (a file or directory)"),
    ],
)
def test_impossible_combinations_fail_before_loading(overrides, message):
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(cfg)


@pytest.mark.parametrize(
    "override,choices",
    [
        ("stage.schedule=both", "[joint, alternate]"),
        ("model.pooling=cls", "[last, mean, weighted_mean]"),
        ("stage.anchor=none", "[embedding, constant, shuffled]"),
        ("trainer.fsdp.sharding_strategy=FULL", "[FULL_SHARD, SHARD_GRAD_OP, HYBRID_SHARD, NO_SHARD]"),
        ("data.batching=random", "[homogeneous, mixed]"),
        ("trainer.on_nonfinite=ignore", "[raise, skip]"),
    ],
)
def test_a_value_outside_a_choice_fails_at_composition_with_the_choices(override, choices):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(["stage=reconstruction", override])
    assert f"expected one of {choices}" in str(err.value.__cause__)


def test_a_bad_choice_on_the_command_line_is_one_line_with_the_choices():
    r = subprocess.run([sys.executable, "-m", "bireco.train", "stage.schedule=both"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "Error: stage.schedule=both: choose one of joint, alternate" in r.stderr, r.stderr[-1500:]


def test_typo_override_names_valid_keys():
    r = subprocess.run(
        [sys.executable, "-m", "bireco.train", "stage.alhpa=0.3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode != 0
    assert "Did you mean 'stage.alpha'?" in r.stderr
    assert "Valid keys under 'stage': alpha," in r.stderr


def test_typo_group_option_lists_choices():
    r = subprocess.run(
        [sys.executable, "-m", "bireco.train", "stage=recnstruction"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "Could not find 'stage/recnstruction'" in out and "reconstruction" in out and "contrastive" in out


def test_resolved_config_has_no_missing_values():
    cfg = compose_cfg([])
    assert not OmegaConf.missing_keys(cfg)


# docs/method.md §4: (micro-step global batch = per-device x 8 GPUs, grad accumulation, steps) per stage
PAPER = {
    "paper_llama32_1b": ("llama3", "meta-llama/Llama-3.2-1B-Instruct", (256, 2), (1024, 1), (512, 1)),
    "paper_qwen25_1_5b": ("qwen2_5", "Qwen/Qwen2.5-1.5B-Instruct", (256, 4), (1024, 1), (1024, 1)),
    "paper_llama32_3b": ("llama3", "meta-llama/Llama-3.2-3B-Instruct", (128, 8), (512, 2), (512, 2)),
    "paper_llama31_8b": ("llama3", "meta-llama/Llama-3.1-8B-Instruct", (8, 64), (256, 4), (256, 4)),
    "paper_mistral_7b": ("mistral", "mistralai/Mistral-7B-Instruct-v0.2", (8, 64), (256, 4), (256, 4)),
}


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_paper_presets_match_paper_spec(preset):
    family, hub, s1, s2, base = PAPER[preset]
    for stage, (batch, accum), steps in (
        ("reconstruction", s1, 2000),
        ("contrastive", s2, 1000),
        ("baseline", base, 1000),
    ):
        cfg = compose_cfg([f"experiment={preset}", f"stage={stage}", "data.path=/data/echo-data"])
        validate(cfg)
        assert (cfg.model.family, cfg.model.name_or_path) == (family, hub)
        assert (cfg.data.global_batch_size, cfg.trainer.accumulate_grad_batches, cfg.trainer.max_steps) == (
            batch,
            accum,
            steps,
        )
        assert cfg.data.global_batch_size * cfg.trainer.accumulate_grad_batches in (512, 1024, 2048)
        assert (
            cfg.trainer.devices == 8
            and cfg.trainer.precision == "bf16-true"
            and cfg.model.dtype == "bfloat16"
        )
        assert cfg.trainer.gradient_clip_val == 1.0 and cfg.seed == 42 and cfg.data.max_doc_length == 512
        assert (
            cfg.trainer.checkpoint_every_n_steps == 250
        )  # long runs checkpoint by default (last.ckpt, resume=auto)
        assert cfg.model.gradient_checkpointing and cfg.data.format == "e5"
        assert cfg.data.max_query_length == 512 and cfg.data.num_hard_negatives == 1
        s = cfg.stage
        assert s.optim.warmup_steps == 300 and s.optim.schedule == "linear" and s.optim.weight_decay == 0.0
        # LR horizon as released: linear decay sized for 3 epochs of ~1.5 M pairs (docs/method.md §4), stopped early
        assert s.optim.schedule_epochs == 3 and s.optim.schedule_steps is None
        horizon = lr_horizon(cfg, batches_per_epoch=1_500_000 // cfg.data.global_batch_size)
        lr_at_end = lr_lambda(300, horizon, "linear")(steps)
        effective = cfg.data.global_batch_size * cfg.trainer.accumulate_grad_batches
        expected = {("reconstruction", 512): 0.80, ("reconstruction", 1024): 0.59, ("contrastive", 1024): 0.83,
                    ("baseline", 1024): 0.83, ("baseline", 512): 0.92}[(stage, effective)]  # fmt: skip
        assert lr_at_end == pytest.approx(expected, abs=0.01), (preset, stage, horizon)
        if stage == "reconstruction":
            assert (s.alpha, s.optim.lr, s.lora.enabled, s.labels) == (0.2, 4e-5, False, "paper")
            assert s.schedule == "joint"  # Algorithm 1: both directions on every batch
        else:
            assert (s.optim.lr, s.scale, s.lora.enabled, s.lora.r, s.lora.alpha, s.lora.dropout) == (
                2e-4,
                50.0,
                True,
                16,
                32,
                0.05,
            )
            assert s.init_from == ("base" if stage == "baseline" else "stage1")


@pytest.mark.parametrize(
    "preset,values", [("ablation_alpha", "0.2,0.5,0.8"), ("ablation_direction", "0.0,1.0")]
)
def test_ablation_presets_sweep_alpha_into_variants(preset, values):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"experiment={preset}", "stage=reconstruction"], return_hydra_config=True
        )
    assert cfg.hydra.sweeper.params["ablation.alpha"] == values
    first = values.split(",")[0]
    for stage, run_name in (("reconstruction", "stage1"), ("contrastive", "stage2")):
        job = compose_cfg([f"experiment={preset}", f"stage={stage}", f"ablation.alpha={first}"])
        assert job.variant == f"alpha{float(first)}" and job.run_dir.endswith(
            f"{preset}/alpha{float(first)}/{run_name}"
        )
    assert job.stage.name == "contrastive" and compose_cfg(
        [f"experiment={preset}", f"ablation.alpha={first}"]
    ).stage.alpha == float(first)


def test_all_gpus_world_size_is_read_from_the_machine(monkeypatch):
    """trainer=ddp uses devices=-1: the batch check must count the GPUs before any model loads."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(ConfigError, match="not divisible by the world size 8"):
        validate(compose_cfg(["trainer=ddp", "trainer.num_nodes=2", "data.global_batch_size=36"]))
    validate(compose_cfg(["trainer=ddp", "trainer.num_nodes=2", "data.global_batch_size=32"]))


def test_slurm_launcher_config_composes_with_the_plugin():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")  # the [slurm] extra (part of [dev])

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node  # Lightning on SLURM: one task per GPU
    assert cfg.hydra.sweep.dir == "outputs/default/multirun"  # fixed, shared by every rank of a job


def test_makefile_is_offline_only_where_the_job_is():
    """Training / evaluation / export download models and sync wandb as the user's environment allows; the tests,
    the demo and the bench set offline mode for themselves."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "WANDB_MODE")
    }

    def dry(target: str) -> str:
        r = subprocess.run(
            ["make", "-n", target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    for target in ("train-stage1", "train-stage2", "baseline", "eval"):
        assert "OFFLINE" not in dry(target) and "WANDB_MODE" not in dry(target), target
    for target in ("test", "demo", "demo-tiny", "bench"):
        assert "HF_HUB_OFFLINE=1" in dry(target) and "WANDB_MODE=offline" in dry(target), target
    assert "export HF_HUB_OFFLINE" not in (ROOT / "Makefile").read_text()


def test_lightning_passthrough_and_callbacks_group(tmp_path):
    """Any lightning.Trainer argument by name (a typo names the closest ones), and named extra callbacks."""
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor

    from bireco.training.builders import build_trainer
    from bireco.training.callbacks import build_callbacks

    cfg = compose_cfg(["callbacks=[lr_monitor,early_stopping]", "+trainer.lightning.limit_train_batches=3",
                       "+trainer.lightning.profiler=simple", f"output_root={tmp_path}"])  # fmt: skip
    validate(cfg)
    callbacks = build_callbacks(cfg, tmp_path)
    assert {type(c) for c in callbacks} >= {LearningRateMonitor, EarlyStopping}
    trainer = build_trainer(cfg, tmp_path, callbacks)
    assert trainer.limit_train_batches == 3 and type(trainer.profiler).__name__ == "SimpleProfiler"
    with pytest.raises(ConfigError, match="Did you mean fast_dev_run"):
        validate(compose_cfg(["+trainer.lightning.fast_dev_rn=1"]))
    with pytest.raises(ConfigError, match="use trainer.max_steps"):
        validate(compose_cfg(["+trainer.lightning.max_steps=5"]))
    assert compose_cfg([]).callbacks == {}
