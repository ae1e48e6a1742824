"""Where data and results live. Nothing is read at import time."""

from __future__ import annotations

import os
from pathlib import Path

#: The repository checkout this package sits in (``regattn_lib/runtime/../..``).
REPO_ROOT = Path(__file__).resolve().parents[2]

DATA_ENV = "REGATTN_DATA"
RESULTS_ENV = "REGATTN_RESULTS"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else ``$REGATTN_DATA``, else ``<repo>/data``.

    The repository's ``data/`` is used rather than the working directory's so that a notebook
    finds the same data whatever folder it is started from.
    """
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return REPO_ROOT / "data"


def results_root(
    profile: str, root: str | os.PathLike | None = None, data: str | os.PathLike | None = None
) -> Path:
    """``results/<profile>/``: under the argument ``root``, else ``$REGATTN_RESULTS``, else beside
    the run's data root (``<data root>/../results``: the repository's ``results/`` for its
    ``data/``).

    A run rooted elsewhere (a rehearsal, a benchmark, a data root on another disk) thus writes
    its results beside its own data, never into the repository; ``run_all.sh`` names the
    repository's ``results/`` explicitly.
    """
    if root is not None:
        base = Path(root)
    elif os.environ.get(RESULTS_ENV):
        base = Path(os.environ[RESULTS_ENV])
    else:
        base = data_root(data).parent / "results"
    return (base / profile).expanduser().resolve()
