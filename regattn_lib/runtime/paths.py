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


def results_root(profile: str, root: str | os.PathLike | None = None) -> Path:
    """``results/<profile>/``: the argument, else ``$REGATTN_RESULTS``, else ``<repo>/results``."""
    if root is not None:
        base = Path(root)
    elif os.environ.get(RESULTS_ENV):
        base = Path(os.environ[RESULTS_ENV])
    else:
        base = REPO_ROOT / "results"
    return (base / profile).expanduser().resolve()
