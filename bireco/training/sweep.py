"""Run identity in Hydra sweeps: every multirun job gets its own run directory.

A run lives in `<output_root>/<experiment_name>/<variant>/<stage.run_name>`. In a multirun, the variant is built
from what the job changes (its overrides, Hydra's `override_dirname` style, sorted `key=value` joined by ","), so
`-m stage=reconstruction stage.alpha=0.2,0.5` writes `stage.alpha=0.2/stage1` and `stage.alpha=0.5/stage1`. A preset
that names its variants (`variant: alpha${ablation.alpha}`) keeps its readable name; overrides beyond its own sweep
are appended. How a Stage II job finds its Stage I is `bireco.training.builders.init_checkpoint`'s business.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

# overrides that select the stage or say where / how to write, not what is trained
BOOKKEEPING = (
    "stage",
    "experiment",
    "output_root",
    "experiment_name",
    "variant",
    "stage1_variant",
    "resume",
    "logger",
)
BOOKKEEPING_PREFIXES = ("hydra.", "logger.", "trainer.enable_progress_bar", "trainer.log_every_n_steps")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


MAX_NAME = 150  # file systems allow 255 bytes per name


def _name(overrides: list[str]) -> str:
    """Sorted `key=value` joined by "," (Hydra's override_dirname), safe as one directory name: a name over
    MAX_NAME characters keeps its start and ends in a hash of the whole (still one name per set of overrides)."""
    name = ",".join(quote(o.lstrip("+~"), safe="=,.+-_:[]@") for o in sorted(overrides))
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 13]}..{hashlib.sha1(name.encode()).hexdigest()[:11]}"
    return name


def job_variant(variant: str, overrides: list[str], preset_sweep_keys: list[str] = ()) -> str:
    """This job's variant from its overrides. `variant`: the composed value ("default" unless a preset or the user
    named it); `preset_sweep_keys`: the keys a named preset sweeps itself (already in its name, so not repeated)."""
    own = [
        o for o in overrides if _key(o) not in BOOKKEEPING and not _key(o).startswith(BOOKKEEPING_PREFIXES)
    ]
    if variant == "default":
        return _name(own) or "default"
    own = [o for o in own if _key(o) not in preset_sweep_keys]
    return ",".join([variant, _name(own)]) if own else variant


def assign_job_variant(cfg) -> None:
    """In a Hydra multirun job, set cfg.variant from the job's overrides."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    sweep_keys = list((hc.sweeper.get("params") or {}).keys())
    cfg.variant = job_variant(cfg.variant, list(hc.overrides.task), sweep_keys)
