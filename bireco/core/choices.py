"""The type of every closed set of config values (`stage.schedule`, `model.pooling`, ...): a str Enum.

A config field typed with one of these fails at composition with the valid values (OmegaConf checks Enum fields), so
a typo never reaches a model. Members are named as their values, so YAML, `--cfg job` and JSON show the plain
string, and a member compares equal to its string (`Schedule.joint == "joint"`). Each set is defined once, where the
code that acts on it lives (or in bireco.config.schema when only configuration reads it).
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A str Enum whose `str()` and f-string are the value (Python 3.11's Enum would print `Schedule.joint`)."""

    def __str__(self) -> str:
        return str(self.value)

    __format__ = str.__format__

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


def choice(name: str, *values: str, module: str) -> type[Choice]:
    """A Choice whose values need not be identifiers (`raise`): `choice("OnNonFinite", "raise", "skip",
    module=__name__)`, bound at module level under `name` (so it pickles like a class statement's)."""
    return Choice(name, {v: v for v in values}, module=module, qualname=name)
