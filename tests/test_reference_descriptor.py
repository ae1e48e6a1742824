"""The paper's descriptor pinned to exact values, and the library against the usual pipeline.

The stored expectation (``tests/data/reference_descriptor.json``) was computed once by the
independent usual pipeline (``benchmarks/usual_pipeline.py``) on a formula-defined
2048-channel feature map with the authors' released attention weights and a fixed whitening
(``tests/reference_case.py``). Both the usual pipeline and the library must reproduce it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference_case import (
    EXPECTED,
    HEIGHT,
    LEVELS,
    SAMPLED,
    WIDTH,
    compute_expected,
    fixed_feature_map,
    fixed_whitening,
    usual_pipeline,
)

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.descriptor import describe_feature_map
from regattn_lib.core.regions import rmac_regions
from regattn_lib.core.whitening import PCAWhitening
from regattn_lib.models.attention_weights import load_official_attention


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(EXPECTED.read_text())


def test_usual_pipeline_reproduces_the_stored_values(official_weights, expected):
    got = compute_expected(official_weights)
    assert got["regions"] == expected["regions"]
    np.testing.assert_allclose(got["alpha_context"], expected["alpha_context"], atol=2e-6)
    for key in ("descriptor_rmac", "descriptor_context"):
        np.testing.assert_allclose(got[key], expected[key], atol=2e-7)


def test_library_reproduces_the_stored_values(official_weights, expected):
    attention = load_official_attention(official_weights)
    mean, projection = fixed_whitening()
    whitening = PCAWhitening(mean, projection, torch.ones(len(mean)))
    regions = rmac_regions(HEIGHT, WIDTH, LEVELS)
    assert regions.tolist() == expected["regions"]
    feats = fixed_feature_map()
    with torch.no_grad():
        ctx = describe_feature_map(feats, regions, attention, whitening)
        rmac = describe_feature_map(feats, regions, None, whitening)
    assert rmac.alpha is None and ctx.alpha.shape == (1, len(regions))
    np.testing.assert_allclose(ctx.alpha[0].numpy(), expected["alpha_context"], atol=2e-6)
    np.testing.assert_allclose(
        ctx.descriptor[0, SAMPLED].numpy(), expected["descriptor_context"], atol=2e-7
    )
    np.testing.assert_allclose(
        rmac.descriptor[0, SAMPLED].numpy(), expected["descriptor_rmac"], atol=2e-7
    )
    # the attention moves the descriptor by far more than the tolerance: the pin tells them apart
    assert float((ctx.descriptor - rmac.descriptor).abs().max()) > 50 * 2e-7


@pytest.mark.parametrize("context", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "softplus"])
@pytest.mark.parametrize("hw", [(200, 290), (333, 128), (96, 96)])
def test_library_equals_the_usual_pipeline_on_random_maps(context, activation, hw):
    g = torch.Generator().manual_seed(hash((context, activation, hw)) % 1000)
    h, w = hw
    feats = torch.rand(1, 8, -(-h // 32), -(-w // 32), generator=g)
    att = RegionalAttention(8, hidden=5, context=context, activation=activation)
    torch.nn.init.normal_(att.conv_att_1.weight, generator=g)
    up = usual_pipeline()
    regions = up.authors_rmac_regions(h, w, 3)
    np.testing.assert_array_equal(rmac_regions(h, w, 3), regions)
    mean = torch.rand(8, generator=g)
    proj = torch.randn(6, 8, generator=g)
    whitening = PCAWhitening(mean, proj, torch.ones(6))
    with torch.no_grad():
        lib = describe_feature_map(feats, regions, att, whitening)
    spec = {"a": up.attention_spec(att)}
    alpha, desc = up.describe_feature_map(feats[0], regions, spec, mean, proj)["a"]
    torch.testing.assert_close(lib.alpha[0], alpha)
    torch.testing.assert_close(lib.descriptor[0], desc)
