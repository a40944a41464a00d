"""Export a checkpoint as a self-contained sentence-transformers model directory (bireco.model.export).

    python -m bireco.export checkpoint=outputs/default/default/stage2/final output=exported/my-embedder \
        instruction="Given a web search query, retrieve relevant passages that answer the query"
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bireco.config.cli import check_overrides, exit_on_user_error, quote_free_text
from bireco.core.paths import CONF_DIR


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
@exit_on_user_error
def _hydra_main(cfg: DictConfig) -> None:
    overwrite = cfg.overwrite
    if Path(cfg.output).exists() and not overwrite:
        if not sys.stdin.isatty():
            sys.exit(f"Error: {cfg.output} exists; pass overwrite=true to replace it")
        overwrite = input(f"{cfg.output} exists. Replace it? [y/N] ").strip().lower() in ("y", "yes")
        if not overwrite:
            sys.exit("not replaced")
    from bireco.model.export import export_sentence_transformers

    path = export_sentence_transformers(cfg.checkpoint, cfg.output, instruction=cfg.instruction,
                                        max_seq_length=cfg.max_seq_length, dtype=cfg.dtype, overwrite=overwrite,
                                        push_to_hub=cfg.push_to_hub)  # fmt: skip
    print(f"exported to {path}; load with SentenceTransformer({str(path)!r})")


def main() -> None:
    sys.argv[1:] = quote_free_text(sys.argv[1:], ("instruction",))  # free text, commas and all
    check_overrides("export", sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
