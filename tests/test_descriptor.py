import numpy as np
import pytest
import torch

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.descriptor import (
    aggregate,
    attention_weights,
    batch_regions,
    describe_feature_map,
    l2_normalize,
    pool_regions,
    weighted_mean,
)
from regattn_lib.core.regions import rmac_regions
from regattn_lib.core.whitening import learn_pca_whitening


def test_aggregate_hand_case():
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # two regions
    # xhat = [1,0], [0,1]; alpha = [1, 3] -> mean = [0.5, 1.5] -> L2 -> [1, 3] / sqrt(10)
    f = aggregate(x, torch.tensor([[1.0, 3.0]]))
    torch.testing.assert_close(f, torch.tensor([[1.0, 3.0]]) / 10**0.5)
    # alpha = 1 is R-MAC: L2(sum of L2-normalised regional vectors)
    torch.testing.assert_close(aggregate(x), torch.tensor([[1.0, 1.0]]) / 2**0.5)


def test_aggregate_invariances_and_mask():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 5, 4, generator=g)
    a = torch.rand(2, 5, generator=g) + 0.1
    # alpha is not normalised, but a global scale cancels in the final L2
    torch.testing.assert_close(aggregate(x, a), aggregate(x, 7 * a))
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out = aggregate(x, a, region_mask=mask)
    torch.testing.assert_close(out[1], aggregate(x[1:, :2], a[1:, :2])[0])


def test_aggregate_with_whitening_matches_manual():
    g = torch.Generator().manual_seed(2)
    train = torch.rand(200, 4, generator=g)
    w = learn_pca_whitening(train)
    x = torch.rand(1, 3, 4, generator=g)
    manual = l2_normalize(l2_normalize((x[0] - w.mean) @ w.projection.T).mean(0))
    torch.testing.assert_close(aggregate(x, None, w)[0], manual)


def test_pool_regions_shapes():
    feats = torch.rand(2, 6, 3, 4)
    p = pool_regions(feats, rmac_regions(96, 128, 2))
    assert (
        p.max_pooled.shape == (2, 8, 6)
        and p.avg_pooled.shape == (2, 8, 6)
        and p.global_avg.shape == (2, 6)
    )


def test_batch_regions_grid_is_one_group_and_region_fn_one_per_image():
    images = torch.zeros(3, 3, 96, 128, dtype=torch.uint8)
    ((sl, grid),) = batch_regions(images, levels=2)
    assert sl == slice(None) and np.array_equal(grid, rmac_regions(96, 128, 2))
    boxes = [np.array([[0, 0, 32, 32]]), np.array([[0, 0, 64, 64], [32, 32, 64, 64]]), []]
    groups = batch_regions(images, region_fn=lambda ims: boxes)
    assert [g[0] for g in groups] == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert [g[1].shape for g in groups] == [(1, 4), (2, 4), (0, 4)]
    with pytest.raises(ValueError, match="2 region sets for 3 images"):
        batch_regions(images, region_fn=lambda ims: boxes[:2])


def test_attention_weights_run_in_the_attention_dtype_and_return_fp32():
    feats = pool_regions(torch.rand(2, 4, 3, 4), rmac_regions(96, 128, 2))
    assert attention_weights(None, feats.avg_pooled, feats.global_avg) is None
    att = RegionalAttention(4, hidden=3).double()
    alpha = attention_weights(att, feats.avg_pooled, feats.global_avg)
    assert alpha.dtype == torch.float32 and alpha.shape == (2, 8)
    ref = att(feats.avg_pooled.double(), feats.global_avg.double()).float()
    torch.testing.assert_close(alpha, ref)


def test_describe_feature_map_is_pool_attention_aggregate():
    g = torch.Generator().manual_seed(3)
    feats = torch.rand(2, 4, 3, 4, generator=g)
    regions = rmac_regions(96, 128, 2)
    att = RegionalAttention(4, hidden=3, context=False)
    w = learn_pca_whitening(torch.rand(50, 4, generator=g))
    out = describe_feature_map(feats, regions, att, w)
    pooled = pool_regions(feats, regions)
    alpha = att(pooled.avg_pooled)
    torch.testing.assert_close(out.alpha, alpha)
    torch.testing.assert_close(out.descriptor, aggregate(pooled.max_pooled, alpha, w))
    torch.testing.assert_close(out.weights(), alpha.detach())
    assert torch.equal(describe_feature_map(feats, regions).weights(), torch.ones(2, 8))


def test_weighted_mean_hand_case():
    x = torch.tensor([[[1.0, 0.0], [3.0, 4.0]]])
    # (1 * [1, 0] + 3 * [3, 4]) / 2 regions = [5, 6]
    alpha = torch.tensor([[1.0, 3.0]])
    torch.testing.assert_close(weighted_mean(x, alpha), torch.tensor([[5.0, 6.0]]))
    torch.testing.assert_close(weighted_mean(x, None), torch.tensor([[2.0, 2.0]]))


def test_describe_returns_regions_alpha_raw_mean_and_descriptor_per_group():
    from regattn_lib.core.descriptor import describe, weighted_l2_mean, whiten_regions

    torch.manual_seed(3)
    feats = torch.rand(2, 4, 3, 4)
    images = torch.zeros(2, 3, 96, 128, dtype=torch.uint8)
    att = RegionalAttention(4, hidden=3, context=True)
    boxes = [np.array([[0, 0, 64, 64], [32, 32, 64, 64]]), np.array([[0, 0, 96, 96]])]
    groups = describe(feats, images, attention=att, region_fn=lambda ims: boxes)
    assert [(sl.start, sl.stop) for sl, _ in groups] == [(0, 1), (1, 2)]
    for (sl, out), regions in zip(groups, boxes, strict=True):
        pooled = pool_regions(feats[sl], regions)
        assert torch.equal(out.features.max_pooled, pooled.max_pooled)
        alpha = att(pooled.avg_pooled, pooled.global_avg)
        torch.testing.assert_close(out.alpha, alpha)
        # the raw weighted mean (training's fc input) and the descriptor, from the same alpha
        torch.testing.assert_close(
            out.weighted_mean, (alpha[..., None] * pooled.max_pooled).mean(1)
        )
        expected = weighted_l2_mean(whiten_regions(pooled.max_pooled), alpha)
        torch.testing.assert_close(out.descriptor, expected)
