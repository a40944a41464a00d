"""experiments/seeds/seeds.py --suite: rows already evaluated are reused, and the tables give per-seed cells and mean ± sd."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def load_seeds():
    spec = importlib.util.spec_from_file_location("seeds", ROOT / "experiments" / "seeds" / "seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summary(wordnet: float, ood: float) -> dict:
    return {
        "tasks": {},
        "categories": {"Retrieval": (wordnet + ood) / 2, "Average": (wordnet + ood) / 2},
        "groups": {"WordNet avg": wordnet, "Out-of-domain avg": ood},
    }


def test_suite_reuses_evaluated_rows_and_reports_each_half_over_seeds(tmp_path):
    seeds = load_seeds()
    anchor, full_ft = "Stage I + Stage II (Anchor)", seeds.FULL_FT
    cached = {
        "1": {anchor: summary(70.0, 40.0)},
        "2": {anchor: summary(80.0, 50.0), full_ft: summary(30.0, 10.0)},
    }
    (tmp_path / "suite.json").write_text(json.dumps(cached))
    # no checkpoint directories exist: a row not in suite.json yet would be skipped, one in it is not evaluated again
    suite = seeds.evaluate_suite(tmp_path, {1: {}, 2: {}})
    assert suite[2][full_ft]["groups"]["WordNet avg"] == 30.0
    md = (tmp_path / "suite.md").read_text()
    average, wordnet, ood = [chunk for chunk in md.split("\n\n") if chunk.startswith("| run")]
    assert f"| {anchor} | 55.00 | 65.00 | 60.00 ± 7.07 |" in average
    assert f"| {anchor} | 70.00 | 80.00 | 75.00 ± 7.07 |" in wordnet
    assert f"| {full_ft} | – | 10.00 | 10.00 |" in ood
    assert "Untrained" not in md  # rows no seed has are left out
