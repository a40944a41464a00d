import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_aggregate_builds_paper_table_with_deltas(tmp_path):
    for run, score in (("baseline", 60.0), ("stage2", 62.5)):
        d = tmp_path / "paper_llama32_1b" / "default" / run / "eval"
        d.mkdir(parents=True)
        summary = {
            "tasks": {"STS12": {"type": "STS", "main_score": score}},
            "categories": {"STS": score, "Average": score},
        }
        (d / "summary.json").write_text(json.dumps(summary))
    r = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "paper_table" / "aggregate.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "table.md").read_text()
    assert "| paper_llama32_1b/default | Anchor | 62.50 (+2.50) | 62.50 (+2.50) |" in md
    assert (tmp_path / "table.csv").is_file() and (tmp_path / "table.png").stat().st_size > 1000


def test_aggregate_reads_a_sweep_into_one_table_against_a_shared_baseline(tmp_path):
    def write(exp, variant, run, score):
        d = tmp_path / exp / variant / run / "eval"
        d.mkdir(parents=True)
        summary = {
            "tasks": {"T": {"type": "STS", "main_score": score}},
            "categories": {"STS": score, "Average": score},
        }
        (d / "summary.json").write_text(json.dumps(summary))

    write("paper_llama32_1b", "default", "baseline", 60.0)
    for variant, score in (("alpha0.2", 62.0), ("alpha0.5", 61.0), ("alpha0.8", 59.5)):
        write("ablation_alpha", variant, "stage2", score)
    write("ablation_alpha", "alpha0.2", "stage1", 40.0)
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "paper_table" / "aggregate.py"),
        str(tmp_path),
        "--baseline",
        "paper_llama32_1b/default",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert "| ablation_alpha/alpha0.2 | Anchor | 62.00 (+2.00) | 62.00 (+2.00) |" in lines
    assert "| ablation_alpha/alpha0.5 | Anchor | 61.00 (+1.00) | 61.00 (+1.00) |" in lines
    assert "| ablation_alpha/alpha0.8 | Anchor | 59.50 (-0.50) | 59.50 (-0.50) |" in lines
    assert "| ablation_alpha/alpha0.2 | Stage I only | 40.00 | 40.00 |" in lines
    bad = subprocess.run([*cmd[:-1], "nowhere/default"], capture_output=True, text=True)
    assert bad.returncode != 0 and "baselines: paper_llama32_1b/default" in bad.stderr
