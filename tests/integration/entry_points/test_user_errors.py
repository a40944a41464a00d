"""Bad inputs a user meets end in one line naming the fix, before anything is written (issue: what a user meets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from bireco.core.errors import ConfigError
from bireco.training.run import run

TINY = ["trainer.max_steps=1", "data.global_batch_size=4"]


@pytest.fixture
def pairs(tmp_path) -> list[str]:
    """Sixteen small pairs as data=jsonl (WordNet would load 133k records per run)."""
    data = tmp_path / "data" / "pairs.jsonl"
    data.parent.mkdir()
    data.write_text(
        "".join(json.dumps({"query": f"word {i}", "positive": f"a gloss {i}"}) + "\n" for i in range(16))
    )
    return ["data=jsonl", f"data.path={data}"]


def test_a_run_directory_of_another_model_is_never_reused(cfg_factory, tmp_path, pairs):
    """Stage I of one model, then Stage I of another model in the same directory: refused (it silently replaced
    the first); a Stage II of that other model never starts from the first model's Stage I."""
    run(cfg_factory("stage=reconstruction", *TINY, *pairs))
    stage1 = tmp_path / "out" / "default" / "default" / "stage1"
    before = (stage1 / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="holds a run of model tiny_llama.*variant=NAME"):
        run(cfg_factory("stage=reconstruction", "model=tiny_qwen2", *TINY, *pairs))
    assert (stage1 / "config.yaml").read_text() == before
    with pytest.raises(
        ConfigError, match="Stage I at .* trained model tiny_llama.*this Stage II is tiny_qwen2"
    ):
        run(cfg_factory("stage=contrastive", "model=tiny_qwen2", *TINY, *pairs))
    assert not (tmp_path / "out" / "default" / "default" / "stage2").exists()
    run(
        cfg_factory("stage=reconstruction", "model=tiny_qwen2", "variant=qwen", *TINY, *pairs)
    )  # its own directory


def _refused(cfg_factory, tmp_path, match: str, *overrides: str) -> None:
    with pytest.raises(ConfigError, match=match):
        run(cfg_factory(*overrides))
    assert not (tmp_path / "out").exists()  # nothing written


def test_too_few_records_for_one_global_batch(cfg_factory, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": f"q{i}", "positive": f"d{i}"}) + "\n" for i in range(41)))
    _refused(cfg_factory, tmp_path, f"41 training records in {data} make no complete global batch",
             "stage=reconstruction", "data=jsonl", f"data.path={data}", "trainer.max_steps=1")  # fmt: skip


def test_a_missing_resume_checkpoint(cfg_factory, tmp_path):
    _refused(
        cfg_factory, tmp_path, "resume='/nope/x.ckpt': no such checkpoint file", "resume=/nope/x.ckpt", *TINY
    )


def test_max_lengths_too_short_for_the_template_and_instruction(cfg_factory, tmp_path):
    _refused(cfg_factory, tmp_path, "data.max_query_length=4 is too short for model=tiny_llama",
             "data.max_query_length=4", *TINY)  # fmt: skip


@pytest.mark.parametrize("entry", ["inspect", "evaluate", "export"])
def test_a_missing_checkpoint_is_one_line(entry, tmp_path):
    args = {"inspect": ["text=dog"], "evaluate": ["tasks=[WordNetDefinitionsRetrieval]"],
            "export": [f"output={tmp_path / 'st'}"]}[entry]  # fmt: skip
    cmd = [sys.executable, "-m", f"bireco.{entry}", f"checkpoint={tmp_path / 'nope'}", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(), timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"Error: {tmp_path / 'nope'}: no such checkpoint directory" in r.stderr
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == []


def test_make_export_without_out_names_the_variable():
    r = subprocess.run(["make", "-s", "export"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[3], timeout=60)  # fmt: skip
    assert r.returncode != 0 and "make export needs OUT=" in r.stdout + r.stderr
