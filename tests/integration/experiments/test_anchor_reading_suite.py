"""experiments/anchor_reading/study.py --suite: evaluated rows are reused, and the table puts the seeds side by side
with the own-anchor Stage I − its shuffled control per seed."""

import json
from pathlib import Path

import pytest
from conftest import experiment


def scores(avg: float, wordnet: float, ood: float) -> dict:
    return {"scores": {"Average": avg, "WordNet avg": wordnet, "Out-of-domain avg": ood}}


def test_suite_table_gives_seeds_mean_sd_and_reading_minus_control(tmp_path):
    study = experiment("anchor_reading/study.py")
    label = "demo_baseline"
    cached = {
        f"start[{label}]": scores(20.0, 30.0, 10.0),
        f"d2q_frozen_from_embedder[{label}]-seed1": scores(60.0, 80.0, 40.0),
        f"d2q_frozen_from_embedder[{label}]-seed2": scores(70.0, 85.0, 55.0),
        f"d2q_frozen_shuffled_from_embedder[{label}]-seed1": scores(55.0, 78.0, 32.0),
        f"d2q_frozen_shuffled_from_embedder[{label}]-seed2": scores(72.0, 84.0, 60.0),
        f"embedder_matched[{label}]-seed1": scores(40.0, 50.0, 30.0),  # the compute-matched control: one seed
        "d2q_raw_from_embedder[other]-seed1": scores(1.0, 1.0, 1.0),  # another start: not in this table
    }
    store = tmp_path / "suite.json"
    store.write_text(json.dumps(cached))
    # every row is in suite.json already: nothing is evaluated again (no checkpoint exists here)
    stage2 = {k: {"run_dir": "no/such/run"} for k in cached if k.startswith("d2q")}
    suite = study.run_suite(stage2, label, store)
    assert suite == cached
    study.write_suite_table(suite, tmp_path / "suite.md")
    md = (tmp_path / "suite.md").read_text()
    (section,) = [
        part for part in md.split("## Start: ")[1:] if part.startswith(label)
    ]  # one start, one section
    average, wordnet, ood = [chunk for chunk in section.split("\n\n") if chunk.startswith("| run")]
    assert "| run | seed 1 | seed 2 | mean ± sd |" in average
    assert "| the start (no further training) | 20.00 | 20.00 | 20.00 |" in average
    assert "| Stage I, frozen decoder + Stage II | 60.00 | 70.00 | 65.00 ± 7.07 |" in average
    assert "| **own anchor − shuffled control** | +5.00 | -2.00 | +1.50 ± 4.95 |" in average
    assert "| **own anchor − shuffled control** | +8.00 | -5.00 | +1.50 ± 9.19 |" in ood
    assert "| **own anchor − compute-matched** | +20.00 | – | +20.00 |" in average
    assert "full fine-tuning" not in md  # no such run: no row
    assert "| 1.00 " not in section and "## Start: other" in md  # the other start: its own section


def test_base_recipe_rows_join_their_controls_from_the_base(tmp_path):
    """From the base the recipe's Stage I designs carry no label (d2q_frozen_x8-seed1): the suite files them under
    `base` beside the controls Stage II ran from the base (--embedder base), and compares them with each other."""
    study = experiment("anchor_reading/study.py")
    stage2 = {
        "d2q_frozen_x8-seed1": {"run_dir": "no/such/run", "start": "x"},
        "d2q_frozen_shuffled_x8-seed1": {"run_dir": "no/such/run", "start": "x"},
        "d2q_frozen_x4-seed1": {"run_dir": "no/such/run", "start": "x"},  # not the base recipe: not evaluated
        "embedder[base]-seed1": {"run_dir": "no/such/run", "start": "base"},  # the baseline: no start row
    }
    assert study.suite_key("d2q_frozen_x8-seed1", "base") == "d2q_frozen_x8[base]-seed1"
    assert study.suite_key("d2q_frozen_x4-seed1", "base") is None
    assert study.suite_key("d2q_frozen_x8-seed1", "demo_baseline") is None
    cached = {
        "d2q_frozen_x8[base]-seed1": scores(50.0, 60.0, 40.0),
        "d2q_frozen_shuffled_x8[base]-seed1": scores(45.0, 55.0, 35.0),
        "embedder[base]-seed1": scores(20.0, 30.0, 10.0),
    }
    store = tmp_path / "suite.json"
    store.write_text(json.dumps(cached))
    assert study.run_suite(stage2, "base", store) == cached  # all cached: nothing evaluated, no start[base]
    study.write_suite_table(cached, tmp_path / "suite.md")
    md = (tmp_path / "suite.md").read_text()
    assert "## Start: base (recipe d2q_frozen_x8, control d2q_frozen_shuffled_x8)" in md
    assert "| Stage I, frozen decoder + Stage II | 50.00 | 50.00 |" in md
    assert "| **own anchor − shuffled control** | +5.00 | +5.00 |" in md
    assert "| **own anchor − Stage II without Stage I** | +30.00 | +30.00 |" in md


def test_stage2_from_the_base_starts_from_the_untrained_model(tmp_path, monkeypatch):
    import bireco.core.runs
    import bireco.training.run

    study = experiment("anchor_reading/study.py")
    seen = []
    monkeypatch.setattr(bireco.training.run, "run", seen.append)
    monkeypatch.setattr(bireco.core.runs, "logged_curve", lambda run_dir: [(40, 0.5)])
    row = study.run_stage2(Path(study.BASE), "embedder-base-seed1", tmp_path, 1)
    assert seen[0].stage.init_from == "base" and row["start"] == "base"
    monkeypatch.setattr(
        "sys.argv", ["study.py", "--stage2-embedder", "--embedder", "base", "--embedder-label", "x"]
    )
    with pytest.raises(SystemExit, match="--embedder base goes with --embedder-label base"):
        study.main()


def test_full_ft_control_trains_every_weight_from_the_embedder(tmp_path, monkeypatch):
    """--stage2-embedder-full-ft: the demo's Stage II data and steps from the start, LoRA off, the full-parameter lr."""
    import bireco.core.runs
    import bireco.training.run

    study = experiment("anchor_reading/study.py")
    seen = []
    monkeypatch.setattr(bireco.training.run, "run", seen.append)
    monkeypatch.setattr(bireco.core.runs, "logged_curve", lambda run_dir: [(40, 0.5)])
    start = tmp_path / "start"
    row = study.run_stage2(start, "embedder_full_ft-x-seed3", tmp_path, 3, extra=study.FULL_FT)
    (cfg,) = seen
    assert cfg.stage.lora.enabled is False and cfg.stage.optim.lr == 3e-4
    assert cfg.trainer.max_steps == 40 and cfg.seed == 3 and cfg.stage.init_from == str(start.resolve())
    assert row["overrides"] == list(study.FULL_FT) and row["dev_ndcg10"] == [(40, 50.0)]
    baseline = study.run_stage2(start, "embedder-x-seed3", tmp_path, 3)
    assert (
        seen[1].stage.lora.enabled is True and seen[1].stage.optim.lr == 1e-3 and "overrides" not in baseline
    )


def test_controls_from_the_embedder_name_their_flag_when_it_is_missing(monkeypatch):
    study = experiment("anchor_reading/study.py")
    monkeypatch.setattr("sys.argv", ["study.py", "--stage2-embedder-full-ft", "--designs"])
    with pytest.raises(SystemExit, match="--stage2-embedder-full-ft: give --embedder PATH"):
        study.main()


def test_result_paths_stay_relative_when_outputs_is_a_symlink(tmp_path, monkeypatch):
    """outputs/ linked to another disk: results.json keeps `outputs/...`, not the link target's absolute path."""
    study = experiment("anchor_reading/study.py")
    elsewhere = tmp_path / "disk" / "runs"
    (elsewhere / "run-seed1").mkdir(parents=True)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "outputs").symlink_to(elsewhere)
    monkeypatch.chdir(repo)
    assert study.relative(Path("outputs/run-seed1")) == "outputs/run-seed1"
    assert study.relative(repo / "outputs" / "run-seed1" / ".." / "run-seed1") == "outputs/run-seed1"
    assert study.relative(elsewhere) == str(elsewhere)  # not below the working directory: absolute
