"""The built-in real dataset: Princeton WordNet 3.0 (Debian `wordnet-base`), shipped compactly in the package.

Two pair sets are derived from every synset (words -> gloss, usage example -> dictionary entry), with hard
negatives taken from other senses of the same words. Splits are by synset (80/10/10, seeded), and every negative comes
from the same split, so no synset's text crosses splits. Rebuild the shipped file with
`python -m bireco.data.wordnet --source /usr/share/wordnet` (needs `apt-get install wordnet-base`).
"""

from __future__ import annotations

import argparse
import lzma
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

ASSET = "wordnet/synsets.tsv.xz"
POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
SPLITS = ("train", "dev", "test")
SPLIT_SEED = 20250903
DEFINITIONS = "wordnet_definitions"
EXAMPLES = "wordnet_examples"
WORDNET_DATASETS = (DEFINITIONS, EXAMPLES)


@dataclass(frozen=True)
class Synset:
    id: str
    pos: str
    split: str
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]


# ---------------------------------------------------------------- building from the Debian files
def parse_data_line(line: str, pos: str) -> tuple[str, tuple[str, ...], str, tuple[str, ...]] | None:
    if line.startswith("  "):  # licence header
        return None
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, n_words = fields[0], int(fields[3], 16)
    lemmas = []
    for i in range(n_words):
        word = re.sub(r"\([a-z]+\)$", "", fields[4 + 2 * i])  # drop adjective markers like (a)
        word = word.replace("_", " ")
        if word not in lemmas:
            lemmas.append(word)
    gloss = gloss.strip()
    quote = gloss.find('"')
    definition = (gloss if quote < 0 else gloss[:quote]).strip().rstrip(";").strip()
    examples = tuple(
        e.strip() for e in re.findall(r'"([^"]+)"', gloss[quote:] if quote >= 0 else "") if e.strip()
    )
    return f"{pos}{offset}", tuple(lemmas), definition, examples


def build_from_debian(source: Path, out: Path) -> int:
    rows = []
    for pos, fname in POS_FILES.items():
        with open(source / fname, encoding="utf-8") as f:
            for line in f:
                parsed = parse_data_line(line, pos)
                if parsed and parsed[2]:
                    rows.append((parsed[0], pos, *parsed[1:]))
    rows.sort()
    rng = random.Random(SPLIT_SEED)
    order = list(range(len(rows)))
    rng.shuffle(order)
    split_of = {}
    for rank, idx in enumerate(order):
        frac = rank / len(rows)
        split_of[idx] = "train" if frac < 0.8 else ("dev" if frac < 0.9 else "test")
    out.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(out, "wt", encoding="utf-8", preset=9) as f:
        for i, (sid, pos, lemmas, definition, examples) in enumerate(rows):
            clean = [x.replace("\t", " ").replace("|", "/") for x in (*lemmas, definition, *examples)]
            lem, dfn, exs = clean[: len(lemmas)], clean[len(lemmas)], clean[len(lemmas) + 1 :]
            f.write("\t".join([sid, pos, split_of[i], "|".join(lem), dfn, "|".join(exs)]) + "\n")
    return len(rows)


# ---------------------------------------------------------------- loading the shipped file
@lru_cache(maxsize=1)
def load_synsets() -> tuple[Synset, ...]:
    with (
        resources.files("bireco.assets").joinpath(ASSET).open("rb") as raw,
        lzma.open(raw, "rt", encoding="utf-8") as f,
    ):
        out = []
        for line in f:
            sid, pos, split, lemmas, definition, examples = line.rstrip("\n").split("\t")
            out.append(
                Synset(
                    sid,
                    pos,
                    split,
                    tuple(lemmas.split("|")),
                    definition,
                    tuple(e for e in examples.split("|") if e),
                )
            )
    return tuple(out)


def gloss(s: Synset) -> str:
    """The WordNet gloss: definition followed by the quoted usage examples."""
    return "; ".join([s.definition, *(f'"{e}"' for e in s.examples)])


def entry(s: Synset) -> str:
    """A dictionary entry: the synset's words, then the definition."""
    return f"{', '.join(s.lemmas)}: {s.definition}"


def pair_records(split: str, seed: int = 0) -> list[dict]:
    """Query / positive / negative records of one split for both WordNet datasets.

    wordnet_definitions: words of a synset -> its gloss (definition + usage examples).
    wordnet_examples: one usage example -> the dictionary entry (words: definition) of its sense.
    The negative is the same kind of text for another sense of one of the query's words (same split), so
    word overlap alone cannot tell them apart; where a word has no other sense in the split, another synset
    of the same part of speech is drawn at random.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; valid: {', '.join(SPLITS)}")
    synsets = [s for s in load_synsets() if s.split == split]
    by_lemma: dict[str, list[int]] = defaultdict(list)
    by_pos: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(synsets):
        by_pos[s.pos].append(i)
        for lemma in s.lemmas:
            by_lemma[lemma.lower()].append(i)
    rng = random.Random(seed)

    def other_sense(i: int) -> Synset:
        s = synsets[i]
        others = [
            j
            for lemma in s.lemmas
            for j in by_lemma[lemma.lower()]
            if j != i and synsets[j].definition != s.definition
        ]
        if not others:
            pool = by_pos[s.pos]
            j = i
            while j == i or synsets[j].definition == s.definition:
                j = pool[rng.randrange(len(pool))]
            others = [j]
        return synsets[others[rng.randrange(len(others))]]

    records = []
    for i, s in enumerate(synsets):
        neg = other_sense(i)
        records.append(
            {
                "query": ", ".join(s.lemmas),
                "positive": gloss(s),
                "negatives": [gloss(neg)],
                "dataset": DEFINITIONS,
                "id": s.id,
            }
        )
        for example in s.examples:
            records.append(
                {
                    "query": example,
                    "positive": entry(s),
                    "negatives": [entry(neg)],
                    "dataset": EXAMPLES,
                    "id": s.id,
                }
            )
    return records


def corpus_lines(split: str = "train") -> list[str]:
    """Plain text for pretraining the demo's tiny base LM (train split only: test glosses stay unseen)."""
    lines = []
    for s in load_synsets():
        if s.split == split:
            lines.append(f"{', '.join(s.lemmas)}: {s.definition}.")
            lines.extend(s.examples)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", type=Path, default=Path("/usr/share/wordnet"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "assets" / ASSET)
    args = ap.parse_args()
    n = build_from_debian(args.source, args.out)
    print(f"wrote {n} synsets to {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
