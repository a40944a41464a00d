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
from hydra import compose, initialize_config_dir  # noqa: E402

from bireco.backbone import Backbone  # noqa: E402
from bireco.cli import CONF_DIR  # noqa: E402
from bireco.config import register_configs  # noqa: E402

register_configs()


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
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name, overrides=list(overrides or []), return_hydra_config=False)


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
    from bireco.text_format import encode_side, pad_sides

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
    from bireco.pretrain import pretrain_tiny_lm

    return pretrain_tiny_lm(steps=400, progress=False)
