"""Query -> document pair sets shipped in the package for evaluation only (bireco/assets/<name>/pairs.jsonl.xz).

Each out-of-domain built-in task (bireco.data.debian_packages, bireco.data.python_api) is one such file, written by its
module's rebuild command and read here. One JSON object per line: `id`, `query`, `document`; the first line is a
header object (`source`, `built_with`, `licence`) so the file says where its text came from.
"""

from __future__ import annotations

import json
import lzma
import os
import random
from functools import cache
from pathlib import Path

from bireco.core.files import atomic_path
from bireco.core.paths import ASSETS_DIR

MAX_MB = 5.0  # shipped assets stay small (issue #16)


def asset_path(name: str) -> Path:
    """The shipped pair file of one built-in task."""
    return ASSETS_DIR / name / "pairs.jsonl.xz"


def write_pairs(out: Path, header: dict, pairs: list[dict]) -> None:
    """Atomically write the header and pairs (ids, queries and documents unique, none empty)."""
    for key in ("id", "query", "document"):
        values = [p[key] for p in pairs]
        if len(set(values)) != len(values) or not all(v.strip() for v in values):
            raise ValueError(f"{out}: field {key!r} must be unique and non-empty in every pair")
    with atomic_path(out) as tmp:
        with lzma.open(tmp, "wt", encoding="utf-8", preset=9) as f:
            f.write(json.dumps({"header": header}, ensure_ascii=False) + "\n")
            for p in pairs:
                f.write(json.dumps({k: p[k] for k in ("id", "query", "document")}, ensure_ascii=False) + "\n")
        size_mb = os.path.getsize(tmp) / 1e6
        if size_mb > MAX_MB:
            raise ValueError(f"{out}: {size_mb:.1f} MB is over the {MAX_MB} MB budget for a shipped task")


@cache
def read_pairs(name: str) -> tuple[dict, tuple[dict, ...]]:
    """(header, pairs) of the shipped set `name` (a folder of bireco/assets)."""
    with (
        asset_path(name).open("rb") as raw,
        lzma.open(raw, "rt", encoding="utf-8") as f,
    ):
        header = json.loads(f.readline())["header"]
        return header, tuple(json.loads(line) for line in f)


def write_sample(out: Path, candidates: list[dict], n: int, seed: int, source: str, licence: str) -> None:
    """What a rebuild command writes: a seeded sample of `n` candidates, with a header saying where they came from."""
    pairs = sample(candidates, n, seed)
    header = {"source": source, "candidates": len(candidates), "seed": seed, "licence": licence}
    write_pairs(out, header, pairs)
    print(f"wrote {len(pairs)} of {len(candidates)} pairs to {out} ({out.stat().st_size / 1e6:.2f} MB)")


def sample(items: list, n: int, seed: int) -> list:
    """A seeded sample of `n` items in their original order (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]
