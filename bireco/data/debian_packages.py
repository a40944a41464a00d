"""Out-of-domain built-in task: a Debian package's one-line synopsis -> its long description (software domain,
summary -> paragraph). Evaluation only; no pair of it is ever trained on.

Source: the English package descriptions of Debian 12 "bookworm" main (the archive's i18n Translation-en index);
every package in main is free software under the DFSG and its description ships with it (assets/debian_packages/LICENSE).
Binary packages built from one source usually share their first paragraph, so only one package per first paragraph is
kept, and synopses that name several packages are dropped: every query has exactly one relevant document. Packages
named dict-*, *manpages* or *faq* are left out (those sources are reserved for held-out checks).

Rebuild the shipped file (Debian machine, network to the Debian archive):
    apt-get update -o Acquire::Languages=en
    python -m bireco.data.debian_packages \
        --source /var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_i18n_Translation-en.lz4
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

from bireco.data.shipped_pairs import asset_path, write_sample

NAME = "debian_packages"
N_PAIRS = 2000
SEED = 20261129
RESERVED = re.compile(r"^dict-|manpages|faq")


def read_index(source: Path) -> str:
    """The Translation-en text, decompressing `.lz4` with Debian's lz4 tool."""
    if source.suffix == ".lz4":
        return subprocess.run(["lz4", "-dc", str(source)], check=True, capture_output=True).stdout.decode(
            "utf-8"
        )
    return source.read_text(encoding="utf-8")


def parse_descriptions(text: str) -> dict[str, tuple[str, list[str]]]:
    """package -> (synopsis, paragraphs of the long description), from Debian control-file stanzas."""
    out: dict[str, tuple[str, list[str]]] = {}
    for stanza in text.split("\n\n"):
        package, synopsis, paragraphs, current = None, None, [], []
        for line in stanza.splitlines():
            if line.startswith("Package:"):
                package = line.split(":", 1)[1].strip()
            elif line.startswith("Description-en:"):
                synopsis = line.split(":", 1)[1].strip()
            elif line.startswith(" ") and synopsis is not None:
                body = line[1:]
                if body.strip() == ".":
                    paragraphs.append(current)
                    current = []
                else:
                    current.append(body)
        if current:
            paragraphs.append(current)
        if package and synopsis:
            out[package] = (synopsis, [_join(p) for p in paragraphs if p])
    return out


def _join(lines: list[str]) -> str:
    """Flowing lines join with spaces; verbatim lines (a second leading space: lists, code) keep their breaks."""
    text = ""
    for line in lines:
        if line.startswith(" "):
            text += ("\n" if text else "") + line.strip()
        else:
            text += (" " if text and not text.endswith("\n") else "") + line.strip()
    return re.sub(r"[ \t]+", " ", text).strip()


def build_pairs(descriptions: dict[str, tuple[str, list[str]]]) -> list[dict]:
    """One package per first paragraph (the shortest name), unique synopses, documents of 200-1500 characters."""
    by_first: dict[str, str] = {}
    for package in sorted(descriptions, key=lambda p: (len(p), p)):
        synopsis, paragraphs = descriptions[package]
        if RESERVED.search(package) or not paragraphs:
            continue
        by_first.setdefault(paragraphs[0], package)
    kept = sorted(by_first.values())
    synopsis_count: dict[str, int] = {}
    for package in kept:
        key = descriptions[package][0].lower()
        synopsis_count[key] = synopsis_count.get(key, 0) + 1
    pairs = []
    for package in kept:
        synopsis, paragraphs = descriptions[package]
        document = "\n\n".join(paragraphs)
        if (
            synopsis_count[synopsis.lower()] == 1
            and len(synopsis.split()) >= 3
            and 200 <= len(document) <= 1500
        ):
            pairs.append({"id": package, "query": synopsis, "document": document})
    documents: dict[str, int] = {}
    for p in pairs:
        documents[p["document"]] = documents.get(p["document"], 0) + 1
    return [p for p in pairs if documents[p["document"]] == 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, required=True, help="Translation-en index (.lz4 or plain text)")
    ap.add_argument("--out", type=Path, default=asset_path(NAME))
    args = ap.parse_args()
    candidates = build_pairs(parse_descriptions(read_index(args.source)))
    write_sample(args.out, candidates, N_PAIRS, SEED, f"Debian 12 bookworm main, {args.source.name}",
                 "each description under its package's DFSG-free licence (see LICENSE)")  # fmt: skip


if __name__ == "__main__":
    main()
