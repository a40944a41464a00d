"""Compose a config in Python exactly as the command line would (`python -m bireco.train k=v ...`): the one way the
demo, the studies and the tests build a config."""

from __future__ import annotations

from omegaconf import DictConfig

from bireco.config.schema import register_configs
from bireco.core.paths import CONF_DIR


def compose(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """`config_name` (train, eval, export, inspect) with these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides or []))


def compose_train(overrides: list[str] | None = None) -> DictConfig:
    """The `train` config with these overrides (what `python -m bireco.train ...` would run)."""
    return compose(overrides, "train")
