import os
import tempfile

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
