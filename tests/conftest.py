import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the tests' shared helpers (reference_case.py) import as top-level modules
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session", autouse=True)
def temporary_data_and_results(tmp_path_factory):
    """Every test, and every process a test starts, uses a temporary data root and results
    root (``$REGATTN_DATA``, ``$REGATTN_RESULTS``): the repository's ``data/`` and ``results/``
    are never written. One pair per session, so the smoke set is generated once."""
    names = ("REGATTN_DATA", "REGATTN_RESULTS")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["REGATTN_DATA"] = str(tmp_path_factory.mktemp("data"))
    os.environ["REGATTN_RESULTS"] = str(tmp_path_factory.mktemp("results"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def official_weights() -> Path:
    """The authors' released attention weights, from the ``shared/`` copy beside the checkout."""
    for base in (REPO / "shared", REPO.parent / "shared"):
        p = base / "official" / "ContextAwareRegionalAttention_weights.pth"
        if p.is_file():
            return p
    pytest.skip("the authors' attention weights are not beside this checkout (../shared/official)")
