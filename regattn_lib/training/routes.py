"""The two ways to the attention's frozen fc, as entry points (see ``loop`` for the recipe):

(a) ``train_fc`` then ``train_attention`` with that fc; (b) ``train_attention`` under the
backbone's own ImageNet fc1000. ``train_from_folder`` runs either on an ImageFolder split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

from torch import nn

from regattn_lib.datasets.imagenet import imagenet_split
from regattn_lib.training.augment import remap_labels
from regattn_lib.training.config import TrainConfig
from regattn_lib.training.loop import TrainResult, train


def train_fc(
    paths: Sequence[str | os.PathLike],
    labels: Sequence[int],
    val_paths: Sequence[str | os.PathLike],
    val_labels: Sequence[int],
    backbone: nn.Module,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    classes: Sequence[str] | None = None,
) -> TrainResult:
    """Route (a), first step: train a new fc on the frozen backbone with alpha = 1.

    Parameters as :func:`loop.train`; ``cfg.stage`` is set to ``'fc'``. The fc ends up in
    ``out_dir/fc.pt`` (reload with :func:`checkpoint.load_trained_fc`) and in ``result.module``.
    """
    cfg = replace(cfg, stage="fc")
    return train(
        paths, labels, val_paths, val_labels, backbone, cfg, out_dir, None, resume, classes
    )


def train_attention(
    paths: Sequence[str | os.PathLike],
    labels: Sequence[int],
    val_paths: Sequence[str | os.PathLike],
    val_labels: Sequence[int],
    backbone: nn.Module,
    fc: nn.Linear | str | os.PathLike | None,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    classes: Sequence[str] | None = None,
) -> TrainResult:
    """Train the attention with ``fc`` frozen (route (a) second step, or route (b)).

    Parameters as :func:`loop.train`; ``fc=None`` uses the backbone's own ImageNet fc1000 and
    raises a clear error when it has none (the Caffe ResNet-101). The attention ends up in
    ``out_dir/attention.pt`` (reload with :func:`checkpoint.load_trained_attention`).
    """
    cfg = replace(cfg, stage="attention")
    return train(paths, labels, val_paths, val_labels, backbone, cfg, out_dir, fc, resume, classes)


def train_from_folder(
    data_root: str | os.PathLike | None,
    backbone: nn.Module,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    fc: nn.Linear | str | os.PathLike | None = None,
    fc_classes: Sequence[str] | None = None,
    resume: bool = False,
    name: str = "imagenet",
) -> TrainResult:
    """Train ``cfg.stage`` on the classification set ``name``'s ``train/<class>/*`` with its
    ``val/<class>/*``, found by :func:`datasets.imagenet.imagenet_split`.

    Parameters
    ----------
    data_root:
        Data root (``None``: ``paths.data_root``); the set lies in ``<data_root>/train/<name>``,
        except that ``$REGATTN_IMAGENET``, when set, names ImageNet's folder.
    backbone, cfg, out_dir, resume:
        As :func:`loop.train`.
    fc:
        Stage attention: as :func:`train_attention` (default ``None``: the backbone's fc).
    fc_classes:
        The fc's class names in output order (default ``None``). Given, the labels are remapped
        to them by name: an ImageNet subset can then train under the fc1000 with the 1000 sorted
        WordNet ids.
    name:
        ``'imagenet'`` (default) or a local classification set such as ``'synthetic-smoke-cls'``.

    Raises ``FileNotFoundError`` explaining the expected layout when a split is missing.
    """
    train_split = imagenet_split(data_root, "train", name)
    val_split = imagenet_split(data_root, "val", name)
    classes = train_split.classes
    labels, val_labels = train_split.labels, val_split.labels
    if val_split.classes != classes:
        where = train_split.class_to_idx
        unknown = [c for c in val_split.classes if c not in where]
        if unknown:
            raise ValueError(f"{val_split.root} has classes absent from train: {unknown[:5]}")
        val_labels = [where[val_split.classes[y]] for y in val_labels]
    if fc_classes is not None:
        labels = remap_labels(labels, classes, fc_classes)
        val_labels = remap_labels(val_labels, classes, fc_classes)
        classes = list(fc_classes)
    args = (train_split.paths, labels, val_split.paths, val_labels, backbone)
    if cfg.stage == "fc":
        return train_fc(*args, cfg, out_dir, resume, classes)
    return train_attention(*args, fc, cfg, out_dir, resume, classes)
