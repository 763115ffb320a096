import os
import tempfile
from pathlib import Path

# No test may reach a hub: fail fast instead of retrying DNS.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# A fresh cache for the session, set before datasets is imported (it reads the cache path at import,
# so the per-test HF_HOME below does not move it): a developer's cache must not leak into the tests.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf-counterfactual-tests-")
os.environ.pop("HF_DATASETS_CACHE", None)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory) -> dict[str, str]:
    """The environment of the multi-process tests' subprocesses: offline, a test HF_HOME, one
    thread per process (2 processes on a small machine), DeepSpeed ops built once into the repo's
    gitignored .cache."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path_factory.getbasetemp() / "hf_home"),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions"))
    return env
