"""The registry of methods: one label and one head factory per method, used everywhere."""

import argparse

import pytest
import torch

from regattn_lib.apps.cli import build_parser
from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.whitening import learn_pca_whitening
from regattn_lib.experiments import pipeline as P
from regattn_lib.experiments.reports import PAPER_ABLATION, PAPER_SOTA
from regattn_lib.extraction import methods as M
from regattn_lib.extraction.heads import GlobalHead, RegionalHead

C = 8


def _inputs():
    torch.manual_seed(0)
    feats = torch.rand(2, C, 6, 5) + 0.01  # after ReLU: non-negative, no all-zero map
    images = torch.zeros(2, 3, 6 * 32, 5 * 32, dtype=torch.uint8)
    whitening = learn_pca_whitening(torch.randn(50, C), n_components=4)
    attention = {
        k: RegionalAttention(C, hidden=4, context=k.endswith("context")).eval()
        for k in ("regional", "context", "metric-regional", "metric-context")
    }
    return feats, images, whitening, attention


@pytest.mark.parametrize("name", list(M.METHODS))
def test_every_registered_method_builds_a_working_head(name):
    feats, images, whitening, attention = _inputs()
    m = M.METHODS[name]
    head = m.build(
        levels=2,
        whitening=whitening,
        attention=attention.get(m.attention_kind),
        fc_weight=torch.randn(5, C),
    )
    assert head.name == m.label
    assert isinstance(head, GlobalHead if m.family == "global" else RegionalHead)
    with torch.no_grad():
        out = head(feats, images)
    # whitened methods come out in the whitening's 4 dimensions, the others in C; unit norm
    assert out.shape == (2, 4 if m.whitened else C)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    assert (head.whitening is not None) == m.whitened
    assert (getattr(head, "attention", None) is not None) == (m.attention_kind is not None)


def test_labels_are_unique_and_names_and_labels_resolve():
    labels = [m.label for m in M.METHODS.values()]
    assert len(set(labels)) == len(labels)
    for name, m in M.METHODS.items():
        assert M.method(name) is m and M.method(m.label) is m and M.label(name) == m.label
    with pytest.raises(KeyError, match="rmac"):
        M.method("no-such-method")


def test_attention_methods_refuse_to_build_without_attention():
    for name in ("regional", "context"):
        with pytest.raises(ValueError, match=name):
            M.build_head(name, levels=2)


def test_cli_method_choices_are_the_registry_names():
    ev = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices["eval"]
    methods = next(a for a in ev._actions if a.dest == "methods")
    assert list(methods.choices) == list(M.METHODS)


def test_table_labels_are_the_papers():
    assert (P.RMAC, P.REGIONAL, P.CONTEXT) == tuple(PAPER_ABLATION["method"])
    assert [M.label(n) for n in M.ABLATION_METHODS] == list(PAPER_ABLATION["method"])
    paper_sota = set(PAPER_SOTA["method"])
    # our SOTA rows are the paper's, plus the baselines the paper's table lacks (MAC, SPoC) and
    # ours learned by metric learning (beyond the paper)
    assert set(M.SOTA_ROWS) - paper_sota == {"MAC", "SPoC", "Ours (metric learning)"}
    assert [M.label(n) for n in M.METRIC_METHODS] == [
        "+ regional attention (metric learning)",
        "+ context awareness (metric learning)",
    ]


def test_registry_heads_keep_the_cache_keys_of_the_heads_built_by_hand():
    # the same descriptor as before the registry: cached descriptors stay valid
    _, _, whitening, attention = _inputs()
    by_hand = {
        "rmac": RegionalHead(levels=3, whitening=whitening),
        "rmac-nowhiten": RegionalHead(levels=3),
        "context": RegionalHead(levels=3, attention=attention["context"], whitening=whitening),
        "crow": GlobalHead(pooling="crow", whitening=whitening),
    }
    for name, head in by_hand.items():
        built = M.build_head(
            name,
            levels=3,
            whitening=whitening,
            attention=attention.get(M.METHODS[name].attention_kind),
        )
        assert built.cache_key() == head.cache_key()
    assert (
        M.build_head("rmac", levels=3).cache_key()
        != M.build_head("rmac", levels=3, whitening=whitening).cache_key()
    )
