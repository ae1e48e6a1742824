"""The registry of retrieval methods: one name, one display label and one head factory each.

Every table, the command line and the explorer build their descriptor heads here, so a method
is built one way and shown under one label. Names are what the command line accepts
(``--methods``); labels are the row labels of the tables (the paper's spellings: the ablation's
"R-MAC + PCA", "+ regional attention", "+ context awareness"; the baselines' MAC, SPoC, CroW,
CAM). The state-of-the-art table names its rows as the paper's does: ``SOTA_ROWS``.

Query expansion is not a method here: it re-ranks any method's descriptors (``pipeline.rank``).
The heads that are not retrieval methods come from here too: the raw vectors a whitening is
learned on (``whitening_head``) and the attention-only heads of the figures
(``attention_head``). No head is constructed anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.descriptor import AttentionFn, RegionFn
from regattn_lib.core.whitening import PCAWhitening
from regattn_lib.extraction.heads import GlobalHead, Head, RegionalHead, RegionalVectorsHead


@dataclass(frozen=True)
class Method:
    """One retrieval method.

    ``family``: ``'regional'`` (R-MAC regions, optionally weighted by an attention model) or
    ``'global'`` (one pooling over the whole feature map); ``attention_kind``: the attention
    model the method needs (``'regional'`` or ``'context'``), ``None`` for none; ``pooling``:
    the global pooling (``'mac'``, ...), ``None`` for regional methods; ``whitened``: whether the
    method applies the whitening it is given.
    """

    name: str
    label: str
    family: str
    attention_kind: str | None = None
    pooling: str | None = None
    whitened: bool = True

    def build(
        self,
        *,
        levels: int = 3,
        whitening: PCAWhitening | None = None,
        attention: RegionalAttention | None = None,
        fc_weight: torch.Tensor | None = None,
        region_fn: RegionFn | None = None,
        region_source: str = "rmac-grid",
        stride: int = 32,
        name: str | None = None,
    ) -> Head:
        """The method's head, named by its label.

        Parameters: ``levels`` (R-MAC levels L, default 3; the profiles set it, paper 5);
        ``whitening`` (``None``: none; ignored by unwhitened methods); ``attention`` (required
        by, and only used by, methods with an ``attention_kind``); ``fc_weight`` (the
        backbone's ImageNet classifier (classes, C), required by CAM); ``region_fn`` and
        ``region_source`` (regional methods: regions other than the R-MAC grid, e.g. RPN
        proposals, and their name in the cache key); ``stride`` (regional methods: the
        backbone's input pixels per feature cell, default 32); ``name`` (the head's name,
        default the label).
        """
        if self.attention_kind is not None and attention is None:
            raise ValueError(f"method {self.name!r} needs a {self.attention_kind} attention model")
        w = whitening if self.whitened else None
        if self.family == "global":
            return GlobalHead(
                name=name or self.label, pooling=self.pooling, whitening=w, fc_weight=fc_weight
            )
        return RegionalHead(
            name=name or self.label,
            levels=levels,
            attention=attention if self.attention_kind is not None else None,
            whitening=w,
            region_fn=region_fn,
            region_source=region_source,
            stride=stride,
        )


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("rmac", "R-MAC + PCA", "regional"),
        Method("rmac-nowhiten", "R-MAC, no whitening", "regional", whitened=False),
        Method("regional", "+ regional attention", "regional", attention_kind="regional"),
        Method("context", "+ context awareness", "regional", attention_kind="context"),
        # beyond the paper: the same attention models learned by metric learning
        Method(
            "metric-regional",
            "+ regional attention (metric learning)",
            "regional",
            attention_kind="metric-regional",
        ),
        Method(
            "metric-context",
            "+ context awareness (metric learning)",
            "regional",
            attention_kind="metric-context",
        ),
        Method("mac", "MAC", "global", pooling="mac"),
        Method("spoc", "SPoC", "global", pooling="spoc"),
        Method("crow", "CroW", "global", pooling="crow"),
        Method("cam", "CAM", "global", pooling="cam"),
    )
}

#: Label -> method.
BY_LABEL: dict[str, Method] = {m.label: m for m in METHODS.values()}

#: The ablation's rows, in the paper's order.
ABLATION_METHODS = ("rmac", "regional", "context")
#: The attention learned by metric learning (beyond the paper), rows after the paper's.
METRIC_METHODS = ("metric-regional", "metric-context")
#: The state-of-the-art table's row labels (the paper's) -> the method of each row; "Ours" is
#: the context-aware model, else the regional one (the first of the tuple that is available).
SOTA_ROWS: dict[str, str | tuple[str, ...]] = {
    "MAC": "mac",
    "SPoC": "spoc",
    "CroW": "crow",
    "CAM": "cam",
    "R-MAC": "rmac",
    "Ours": ("context", "regional"),
    # beyond the paper: the same, learned by metric learning
    "Ours (metric learning)": ("metric-context", "metric-regional"),
}


def method(name_or_label: str) -> Method:
    """The method of a name (``'rmac'``) or a label (``'R-MAC + PCA'``); ``KeyError`` lists
    the names."""
    found = METHODS.get(name_or_label) or BY_LABEL.get(name_or_label)
    if found is None:
        raise KeyError(f"unknown method {name_or_label!r}; known: {', '.join(METHODS)}")
    return found


def label(name: str) -> str:
    """The display label of method ``name``."""
    return method(name).label


def build_head(name: str, /, **kwargs: Any) -> Head:
    """``method(name).build(**kwargs)``: the head of a method by name or label."""
    return method(name).build(**kwargs)


def method_of(attention: RegionalAttention | AttentionFn | None) -> str:
    """The regional method an attention model makes: ``'rmac'`` (none), ``'regional'`` or
    ``'context'``."""
    if attention is None:
        return "rmac"
    # a plain callable (k, g) -> alpha says nothing of context: it counts as regional
    return "context" if getattr(attention, "context", False) else "regional"


def whitening_head(
    kind: str, levels: int = 3, fc_weight: torch.Tensor | None = None, stride: int = 32
) -> Head:
    """The head whose outputs a whitening of ``kind`` is learned on: ``'regional'``, the raw
    regional max-pooled vectors at ``levels`` (authors: L = 3); a global pooling
    (``'mac'``, ``'spoc'``, ``'crow'``, ``'cam'``), its unwhitened L2-normalised vector
    (``fc_weight`` is used by CAM alone)."""
    if kind == "regional":
        return RegionalVectorsHead(levels=levels, stride=stride)
    m = method(kind)
    if m.family != "global":
        raise ValueError(f"no whitening is learned for {kind!r}; use 'regional' or a pooling")
    return m.build(whitening=None, fc_weight=fc_weight if kind == "cam" else None, name=kind)


def attention_head(
    attention: RegionalAttention | AttentionFn | None, levels: int = 5, stride: int = 32
) -> RegionalHead:
    """An unwhitened regional head weighted by ``attention`` (``None``: R-MAC): what the figures
    read alpha and regions from."""
    name = "rmac-nowhiten" if attention is None else method_of(attention)
    head = method(name).build(levels=levels, attention=attention, stride=stride, name=name)
    return head


def with_whitening(head: Head, whitening: PCAWhitening | None) -> Head:
    """The same head with another whitening (a crosswise whitening's one for a test set)."""
    return replace(head, whitening=whitening)


def with_attention(head: RegionalHead, attention: RegionalAttention | None) -> RegionalHead:
    """The same regional head weighted by another attention (another seed's weights)."""
    return replace(head, attention=attention)
