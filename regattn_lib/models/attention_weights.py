"""The authors' released attention weights: where they come from, and loading them checked.

They are the manifest entry ``official_attention`` (``datasets/manifest.json``): URL,
destination, size and sha256 come from there only. ``OFFICIAL_URL``, ``OFFICIAL_SHA256``,
``OFFICIAL_SIZE`` and ``OFFICIAL_RELPATH`` read that entry.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from regattn_lib.core.attention import (
    AttentionFileError,
    RegionalAttention,
    attention_from_state_dict,
)
from regattn_lib.datasets.downloads import download_entry
from regattn_lib.datasets.manifest import manifest_entry
from regattn_lib.runtime.atomic import sha256_file

#: Manifest key of the authors' released context-aware attention weights.
OFFICIAL_KEY = "official_attention"
_OFFICIAL_FIELDS = {
    "OFFICIAL_URL": "url",
    "OFFICIAL_SHA256": "sha256",
    "OFFICIAL_SIZE": "size",
    "OFFICIAL_RELPATH": "dest",
}


def official_entry() -> dict:
    """The manifest entry of the authors' weights (``url``, ``dest``, ``sha256``, ``size``)."""
    return manifest_entry(OFFICIAL_KEY)


def __getattr__(name: str):
    # OFFICIAL_URL / OFFICIAL_SHA256 / OFFICIAL_SIZE / OFFICIAL_RELPATH, from the manifest
    if name in _OFFICIAL_FIELDS:
        return official_entry()[_OFFICIAL_FIELDS[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fetch_official(data_root: str | os.PathLike | None) -> Path:
    """Download (or verify) the authors' weights into ``<data_root>/<dest>``; the lock file
    of that same data root records them."""
    return download_entry(OFFICIAL_KEY, data_root)


def load_official_attention(
    path: str | os.PathLike | None = None,
    *,
    data_root: str | os.PathLike | None = None,
    check_sha256: bool = True,
) -> RegionalAttention:
    """Load the authors' released context-aware attention (2048 channels, hidden 64, tanh).

    ``path=None`` takes the manifest entry ``official_attention`` in ``data_root`` (default
    ``paths.data_root()``): ``<data_root>/weights/ContextAwareRegionalAttention_weights.pth``,
    downloaded from the authors' commit URL (or ``$REGATTN_MIRROR``) when absent and checked
    against the manifest's size and sha256. A given ``path`` is checked against the
    manifest's sha256 (``check_sha256=True``, default) before it is unpickled
    (``weights_only=True``); then every tensor's shape is checked.
    """
    entry = official_entry()
    path = Path(path) if path is not None else _fetch_official(data_root)
    if not path.is_file():
        raise FileNotFoundError(f"attention weights not found: {path} (URL: {entry['url']})")
    expected = entry.get("sha256")
    if check_sha256 and expected:
        digest = sha256_file(path)
        if digest != expected:
            raise AttentionFileError(
                f"{path}: sha256 {digest} differs from the authors' release {expected}; "
                f"the file is corrupt or not the official one (URL: {entry['url']})"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a broken pickle
        raise AttentionFileError(f"{path}: cannot read attention weights: {e}") from e
    return attention_from_state_dict(state, source=str(path))
