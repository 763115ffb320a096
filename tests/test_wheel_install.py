"""The built wheel works without the source tree (slow): build it, install it into a fresh
virtualenv, and run ``hf-cf`` from outside the repository.

The virtualenv is made with ``--system-site-packages``, so torch, transformers, datasets ... come
from this environment and nothing is downloaded (``--no-index`` everywhere); the wheel is installed
with ``--no-deps --ignore-installed`` so that pip does not settle for the editable install it sees
in the system site-packages. Commands run with ``cwd`` outside the repository and without
``PYTHONPATH``, so ``import hf_counterfactual`` can only find the wheel's copy in the venv (which
comes before the system site-packages, and before the editable install's finder, on the path).

The wheel is built from a copy of the source tree (without build/, *.egg-info, .git, caches):
setuptools builds in place, and a stale ``build/lib`` in the working tree would put files in the
wheel that the sources no longer have, or race with another build of the same tree.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300
SHIPPED = ["configs/accelerate/multi_gpu.yaml", "configs/deepspeed/zero2.json", "configs/deepspeed/zero3.json"]


def run_command(cmd: list, env: dict[str, str], cwd: Path, timeout: int = TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    """Runs ``cmd`` in ``cwd``; fails the test showing its output if it times out or (``check``)
    exits non-zero."""
    cmd = [str(c) for c in cmd]
    line = " ".join(cmd)
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = [s.decode(errors="replace") if isinstance(s, bytes) else (s or "") for s in (err.stdout, err.stderr)]
        pytest.fail(f"timed out after {timeout} s: {line}\n--- stdout ---\n{out[0][-10000:]}\n--- stderr ---\n{out[1][-10000:]}")
    if check and proc.returncode != 0:
        pytest.fail(f"exit code {proc.returncode}: {line}\n--- stdout ---\n{proc.stdout[-10000:]}\n--- stderr ---\n{proc.stderr[-10000:]}")
    return proc


def shown(proc: subprocess.CompletedProcess) -> str:
    return f"exit code {proc.returncode}\n--- stdout ---\n{proc.stdout[-5000:]}\n--- stderr ---\n{proc.stderr[-5000:]}"


def setup_cfg_version() -> str:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return config["metadata"]["version"]


@pytest.fixture(scope="module")
def env(subprocess_env) -> dict[str, str]:
    """conftest's subprocess environment (offline, the tests' HF_HOME), without anything that would
    put the source tree or another environment on the path."""
    env = {k: v for k, v in subprocess_env.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    return env


# What pip prints when the build backend itself is missing here (no setuptools; or setuptools older
# than 70.1 without the `wheel` package, which then has no bdist_wheel): a skip, not a failure.
MISSING_BACKEND = ("No module named 'setuptools'", "BackendUnavailable", "invalid command 'bdist_wheel'", "No module named 'wheel'")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, env) -> Path:
    if importlib.util.find_spec("pip") is None:
        pytest.skip("cannot build the wheel here: pip is not installed")
    root = tmp_path_factory.mktemp("wheel-build")
    source = root / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".cache", ".pytest_cache", ".benchmarks", "outputs", "runs"),
    )
    out = root / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, source]
    # Tried even when a build requirement looks absent: setuptools >= 70.1 builds wheels without
    # the `wheel` package that pyproject.toml still lists.
    proc = run_command(cmd, env, cwd=root, check=False)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        causes = [cause for cause in MISSING_BACKEND if cause in output]
        if causes or importlib.util.find_spec("setuptools") is None:
            pytest.skip(f"cannot build the wheel here (build requirements setuptools>=69, wheel): {causes or 'setuptools not installed'}")
        pytest.fail(f"building the wheel failed: {shown(proc)}")
    wheels = list(out.glob("hf_counterfactual-*.whl"))
    assert len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return wheels[0]


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel, env) -> Path:
    path = tmp_path_factory.mktemp("wheel-venv") / "venv"
    # No pip of its own (ensurepip may be absent, and costs seconds): the system's pip is on its
    # path through --system-site-packages, and installs into the venv it runs in.
    run_command([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", path], env, cwd=path.parent)
    python = path / "bin" / "python"
    cmd = [python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "--no-warn-script-location", wheel]
    run_command(cmd, env, cwd=path.parent)
    assert (path / "bin" / "hf-cf").is_file(), "the wheel installed no hf-cf console script"
    return path


def site_packages(venv: Path) -> Path:
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    return Path(purelib).resolve()


def test_wheel_ships_the_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in SHIPPED:
        assert f"hf_counterfactual/{config}" in names, f"{config} missing from {wheel.name}; see setup.cfg [options.package_data]"
    assert not [name for name in names if name.startswith(("tests/", "examples/", "benchmarks/"))]


def test_installed_package_is_the_wheels(venv, env, tmp_path):
    proc = run_command([venv / "bin" / "python", "-c", "import hf_counterfactual; print(hf_counterfactual.__file__)"], env, cwd=tmp_path)
    location = Path(proc.stdout.strip()).resolve()
    assert location.is_relative_to(site_packages(venv)), location
    assert not location.is_relative_to(REPO.resolve()), location


def test_version(venv, env, tmp_path):
    proc = run_command([venv / "bin" / "hf-cf", "--version"], env, cwd=tmp_path)
    assert proc.stdout.strip() == f"hf-cf (hf-counterfactual) {setup_cfg_version()}", shown(proc)


def test_configs_lists_the_shipped_files_inside_the_venv(venv, env, tmp_path):
    proc = run_command([venv / "bin" / "hf-cf", "configs"], env, cwd=tmp_path)
    paths = [Path(line) for line in proc.stdout.splitlines() if line.strip()]
    assert {p.name for p in paths} >= {"zero2.json", "zero3.json"}, shown(proc)
    root = site_packages(venv) / "hf_counterfactual"
    for path in paths:
        assert path.is_file(), path
        assert path.resolve().is_relative_to(root), path


def test_generate_help(venv, env, tmp_path):
    proc = run_command([venv / "bin" / "hf-cf", "generate", "--help"], env, cwd=tmp_path)
    assert "--coco_root" in proc.stdout, shown(proc)


def test_train_minimal_run_writes_model_card_and_results(venv, env, tmp_path):
    out = tmp_path / "out"
    cmd = [
        venv / "bin" / "hf-cf", "train",
        "--output_dir", out,
        "--num_train_scenes", "32",
        "--num_test_scenes", "8",
        "--num_train_epochs", "1",
        "--pretrain_epochs", "1",
        "--per_device_train_batch_size", "16",
        "--cache_dir", tmp_path / "cache",
        "--disable_tqdm", "True",
    ]  # fmt: skip
    proc = run_command(cmd, env, cwd=tmp_path)
    for name in ("config.json", "evaluation_results.json", "README.md"):
        assert (out / name).is_file(), f"{name} not written\n{shown(proc)}"
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "model-index:" in card, card[:2000]
    assert set(json.loads((out / "evaluation_results.json").read_text())) >= {"before", "after"}


def test_train_unknown_model_is_a_one_line_usage_error(venv, env, tmp_path):
    cmd = [venv / "bin" / "hf-cf", "train", "--model_name_or_path", "org/does-not-exist"]
    proc = run_command(cmd, env, cwd=tmp_path, check=False)
    assert proc.returncode == 2, shown(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-cf train: error:"), shown(proc)
