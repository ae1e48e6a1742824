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


# The test files that take longest (on 2 Intel Xeon cores: the paper rehearsal ~220 s, the
# smoke series ~190 s, the quick rehearsal ~160 s, the interrupted rehearsal ~90 s). Under
# `pytest -n 2 --dist loadfile --no-loadscope-reorder` (run_tests.sh) a file runs on one worker
# (a module-scoped fixture is built once) and files are handed out in collection order, two to
# each worker at the start: these first, paired so that the workers carry about the same load
# (run + interrupted, series + quick), then the rest to whichever worker is free. (Without
# --no-loadscope-reorder xdist sorts files by their number of tests, so these one-test files
# came last; its loadgroup does not group under pytest 9.)
HEAVY_FILES = (
    "test_rehearsal_run.py",
    "test_notebooks.py",
    "test_rehearsal_resume.py",
    "test_rehearsal_quick.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The heavy files first (HEAVY_FILES), the rest as collected; sorted() is stable, so the
    order within a file, and in every worker, is unchanged."""
    rank = {name: i for i, name in enumerate(HEAVY_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FILES)))
