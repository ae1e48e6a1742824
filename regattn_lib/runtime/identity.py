"""Identities for cache keys: what a cached artefact was made with, as short digests.

One home for every identity a cache key holds: a backbone (its name and the weights and input
convention it runs with), a module's weights, a whitening, a list of names, a generated folder's
generator version, and the key itself. Two caches made with anything different get different
keys; equal settings always find the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn


def backbone_name(backbone: nn.Module) -> str:
    """The backbone's registry name (``'efficientnet-lite0'``), else its class name."""
    return getattr(backbone, "name", type(backbone).__name__)


def backbone_weights_id(backbone: nn.Module) -> str | None:
    """The identity of the weights and input convention a backbone runs with: its ``cache_id``
    (``models.backbones.Backbone.cache_id``), else its ``weights_id``, else ``None``."""
    return getattr(backbone, "cache_id", getattr(backbone, "weights_id", None))


def fc_weight(backbone: nn.Module) -> Any:
    """The backbone's ImageNet classifier weight (classes, C), detached, or ``None`` when it
    has no fc (the Caffe ResNet-101): what CAM pooling needs."""
    fc = getattr(backbone, "fc", None)
    return None if fc is None else fc.weight.detach()


def module_digest(module: nn.Module) -> str:
    """A short sha256 of a module's state dict (names and values): the weights' identity in
    cache keys and checkpoints."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def whitening_digest(whitening: Any) -> str | None:
    """A short sha256 of a whitening's mean and projection (``core.whitening.PCAWhitening``),
    ``None`` for none."""
    if whitening is None:
        return None
    h = hashlib.sha256(whitening.mean.numpy().tobytes())
    h.update(whitening.projection.numpy().tobytes())
    return h.hexdigest()[:16]


def list_digest(items: Sequence[Any]) -> str:
    """Short sha256 of a list (names, boxes) for cache keys: every element counts."""
    return hashlib.sha256(json.dumps([str(i) for i in items]).encode()).hexdigest()[:16]


def content_stamp(folder: str | os.PathLike | None) -> str | None:
    """What a generated image folder's names do not say: the generator, its version, the seed
    and a digest of the config from the ``meta.json`` a synthetic set carries (images of one
    name change with any of them), so a cache of another version, seed or config is never
    reused. ``None`` for downloaded sets."""
    meta = None if folder is None else Path(folder) / "meta.json"
    if meta is None or not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    config = cache_key({"config": info.get("config")})
    return f"{info.get('generator')}@{info.get('version')} seed {info.get('seed')} config {config}"


def cache_key(parts: Mapping[str, Any]) -> str:
    """A 16-hex-digit key of a mapping of settings (sorted, JSON): a cache file's name."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
