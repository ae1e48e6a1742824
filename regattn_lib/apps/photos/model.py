"""What a folder of one's own photos is described with.

A profile's backbone, its attention (shipped with the repository, trained here or the authors'
release) and its whitening (shipped or cached), each falling back to "none" with a note that
says so. Photos are read by ``datasets.images.read_photo``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.whitening import CrosswiseWhitening, PCAWhitening
from regattn_lib.experiments.pipeline import Context
from regattn_lib.experiments.profiles import Profile, get_profile, seed_data_root
from regattn_lib.extraction import methods
from regattn_lib.extraction.heads import RegionalHead
from regattn_lib.runtime.environment import resolve_device, resolve_precision
from regattn_lib.runtime.identity import backbone_name, backbone_weights_id
from regattn_lib.runtime.paths import data_root as resolve_data_root
from regattn_lib.runtime.paths import results_root

#: Descriptor methods a folder can be indexed with: the rows of the paper's ablation, and the
#: attention learned by metric learning (beyond the paper).
PHOTO_METHODS = ("rmac", "regional", "context", "metric-regional", "metric-context")
#: Weights the repository ships, per profile: ``assets/<profile>/attention_<kind>.pt`` and
#: ``assets/<profile>/whitening.pt``; looked at before anything trained or downloaded.
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "assets"


def shipped_weights(profile: str, name: str) -> Path | None:
    """``regattn_lib/assets/<profile>/<name>`` when the repository ships it, else ``None``.

    ``name``: ``attention_regional.pt``, ``attention_context.pt`` (training artefacts) or
    ``whitening.pt`` (a saved ``PCAWhitening``).
    """
    f = SHIPPED_DIR / profile / name
    return f if f.is_file() else None


@dataclass
class PhotoModel:
    """Backbone + descriptor head used for a folder, and where each part came from.

    ``method``: the method in use after any fallback; ``attention_source`` and
    ``whitening_source`` name the weights (or "none"); ``notes``: the fallbacks taken.
    """

    profile: Profile
    method: str
    backbone: torch.nn.Module
    head: RegionalHead
    device: torch.device
    precision: str
    attention_source: str
    whitening_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def min_side(self) -> int:
        """Shortest original side a photo needs: the profile's (``whitening_min_side``)."""
        from regattn_lib.experiments.pipeline import whitening_min_side

        return whitening_min_side(self.profile)

    def key(self) -> dict[str, Any]:
        """Everything that changes a descriptor (cache key of a folder's index)."""
        return {
            "backbone": backbone_name(self.backbone),
            "weights": backbone_weights_id(self.backbone),
            "image_size": self.profile.image_size,
            "precision": self.precision,
            "min_side": self.min_side,
            **self.head.cache_key(),
        }

    def describe(self) -> str:
        """One line: backbone and weights, attention, whitening, size, levels, device."""
        bb = self.backbone
        weights = str(getattr(bb, "weights_id", "?"))[:12]
        return (
            f"backbone {backbone_name(bb)} (weights sha256 {weights}...); "
            f"attention: {self.attention_source}; whitening: {self.whitening_source}; "
            f"{self.profile.image_size} px, L = {self.head.levels}, {self.precision} on "
            f"{self.device.type}"
        )


def _context(profile: Profile, data_root: str | os.PathLike | None, device: str) -> Context:
    # a Context without results folders: a search never creates results/<profile>/
    root = resolve_data_root(data_root)
    res = results_root(profile.run_name, data=root)
    return Context(
        profile,
        seed_data_root(profile, root),
        res,
        resolve_device(device),
        {"models": res / "models"},
    )


def _attention(ctx: Context, kind: str, notes: list[str]) -> tuple[RegionalAttention | None, str]:
    from regattn_lib.experiments import pipeline
    from regattn_lib.training.checkpoint import load_trained_attention

    f = shipped_weights(ctx.profile.name, f"attention_{kind}.pt")
    try:
        if f is not None:
            att, source = load_trained_attention(f), f"{kind}, shipped ({f.name})"
        else:
            att = pipeline.load_attention(ctx, kind)
            source = f"{kind}, {pipeline.provenance(att)}"
    except (FileNotFoundError, OSError, ValueError, RuntimeError) as e:
        notes.append(f"{e}; falling back to R-MAC without attention")
        return None, "none (R-MAC)"
    channels = getattr(ctx.backbone, "channels", att.in_channels)
    if att.in_channels != channels:
        notes.append(
            f"the {kind} attention has {att.in_channels} channels, the backbone "
            f"{channels}; using R-MAC without attention"
        )
        return None, "none (R-MAC)"
    return att.to(ctx.device).eval(), source


def _whitening(ctx: Context, notes: list[str]) -> tuple[PCAWhitening | None, str]:
    from regattn_lib.experiments import pipeline

    f = shipped_weights(ctx.profile.name, "whitening.pt")
    if f is not None:
        w = PCAWhitening.load(f)
        return w, f"PCA {w.in_dim} -> {w.out_dim}, shipped ({f.name})"
    # cached only, and never a download of the whitening images (SfM-120k is 20 GB)
    offline = replace(ctx.with_backbone(ctx.backbone), profile=replace(ctx.profile, download=False))
    try:
        w = pipeline.learn_whitening(offline, progress=False, cached_only=True)
    except (FileNotFoundError, OSError, ValueError) as e:
        notes.append(
            f"no cached whitening for profile {ctx.profile.name!r} ({str(e)[:200]}); "
            "descriptors are not whitened"
        )
        return None, "none"
    if isinstance(w, CrosswiseWhitening):  # own photos: the first test set's whitening
        first = ctx.profile.datasets[0]
        w = w.for_dataset(first)
        return (
            w,
            f"PCA {w.in_dim} -> {w.out_dim}, cached (crosswise: {first}'s, {w.meta.get('set')})",
        )
    return w, f"PCA {w.in_dim} -> {w.out_dim}, cached ({ctx.profile.whitening_set})"


def load_photo_model(
    profile: str | Profile = "demo",
    method: str = "context",
    device: str = "auto",
    data_root: str | os.PathLike | None = None,
) -> PhotoModel:
    """The backbone and head of ``profile`` for ``method``, with fallbacks named in ``notes``.

    ``profile``: ``demo`` (EfficientNet-Lite0, default) or ``paper`` (the authors' ResNet-101
    and released context attention), or a ``Profile``. ``method``: ``rmac``, ``regional``,
    ``context`` (default), or ``metric-regional`` / ``metric-context`` (learned by metric
    learning, beyond the paper). The attention is looked for in :func:`shipped_weights`, then where
    ``pipeline.load_attention`` finds it; missing (or of another channel count) it falls back
    to R-MAC. The whitening: shipped, else the profile's cached one, else none.
    """
    if method not in PHOTO_METHODS:
        raise ValueError(f"method must be one of {PHOTO_METHODS}, got {method!r}")
    prof = get_profile(profile)
    ctx = _context(prof, data_root, device)
    notes: list[str] = []
    att, att_source = (None, "none (R-MAC)") if method == "rmac" else _attention(ctx, method, notes)
    white, white_source = _whitening(ctx, notes)
    name = method if att is not None else "rmac"
    head = methods.build_head(name, levels=prof.levels, attention=att, whitening=white, name=name)
    return PhotoModel(
        prof,
        head.name,
        ctx.backbone.eval(),
        head,
        ctx.device,
        resolve_precision(prof.precision, ctx.device),
        att_source,
        white_source,
        notes,
    )
