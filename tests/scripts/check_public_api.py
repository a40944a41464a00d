"""`make lint`: experiments/ uses bireco's public API only (`import bireco` or `from bireco import NAME` with NAME in
`bireco.__all__`); a study's scripts may import each other (the study's own folder). Exits 1 listing each offence as
`file:line: what`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def offences(root: Path = ROOT) -> list[str]:
    import bireco

    public, found = set(bireco.__all__), []
    for path in sorted((root / "experiments").rglob("*.py")):
        siblings = {p.stem for p in path.parent.glob("*.py")}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("bireco."):
                        found.append(
                            f"{where}: import {alias.name} (a private module; use `from bireco import ...`)"
                        )
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.startswith("bireco."):
                    found.append(
                        f"{where}: from {node.module} import ... (a private module; use `from bireco import ...`)"
                    )
                elif node.module == "bireco":
                    found += [
                        f"{where}: bireco.{a.name} is not in bireco.__all__"
                        for a in node.names
                        if a.name not in public
                    ]
                elif node.module.split(".")[0] not in siblings and node.module.split(".")[0].startswith(
                    "bireco"
                ):
                    found.append(f"{where}: from {node.module} import ...")
    return found


if __name__ == "__main__":
    bad = offences()
    print("\n".join(bad) or "experiments/ imports bireco's public API only")
    sys.exit(1 if bad else 0)
