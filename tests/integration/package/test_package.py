"""bireco as an installed package: a wheel carries its configs, and the console scripts run from any directory."""

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[3]


def test_wheel_install_has_configs_and_console_scripts(tmp_path):
    # build from a copy of the sources: an in-tree build/ would be reused and could carry stale modules
    src = tmp_path / "src"
    junk = shutil.ignore_patterns(
        ".git", "outputs", "build", "*.egg-info", "__pycache__", "wandb", ".ruff_cache", ".venv"
    )
    shutil.copytree(ROOT, src, ignore=junk)
    dist = tmp_path / "dist"
    build = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(dist),
        str(src),
    ]
    r = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next(dist.glob("bireco-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "bireco/conf/train.yaml",  # the top-level conf/ ships inside the package
        "bireco/conf/experiment/paper_llama32_1b.yaml",
        "bireco/conf/model/smollm2.yaml",
        "bireco/assets/debian_packages/pairs.jsonl.xz",
        "bireco/assets/python_api/LICENSE",
        "bireco/data/tables/builtin_tasks.yaml",
    } <= names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for field in ("Classifier: Intended Audience :: Science/Research", "Project-URL: Paper, https://arxiv.org/abs/2509.03020",
                  "Keywords:", "Author:"):  # fmt: skip
        assert field in meta, field
    # A fresh environment holding the wheel alone. Its dependencies come from the environment running the tests:
    # a .pth file names this interpreter's site-packages. (`venv --system-site-packages` would give the *base*
    # interpreter's, which on a new machine has none of them.) Plain path lines do not run that directory's own
    # .pth files, so the editable bireco of the test environment stays invisible and the wheel's is imported.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    venv_python = venv / "bin" / "python"
    venv_site = subprocess.run(
        [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    (Path(venv_site) / "bireco_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # this environment's pip installs into the new one (it has none of its own)
    install = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(venv_python),
        "install",
        "-q",
        "--no-deps",
        str(wheel),
    ]
    subprocess.run(install, check=True, timeout=300)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in subprocess_env().items() if k != "PYTHONPATH"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"

    def sh(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), cwd=empty, env=env, capture_output=True, text=True, timeout=600)

    where = sh("python", "-c", "import bireco.core.paths as p; print(p.CONF_DIR)")
    assert where.returncode == 0 and where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    r = sh("bireco-train", "--help")
    assert r.returncode == 0 and "== Configuration groups ==" in r.stdout, r.stderr[-2000:]
    assert (
        "_schema" not in r.stdout and "stage: baseline, contrastive, reconstruction\n" in r.stdout
    )  # no internals
    for script in ("bireco-eval", "bireco-export", "bireco-inspect"):
        r = sh(script, "--help")
        assert r.returncode == 0 and "== Config ==" in r.stdout and "checkpoint:" in r.stdout, (
            script,
            r.stderr[-2000:],
        )
        assert "Configuration groups" not in r.stdout and "trainer:" not in r.stdout, (
            script
        )  # training's groups
    assert sh("bireco-demo", "--help").returncode == 0
    # Hydra tab completion through the console scripts (bash: `eval "$(bireco-train -sc install=bash)"`)
    assert (
        "complete -o nospace -o default -F hydra_bash_completion bireco-train"
        in sh("bireco-train", "-sc", "install=bash").stdout
    )
    env["COMP_LINE"] = "bireco-train stage=re"
    assert sh("bireco-train", "-sc", "query=bash").stdout.split() == ["stage=reconstruction"]  # no *_schema
    env["COMP_LINE"] = "bireco-eval refe"
    assert "reference=" in sh("bireco-eval", "-sc", "query=bash").stdout.split()
    del env["COMP_LINE"]
    r = sh("bireco-train", "stage=reconstruction", "trainer.max_steps=2", "data.global_batch_size=4",
           "data.max_train_records=32", "trainer.enable_progress_bar=false")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert (empty / "outputs" / "default" / "default" / "stage1" / "final" / "bireco.json").is_file()


def test_users_own_presets_join_through_hydras_search_path(tmp_path):
    """A user's config directory beside the shipped ones (the README's `hydra.searchpath` line)."""
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "my_preset.yaml").write_text(
        "# @package _global_\nexperiment_name: mine\nseed: 7\n"
    )
    cmd = [sys.executable, "-m", "bireco.train", f"hydra.searchpath=[file://{tmp_path}]", "experiment=my_preset",
           "--cfg", "job", "--resolve"]  # fmt: skip
    r = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "experiment_name: mine" in r.stdout and "seed: 7" in r.stdout
