"""What a run shows while it runs (plain progress lines off a terminal, a step bar on one), its closing summary,
and `python -m bireco.plot` for curves without wandb."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env


@pytest.fixture
def pairs(tmp_path) -> list[str]:
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"query": f"word {i}", "positive": f"a gloss {i}"}) + "\n" for i in range(32))
    )
    return ["data=jsonl", f"data.path={data}", "data.global_batch_size=4", "data.num_hard_negatives=0"]


def test_output_to_a_file_gets_progress_lines_and_a_summary(tmp_path, pairs):
    cmd = [sys.executable, "-m", "bireco.train", "stage=reconstruction", "trainer.max_steps=4",
           "trainer.log_every_n_steps=2", f"output_root={tmp_path / 'out'}", *pairs]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    steps = [ln for ln in lines if "stage1 step" in ln]
    assert [ln.split("stage1 step ")[1].split(" ")[0] for ln in steps] == ["2/4", "4/4"], steps
    assert all("loss " in ln and "tokens/s" in ln and "elapsed" in ln for ln in steps) and "ETA" in steps[0]
    run_dir = tmp_path / "out" / "default" / "default" / "stage1"
    assert any(ln.endswith(f"model:   {run_dir / 'final'}") for ln in lines)
    assert any("finished 4 steps in" in ln and "loss " in ln for ln in lines)
    assert "Epoch 0" not in r.stderr and "v_num" not in r.stderr + r.stdout  # no bar written into a file
    rows = (run_dir / "logs" / "metrics.csv").read_text().splitlines()
    assert len(rows) > 1  # a run shorter than log_every_n_steps still logs


def test_on_a_terminal_one_bar_counts_optimizer_steps(cfg_factory, pairs, monkeypatch):
    from bireco.training import progress
    from bireco.training.run import run

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bars = []
    real = progress.StepProgressBar.on_train_end

    def remember(self, trainer, *args):
        bars.append((self.train_progress_bar.total, self.train_progress_bar.n, self.train_progress_bar.desc))
        return real(self, trainer, *args)

    monkeypatch.setattr(progress.StepProgressBar, "on_train_end", remember)
    cfg = cfg_factory(
        "stage=reconstruction", "trainer.max_steps=3", "trainer.enable_progress_bar=true", *pairs
    )
    run(cfg)
    ((total, n, desc),) = bars
    assert (total, n) == (3, 3) and desc.startswith("stage1"), bars


def test_plot_draws_one_run_or_a_sweep(cfg_factory, tmp_path, pairs):
    from bireco.plot import main
    from bireco.training.run import run

    for variant in ("a", "b"):
        run(cfg_factory("stage=reconstruction", "trainer.max_steps=2", "trainer.log_every_n_steps=1",
                        "stage.probe.every_n_steps=0", f"variant={variant}", *pairs))  # fmt: skip
    experiment = tmp_path / "out" / "default"
    main([str(experiment / "a" / "stage1")])
    assert (experiment / "a" / "stage1" / "curves.png").stat().st_size > 10_000
    main([str(experiment), "--out", str(tmp_path / "sweep.png"), "--metrics", "train/loss", "train/lr"])
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    with pytest.raises(SystemExit, match="no logs/metrics.csv"):
        main([str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match="none of val/ndcg@10 was logged"):
        main([str(experiment), "--metrics", "val/ndcg@10"])
    assert Path(tmp_path / "sweep.png").exists()
