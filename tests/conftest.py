"""Shared fixtures: tiny models built from the shipped configs, no network, deepcopy per test."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from bireco.config.compose import compose  # noqa: E402
from bireco.model.backbone import Backbone  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for entry points run as subprocesses (offline settings above, the repo importable)."""
    return {**os.environ, "PYTHONPATH": ROOT, **extra}


def logged_losses(run_dir) -> dict[int, float]:
    """step -> train/loss from a run's logs/metrics.csv."""
    import csv

    with open(os.path.join(run_dir, "logs", "metrics.csv"), newline="") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def compose_cfg(overrides: list[str] | None = None, config_name: str = "train"):
    return compose(overrides, config_name)


def stage1_module(backbone, optim=None, lr_horizon: int = 10, on_nonfinite: str = "raise", decoder_backbone=None,
                  **stage):  # fmt: skip
    """A Stage I module from its typed config (`stage` fields, `optim` an OptimConfig): the paper's, or the controls'
    subclass where a field asks for a control or a frozen decoder (`decoder_backbone`: its weights)."""
    from bireco.config.schema import OptimConfig, ReconstructionStageConfig
    from bireco.stages.reconstruction import ReconstructionModule
    from bireco.stages.reconstruction_controls import ControlledReconstructionModule, is_paper

    cfg = ReconstructionStageConfig(optim=optim or OptimConfig(), **stage)
    if is_paper(cfg):
        return ReconstructionModule(backbone, cfg, lr_horizon, on_nonfinite)
    return ControlledReconstructionModule(backbone, cfg, lr_horizon, on_nonfinite, decoder_backbone)


def stage2_module(backbone, optim=None, lr_horizon: int = 10, on_nonfinite: str = "raise", **stage):
    """A Stage II module from its typed config (`stage` fields, `optim` an OptimConfig)."""
    from bireco.config.schema import ContrastiveStageConfig, OptimConfig
    from bireco.stages.contrastive import ContrastiveModule

    return ContrastiveModule(backbone, ContrastiveStageConfig(optim=optim or OptimConfig(lr=2e-4), **stage),
                             lr_horizon, on_nonfinite)  # fmt: skip


def experiment(relpath: str):
    """A script under experiments/ as a module, loaded from its file (the studies are scripts, not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(ROOT) / "experiments" / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    # as `python experiments/<study>/<script>.py` runs it: the script's folder first on the path (its siblings)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


@pytest.fixture
def cfg_factory(tmp_path):
    def make(*overrides: str):
        return compose_cfg(
            [f"output_root={tmp_path / 'out'}", "trainer.enable_progress_bar=false", *overrides]
        )

    return make


@pytest.fixture(scope="session")
def _tiny_backbones():
    out = {}
    for family in ("tiny_llama", "tiny_qwen2", "tiny_mistral"):
        cfg = compose_cfg([f"model={family}"])
        torch.manual_seed(0)
        out[family] = Backbone.from_config(cfg.model)
    return out


@pytest.fixture
def backbone(_tiny_backbones):
    """A fresh copy of the random-init tiny Llama backbone (fp32)."""
    return copy.deepcopy(_tiny_backbones["tiny_llama"])


@pytest.fixture
def backbones(_tiny_backbones):
    return {k: copy.deepcopy(v) for k, v in _tiny_backbones.items()}


def make_side(backbone, texts, instruction=None, padding_side="left", max_length=32):
    from bireco.model.text_format import encode_side, pad_sides

    sides = [encode_side(backbone.tokenizer, backbone.text_format, t, max_length, instruction) for t in texts]
    return pad_sides(sides, backbone.pad_id, padding_side)


TEXTS = [
    "a domesticated carnivorous mammal",
    "dog",
    "the act of running quickly over a long distance in the rain",
    "red",
]


@pytest.fixture(scope="session")
def pretrained_lm():
    """The demo's tiny base LM (hidden 128, 4 layers), briefly pretrained on WordNet text; cached across runs."""
    from bireco.tools.tiny_lm import pretrain_tiny_lm

    return pretrain_tiny_lm(steps=400, progress=False)


# ---------------------------------------------------------------- groups: unit/<layer>, integration/<layer>
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def group_of(path) -> str:
    """`unit/model`, `integration/training`, ...: the test file's folders under tests/."""
    rel = os.path.relpath(str(path), TESTS_DIR).split(os.sep)
    return "/".join(rel[:2]) if len(rel) > 2 else rel[0]


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration/ is marked `integration` (`-m "not integration"` runs the unit tests); a
    test in tests/unit/ that trains or starts a subprocess carries the marker itself. A `gpu` test is skipped where
    no CUDA device is."""
    no_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if group_of(item.path).startswith("integration"):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(no_gpu)


_group_seconds: dict[str, float] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    import time

    start = time.perf_counter()
    yield
    group = group_of(item.path)
    if group.startswith("unit") and item.get_closest_marker("integration"):
        group += " (marked integration)"
    _group_seconds[group] = _group_seconds.get(group, 0.0) + time.perf_counter() - start


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Where `make test`'s time goes, per group of tests (setup and teardown included)."""
    if not _group_seconds:
        return
    terminalreporter.section("time per test group")
    for group, seconds in sorted(_group_seconds.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:8.1f} s  {group}")
    terminalreporter.write_line(f"{sum(_group_seconds.values()):8.1f} s  in all")
