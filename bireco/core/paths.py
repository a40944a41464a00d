"""Where bireco's files are: the Hydra configs, the shipped assets, the cache. Imports nothing from bireco.

The configs live in the repository's top-level `conf/`; a wheel ships them inside the package as `bireco/conf`
(pyproject maps the folder), so both an installed and a source checkout find them here.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def conf_dir() -> Path:
    """The Hydra config directory: `bireco/conf` in a wheel, else `conf/` beside the package in a checkout."""
    shipped = PACKAGE_DIR / "conf"
    return shipped if shipped.is_dir() else PACKAGE_DIR.parent / "conf"


CONF_DIR = str(conf_dir())
ASSETS_DIR = PACKAGE_DIR / "assets"


def asset_path(name: str) -> str:
    """A shipped asset (tokenizer, pair sets) by its folder name under bireco/assets."""
    return str(ASSETS_DIR / name)


def cache_root() -> Path:
    """The one bireco cache ($BIRECO_CACHE, default ~/.cache/bireco): the tiny LM, converted offline LMs."""
    return Path(os.environ.get("BIRECO_CACHE", Path.home() / ".cache" / "bireco"))
