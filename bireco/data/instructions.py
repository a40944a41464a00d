"""Instruction tables are data (YAML under bireco/data/tables or a user path), never code."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

import yaml


@cache
def load_table(name_or_path: str) -> dict[str, str | list[str]]:
    """`e5`, `wordnet`, `mteb` (shipped) or a path to a YAML/JSON mapping name -> instruction (or list)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml", ".json") and p.is_file():
        text = p.read_text(encoding="utf-8")
    else:
        ref = resources.files("bireco.data").joinpath("tables", f"{name_or_path}.yaml")
        if not ref.is_file():
            shipped = sorted(
                x.name.removesuffix(".yaml")
                for x in resources.files("bireco.data").joinpath("tables").iterdir()
            )
            raise FileNotFoundError(
                f"instruction table {name_or_path!r} not found; shipped tables: {', '.join(shipped)}"
            )
        text = ref.read_text(encoding="utf-8")
    table = yaml.safe_load(text) or {}
    if not isinstance(table, dict):
        raise ValueError(f"instruction table {name_or_path!r} must be a mapping name -> instruction")
    return table


def instruction_for(table: dict, dataset: str, index: int) -> str | None:
    """The instruction of `dataset` for the record at `index` (lists alternate by index, as in E5 allnli/quora)."""
    value = table.get(dataset)
    if value is None:
        return None
    if isinstance(value, list):
        return value[index % len(value)]
    return value


def mteb_instruction(task_name: str) -> str | None:
    """Evaluation instruction for an MTEB task; the table's trailing ':' is kept (llm2vec convention)."""
    return load_table("mteb").get(task_name)
