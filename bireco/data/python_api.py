"""Out-of-domain built-in task: a Python standard-library API name (`json.dumps`, `collections.Counter.most_common`)
-> its documentation (name -> documentation, code domain). Evaluation only; no pair of it is ever trained on.

Source: the docstrings of CPython's standard library (PSF License, assets/python_api/LICENSE), read by importing the
modules of the Python that runs the rebuild. Only an object's own docstring counts (nothing inherited); doctest
examples and C signature lines are cut, and docstrings that occur more than once are dropped, so every query has
exactly one relevant document.

Rebuild the shipped file (the shipped one was built with CPython 3.11.7):
    python -m bireco.data.python_api
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import platform
import re
import sys
import warnings
from pathlib import Path

from bireco.data.shipped_pairs import asset_path, write_sample

NAME = "python_api"
N_PAIRS = 2000
SEED = 20261129
# modules that need a display, print or open things on import, or exist for CPython's own build and tests
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "ensurepip", "pydoc_data",
        "test", "xxsubtype", "xxlimited", "xxlimited_35", "msilib", "winreg", "winsound", "nt", "msvcrt",
        "sre_compile", "sre_constants", "sre_parse", "__future__", "__main__"}  # fmt: skip
SUBMODULES = ("os.path", "urllib.parse", "urllib.request", "xml.etree.ElementTree", "xml.dom.minidom",
              "email.message", "email.utils", "concurrent.futures", "importlib.resources", "importlib.metadata",
              "logging.handlers", "logging.config", "json.decoder", "http.client", "http.server", "http.cookies",
              "unittest.mock", "multiprocessing.pool", "asyncio.tasks", "asyncio.queues", "asyncio.streams",
              "collections.abc", "encodings.idna", "dbm.dumb", "sqlite3.dbapi2", "ctypes.util", "wsgiref.simple_server")  # fmt: skip


def module_names() -> list[str]:
    top = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP)
    return top + list(SUBMODULES)


def clean_doc(name: str, doc: str | None) -> str | None:
    """The docstring without a leading C signature line or doctest examples, at most ~1500 characters."""
    if not doc:
        return None
    text = inspect.cleandoc(doc)
    short = name.rsplit(".", 1)[-1]
    lines = text.splitlines()
    while lines and re.match(rf"^{re.escape(short)}\(.*\)", lines[0]):  # "dumps(obj, ...) -> str"
        lines.pop(0)
    while lines and lines[0].strip() in ("", "--"):
        lines.pop(0)
    text = "\n".join(lines)
    text = re.split(r"\n\s*>>>|^\s*>>>", text, maxsplit=1)[0].strip()
    if len(text) > 1500:
        cut = text[:1500]
        text = cut[: max(cut.rfind("\n\n"), cut.rfind(". ") + 1, 200)].strip()
    if len(text) < 80 or len(text.split()) < 10:
        return None
    return text


def members(module) -> list[tuple[str, object]]:
    """(qualified name, object) for the public functions and classes a module defines, and their public methods."""
    public = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    out = []
    for n in sorted(set(public)):
        obj = getattr(module, n, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) not in (module.__name__, None) and not hasattr(module, "__all__"):
            continue  # re-exported from elsewhere: documented there
        out.append((f"{module.__name__}.{n}", obj))
        if inspect.isclass(obj):
            for m, attr in sorted(vars(obj).items()):
                if not m.startswith("_") and (
                    inspect.isroutine(attr) or isinstance(attr, (classmethod, staticmethod))
                ):
                    out.append((f"{module.__name__}.{n}.{m}", getattr(attr, "__func__", attr)))
    return out


def build_pairs() -> list[dict]:
    docs: dict[str, str] = {}
    for mod_name in module_names():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = importlib.import_module(mod_name)
            except Exception:  # platform-specific or optional (e.g. no _curses): not part of this build
                continue
        for qualname, obj in members(module):
            text = clean_doc(qualname, obj.__doc__ if isinstance(obj.__doc__, str) else None)
            if text and qualname not in docs:
                docs[qualname] = text
    counts: dict[str, int] = {}
    for text in docs.values():
        counts[text] = counts.get(text, 0) + 1
    return [{"id": n, "query": n, "document": t} for n, t in sorted(docs.items()) if counts[t] == 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=asset_path(NAME))
    args = ap.parse_args()
    source = f"CPython {platform.python_version()} standard-library docstrings"
    write_sample(args.out, build_pairs(), N_PAIRS, SEED, source, "PSF License Version 2 (see LICENSE)")


if __name__ == "__main__":
    main()
