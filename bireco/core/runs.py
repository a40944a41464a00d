"""Every fact about a run directory, in one place.

    <output_root>/<experiment_name>/<variant>/<run_name>/      run_name: stage1 | stage2 | baseline
        config.yaml           the resolved config the run trained with
        logs/metrics.csv      every logged row (appended across resumes)
        checkpoints/          Lightning checkpoints (last.ckpt), when enabled
        final/                the trained model (Hugging Face format, bireco.json, README.md, train_summary.json)
        eval/                 summary.json, results.md, mteb/<task>.json of `bireco.evaluate` on final/
        wandb_run_id          the wandb run this run logs to (continued on resume and by evaluation)

A Stage II run finds its Stage I by this layout (`stage1_of`); resume, evaluation, export, the model card, the
plots and the studies read it through the functions here, never by spelling the names themselves.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from bireco.core.errors import ConfigError
from bireco.core.files import atomic_path

FINAL = "final"
CONFIG = "config.yaml"
LOGS = "logs"
METRICS = "metrics.csv"
CHECKPOINTS = "checkpoints"
EVAL = "eval"
WANDB_ID = "wandb_run_id"
TRAIN_SUMMARY = "train_summary.json"  # in final/
LAST_CHECKPOINT = "last.ckpt"
STAGE1 = "stage1"


def run_dir_of(cfg, run_name: str | None = None, variant: str | None = None) -> Path:
    """The run directory of a config (another stage's or variant's with `run_name` / `variant`)."""
    return (
        Path(cfg.output_root)
        / cfg.experiment_name
        / (variant or cfg.variant)
        / (run_name or cfg.stage.run_name)
    )


def final_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / FINAL


def metrics_csv(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LOGS / METRICS


def config_file(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CONFIG


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def eval_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / EVAL


def wandb_id_file(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / WANDB_ID


def run_of(checkpoint: str | os.PathLike) -> Path:
    """The run directory a `final/` checkpoint belongs to (its parent)."""
    return Path(checkpoint).parent


def run_config(run_dir: str | os.PathLike):
    """The run's recorded config (an OmegaConf node), or None where there is none."""
    from omegaconf import OmegaConf

    f = config_file(run_dir)
    return OmegaConf.load(f) if f.is_file() else None


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (holding logs/metrics.csv) at or below each path, in order, each once."""
    runs: list[Path] = []
    for p in map(Path, paths):
        found = (
            [p] if metrics_csv(p).is_file() else sorted(c.parent.parent for c in p.rglob(f"{LOGS}/{METRICS}"))
        )
        if not found:
            raise FileNotFoundError(f"{p}: no {LOGS}/{METRICS} at or below it")
        runs += [r for r in found if r not in runs]
    return runs


def logged_curve(run_dir: str | os.PathLike, column: str = "val/ndcg@10") -> list[tuple[int, float]]:
    """(step, value) of one logged metric of a run."""
    import pandas as pd

    df = pd.read_csv(metrics_csv(run_dir))
    rows = df[["step", column]].dropna()
    return [(int(s), float(v)) for s, v in zip(rows["step"], rows[column])]


# ---------------------------------------------------------------- model identity and the Stage I of a Stage II
STAGE1_IDENTITY = (
    "ablation",
    "seed",
    "model.family",
    "model.name_or_path",
)  # what a Stage II shares with its Stage I


def model_identity(cfg) -> tuple:
    """What makes two runs runs of different models (their weights cannot continue or feed each other)."""
    return cfg.model.family, cfg.model.name_or_path


def _describe(model) -> str:
    return f"{model.family} ({model.name_or_path or 'built from config'})"


def check_same_model(cfg, run_dir: Path) -> None:
    """Refuse a run directory that holds a run of another model."""
    prev = run_config(run_dir)
    if prev is not None and model_identity(prev) != model_identity(cfg):
        raise ConfigError(
            f"{run_dir} holds a run of model {_describe(prev.model)}; this run is {_describe(cfg.model)}. Give it "
            f"its own directory (variant=NAME or experiment_name=NAME) or remove {run_dir}"
        )


def stage1_of(cfg) -> Path:
    """The Stage I output a Stage II run starts from (`stage.init_from=stage1`): `stage1_variant` if given; else the
    Stage I of the same variant; else (a sweep, whose Stage II jobs are named by other overrides than its Stage I
    jobs) the one Stage I of this experiment whose recorded config has the same STAGE1_IDENTITY values."""
    from omegaconf import OmegaConf

    root = Path(cfg.output_root) / cfg.experiment_name
    done = {
        p.parent.parent.parent.name: p.parent.parent
        for p in sorted(root.glob(f"*/{STAGE1}/{FINAL}/bireco.json"))
    }
    if cfg.stage1_variant:
        if cfg.stage1_variant not in done:
            raise ConfigError(f"stage1_variant={cfg.stage1_variant}: no finished Stage I there (this experiment has: "
                              f"{', '.join(done) or 'none'})")  # fmt: skip
        return final_dir(done[cfg.stage1_variant])
    if cfg.variant in done:
        recorded = run_config(done[cfg.variant])
        if model_identity(recorded) != model_identity(cfg):
            raise ConfigError(
                f"the Stage I at {done[cfg.variant]} trained model {_describe(recorded.model)}, this Stage II is "
                f"{_describe(cfg.model)}: run its own Stage I (another variant= or experiment_name=), or pass "
                "stage.init_from=PATH to start from that checkpoint on purpose"
            )
        return final_dir(done[cfg.variant])

    def identity(c) -> list:
        return [OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                for v in (OmegaConf.select(c, k) for k in STAGE1_IDENTITY)]  # fmt: skip

    mine = identity(cfg)
    matches = [v for v, run in done.items() if identity(run_config(run)) == mine]
    if len(matches) == 1:
        return final_dir(done[matches[0]])
    hint = f"this experiment has: {', '.join(done) or 'none'}"
    if matches:
        hint = f"several match its {', '.join(STAGE1_IDENTITY)}: {', '.join(matches)}"
    raise ConfigError(
        f"stage.init_from=stage1 but no Stage I output at {final_dir(run_dir_of(cfg, STAGE1))} ({hint}). Run Stage I "
        f"of this experiment first (make train-stage1 / stage=reconstruction with experiment_name="
        f"{cfg.experiment_name}), use stage=baseline to start from the base model, give "
        "stage.init_from=/path/to/checkpoint, or pick a Stage I with stage1_variant=NAME"
    )


def init_checkpoint(cfg) -> str | None:
    """Where the stage's weights start: None = the model config (base), else a bireco checkpoint directory."""
    init = cfg.stage.init_from
    if init in (None, "base"):
        return None
    if init == STAGE1:
        return str(stage1_of(cfg))
    if not Path(init).is_dir():
        raise ConfigError(
            f"stage.init_from={init!r}: no such checkpoint directory (valid: stage1, base, a path)"
        )
    return init


# ---------------------------------------------------------------- resume
def resume_path(cfg, run_dir: Path) -> str | None:
    """The checkpoint `resume=` names: never -> None, auto -> the run's newest complete one (if any), or a path."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        last = checkpoints_dir(run_dir) / LAST_CHECKPOINT  # a directory under fsdp (sharded)
        return str(last) if last.exists() else None
    if not Path(cfg.resume).exists():
        raise ConfigError(
            f"resume={cfg.resume!r}: no such checkpoint file (valid: never, auto, a .ckpt path)"
        )
    return cfg.resume


def checkpoint_step(path: str) -> int:
    """The optimizer step a Lightning checkpoint was taken at (memory-mapped, tensors only). A sharded (FSDP)
    checkpoint is a directory whose meta.pt holds the same fields."""
    import torch

    try:
        file = Path(path) / "meta.pt" if Path(path).is_dir() else Path(path)
        return int(torch.load(file, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception as e:  # truncated file, foreign pickle, not a Lightning checkpoint
        raise RuntimeError(
            f"{path}: not a loadable Lightning checkpoint ({type(e).__name__}: {e}). bireco writes checkpoints "
            "atomically, so this file was written by something else or damaged later; pass resume=<another .ckpt> "
            "or resume=never"
        ) from e


def trim_metrics(csv_path: Path, step: int) -> None:
    """Drop logged rows at or after `step` (work the crash threw away and the resumed run redoes), atomically."""
    if not csv_path.is_file():
        return
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = [r for r in reader if r.get("step", "") == "" or int(r["step"]) < step]
    with atomic_path(csv_path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def keep_previous_metrics(csv_path: Path) -> None:
    """A fresh (not resumed) run in a used run_dir starts a new metrics.csv; the old one is renamed, not lost."""
    if csv_path.is_file():
        n = 1
        while csv_path.with_name(f"metrics.previous-{n}.csv").exists():
            n += 1
        csv_path.rename(csv_path.with_name(f"metrics.previous-{n}.csv"))


# ---------------------------------------------------------------- wandb
def wandb_mode(mode: str) -> str:
    """logger.mode=auto: WANDB_MODE if set, else online with an API key, offline without."""
    if mode == "auto":
        return os.environ.get("WANDB_MODE") or ("online" if _wandb_key_available() else "offline")
    return mode


def _wandb_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
