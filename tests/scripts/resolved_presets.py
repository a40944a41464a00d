"""Write the resolved config (`--cfg job --resolve`) of every shipped preset and stage into a directory, one YAML
file each, so two commits can be compared with `diff -r`: a refactor that is meant to change no setting must leave
every file identical apart from the keys it removes.

    python tests/scripts/resolved_presets.py /tmp/presets-before      # at the old commit
    python tests/scripts/resolved_presets.py /tmp/presets-after       # at the new one
    diff -r /tmp/presets-before /tmp/presets-after
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from bireco.config.compose import compose_train
from bireco.core.paths import CONF_DIR

STAGES = ("reconstruction", "contrastive", "baseline")


def presets() -> dict[str, list[str]]:
    """name -> overrides: the defaults, each experiment, each model family at each of its sizes and each trainer."""
    conf = Path(CONF_DIR)
    out: dict[str, list[str]] = {"default": []}
    out |= {
        f"experiment={p.stem}": [f"experiment={p.stem}"] for p in sorted((conf / "experiment").glob("*.yaml"))
    }
    families = sorted((p.stem for p in (conf / "model").glob("*.yaml")), key=len, reverse=True)
    for p in sorted((conf / "model_size").glob("*.yaml")):
        family = next(f for f in families if p.stem.startswith(f + "_"))
        out[p.stem] = [f"model={family}", f"size={p.stem[len(family) + 1 :]}"]
    out |= {f"trainer={p.stem}": [f"trainer={p.stem}"] for p in sorted((conf / "trainer").glob("*.yaml"))}
    return out


def main(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name, overrides in presets().items():
        for stage in STAGES:
            cfg = compose_train([*overrides, f"stage={stage}"])
            (target / f"{name.replace('=', '-')}.{stage}.yaml").write_text(
                OmegaConf.to_yaml(cfg, resolve=True)
            )
    print(f"wrote {len(list(target.glob('*.yaml')))} resolved configs to {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
