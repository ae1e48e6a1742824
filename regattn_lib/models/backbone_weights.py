"""The backbones' weight files: where they live, downloading them, reading and strict loading.

ResNet weight files live in ``<data_root>/weights/`` at their manifest destination and are
downloaded there on first use (``ensure_weights``); EfficientNet-Lite0's ship in a package.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from regattn_lib.runtime.atomic import sha256_file
from regattn_lib.runtime.paths import data_root as _data_root


class WeightsError(RuntimeError):
    """A weights file that cannot be used: unreadable, corrupt, or not matching the network."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """A weights file that is absent and could not (or may not) be downloaded."""


#: Backbone name -> key of its weights file in ``regattn_lib/datasets/manifest.json``, the one
#: registry of downloads (URL, destination under the data root, sha256 or hash prefix, size).
#: A manifest ``sha256_prefix`` (the hash prefix torch hub puts in a file name; torchvision
#: loads its files with ``check_hash=True``) is also checked on a file already present.
WEIGHTS: dict[str, str] = {
    "caffe-resnet101": "caffe_resnet101_features",
    "torchvision-resnet101": "torchvision_resnet101",
}

# (resolved path, size, mtime_ns) -> sha256; hashing a 170 MB file costs ~0.5 s, once is enough.
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def weights_sha256(path: str | os.PathLike) -> str:
    """sha256 of a weights file, computed once per (path, size, mtime) and cached in-process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA256_CACHE:
        _SHA256_CACHE[key] = sha256_file(p)
    return _SHA256_CACHE[key]


def _weights_entry(name: str) -> dict:
    """The manifest entry of backbone ``name``'s weights file (``KeyError`` for Lite0)."""
    from regattn_lib.datasets.manifest import manifest_entry

    if name not in WEIGHTS:
        raise KeyError(
            f"no downloadable weights file for backbone {name!r}; known: {list(WEIGHTS)}"
        )
    return manifest_entry(WEIGHTS[name])


def default_weights_path(name: str, data_root: str | os.PathLike | None = None) -> Path:
    """``<data_root>/<dest>`` of a ResNet backbone's manifest entry (``weights/<file name>``).

    Args:
        name: ``'caffe-resnet101'`` or ``'torchvision-resnet101'``.
        data_root: data root; ``None`` means ``$REGATTN_DATA``, else ``<repo>/data``.
    """
    return _data_root(data_root) / _weights_entry(name)["dest"]


def _not_found_message(entry: dict, dest: Path, why: str) -> str:
    return (
        f"weights file {dest} is missing ({why}). Download it from {entry['url']} and place it "
        f"at exactly {dest} (or pass weights_path=...)."
    )


def ensure_weights(
    name: str, *, data_root: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """Path of a ResNet backbone's weights file, downloading it on first use.

    Args:
        name: ``'caffe-resnet101'`` or ``'torchvision-resnet101'``.
        data_root: data root (default ``$REGATTN_DATA``, else ``<repo>/data``); the file lives
            at its manifest destination there (``<data_root>/weights/``).
        download: fetch the file when absent (default ``True``), through
            ``downloads.download_entry``: checked against the manifest's hash (or prefix) and
            size, recorded in ``<data_root>/downloads.lock.json``, fetched from
            ``$REGATTN_MIRROR`` when set. When ``False`` an absent file raises.

    Raises:
        WeightsNotFoundError: the file is absent and could not be downloaded; the message gives
            the URL and the exact path to place the file at.
        WeightsError: the file's sha256 does not match its name's hash prefix.
    """
    from regattn_lib.datasets import downloads

    entry = _weights_entry(name)
    dest = default_weights_path(name, data_root)
    if not dest.exists():
        if not download:
            raise WeightsNotFoundError(_not_found_message(entry, dest, "download=False"))
        try:
            downloads.download_entry(WEIGHTS[name], data_root)
        except Exception as e:  # DownloadError, or an OSError from the network stack
            raise WeightsNotFoundError(
                _not_found_message(entry, dest, f"download failed: {e}")
            ) from e
    _check_hash_prefix(entry, dest)
    return dest


def _check_hash_prefix(entry: dict, path: Path) -> None:
    prefix = entry.get("sha256_prefix")
    if prefix and not weights_sha256(path).startswith(prefix):
        raise WeightsError(
            f"weights file {path} has sha256 {weights_sha256(path)}, which does not start with "
            f"{prefix} as its name says: the file is corrupt or a different file. "
            f"Delete it and download it again from {entry['url']}."
        )


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(..., weights_only=True)`` onto the CPU.

    A ``{'state_dict': ...}`` checkpoint is unwrapped. Raises ``WeightsNotFoundError`` for a
    missing file and ``WeightsError`` naming the file when it is truncated, corrupt or not a
    state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, EOF...: all mean "unusable file"
        raise WeightsError(
            f"cannot read weights file {path} (truncated or corrupt?): {type(e).__name__}: {e}. "
            "Delete it so that it is downloaded again, or replace it with a good copy."
        ) from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return dict(obj)


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module``, every key accounted for.

    Missing ``num_batches_tracked`` buffers are tolerated: files saved before PyTorch 0.4.1 lack
    them and BatchNorm fills them in. Raises ``WeightsError`` naming ``source`` and listing the
    missing and unexpected keys, or the shape mismatch.
    """
    try:
        result = module.load_state_dict(dict(state_dict), strict=False)
    except RuntimeError as e:  # size mismatches raise even with strict=False
        raise WeightsError(f"weights from {source} do not fit the network: {e}") from e
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise WeightsError(
            f"weights from {source} do not match the network: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
