"""bireco reaches into no library's private names where a public way exists: every `obj._name` on another object,
every `from x import _name`, and every private attribute a subclass reads from its third-party base, listed against an
allow-list that says why each is needed (empty: none is)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "bireco"
# "path: name" -> why no public way serves
ALLOWED: dict[str, str] = {}
# private attributes of the library classes bireco subclasses (LightningModule, Callback, Logger, TQDMProgressBar,
# nn.Module): read through `self` they are another library's internals all the same
BASE_PRIVATES = {"_trainer", "_parameters", "_modules", "_buffers", "_update_n", "_experiment", "_fs",
                 "_compiled_call_impl", "_name_or_path", "_attn_implementation", "_check_log_dir_exists"}  # fmt: skip


def private_uses() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        own = {
            n.name
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.FunctionDef | ast.ClassDef)
        }
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                if (not on_self and node.attr not in own) or node.attr in BASE_PRIVATES:
                    found.append(f"{rel}: {node.attr}")
            elif isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("bireco"):
                found += [
                    f"{rel}: {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and a.name != "__future__"
                ]
    return found


def test_private_names_of_other_libraries_are_only_the_allowed_ones():
    uses = private_uses()
    assert sorted(set(uses) - set(ALLOWED)) == [], "a private name with no reason on the allow-list"
    assert sorted(set(ALLOWED) - set(uses)) == [], "an allow-list entry for a use that is gone"


def test_the_scan_finds_a_private_name(tmp_path, monkeypatch):
    """The scan itself: a module that reaches into Lightning's progress bar internals is caught."""
    import sys

    module = tmp_path / "bireco" / "bad.py"
    module.parent.mkdir()
    module.write_text(
        "from lightning.pytorch.callbacks.progress.tqdm_progress import _update_n\nx = obj._secret\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", module.parent)
    assert sorted(private_uses()) == ["bireco/bad.py: _secret", "bireco/bad.py: _update_n"]
