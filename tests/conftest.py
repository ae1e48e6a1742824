import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the tests' shared helpers (reference_case.py) import as top-level modules
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def official_weights() -> Path:
    """The authors' released attention weights, from the ``shared/`` copy beside the checkout."""
    for base in (REPO / "shared", REPO.parent / "shared"):
        p = base / "official" / "ContextAwareRegionalAttention_weights.pth"
        if p.is_file():
            return p
    pytest.skip("the authors' attention weights are not beside this checkout (../shared/official)")
