import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_aggregate_builds_paper_table_with_deltas(tmp_path):
    for run, score in (("baseline", 60.0), ("stage2", 62.5)):
        d = tmp_path / "paper_llama32_1b" / "default" / run / "eval"
        d.mkdir(parents=True)
        summary = {"tasks": {"STS12": {"type": "STS", "main_score": score}}, "categories": {"STS": score, "Average": score}}
        (d / "summary.json").write_text(json.dumps(summary))
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "aggregate.py"), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "table.md").read_text()
    assert "| paper_llama32_1b/default | Anchor | 62.50 (+2.50) | 62.50 (+2.50) |" in md
    assert (tmp_path / "table.csv").is_file() and (tmp_path / "table.png").stat().st_size > 1000
