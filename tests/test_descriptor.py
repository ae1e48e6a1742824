import numpy as np
import pytest
import torch
from torch import nn

from regattn_lib.attention import RegionalAttention
from regattn_lib.descriptor import RegionalDescriptor, aggregate, l2_normalize, pool_regions
from regattn_lib.images import ImageError
from regattn_lib.regions import region_cells, rmac_regions
from regattn_lib.whitening import learn_pca_whitening


class ToyBackbone(nn.Module):
    """A fixed stride-32 feature extractor: 32x32 average pooling of a random 1x1 projection."""

    stride = 32
    channels = 6

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 6, 1)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def features(self, images):
        x = images.float() / 255
        return torch.relu(nn.functional.avg_pool2d(self.proj(x), 32, ceil_mode=True))


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


def naive_descriptor(backbone, image, levels, attention=None):
    feats = backbone.features(image[None])
    regions = rmac_regions(image.shape[1], image.shape[2], levels)
    cells = region_cells(regions, feats.shape[2], feats.shape[3])
    xs, ks = [], []
    for c0, r0, c1, r1 in cells:
        block = feats[0, :, r0 : r1 + 1, c0 : c1 + 1].reshape(feats.shape[1], -1)
        xs.append(block.amax(1))
        ks.append(block.mean(1))
    x, k = torch.stack(xs), torch.stack(ks)
    g = feats[0].mean((1, 2))
    alpha = torch.ones(len(x)) if attention is None else attention(k[None], g[None])[0]
    return l2_normalize((alpha[:, None] * l2_normalize(x)).mean(0))


@pytest.mark.parametrize("context", [None, False, True])
def test_descriptor_matches_naive_pipeline(context):
    torch.manual_seed(0)
    bb = ToyBackbone()
    att = None if context is None else RegionalAttention(6, hidden=4, context=context)
    model = RegionalDescriptor(bb, levels=3, attention=att)
    img = torch.randint(0, 256, (3, 200, 290), dtype=torch.uint8)
    torch.testing.assert_close(model(img[None])[0], naive_descriptor(bb, img, 3, att))
    d = model.describe(img[None])
    assert d["alpha"].shape == (1, len(rmac_regions(200, 290, 3)))


def test_describe_list_groups_sizes_without_changing_descriptors():
    bb = ToyBackbone()
    model = RegionalDescriptor(bb, levels=2, attention=RegionalAttention(6, hidden=3))
    rng = np.random.default_rng(0)
    ims = [
        rng.integers(0, 256, size=s, dtype=np.uint8)
        for s in [(64, 96, 3), (100, 70, 3), (64, 96, 3)]
    ]
    out = model.describe_list(ims)
    for i, im in enumerate(ims):
        single = model(torch.from_numpy(im).permute(2, 0, 1)[None])[0]
        torch.testing.assert_close(out[i], single)


def test_bad_images_are_named():
    model = RegionalDescriptor(ToyBackbone(), levels=2)
    with pytest.raises(ImageError, match="smaller than 32"):
        model.describe_list([np.zeros((20, 100, 3), np.uint8)])
    with pytest.raises(ImageError, match=r"image 1: expected an RGB image"):
        model.describe_list([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 4), np.uint8)])
    with pytest.raises(ImageError, match="uint8"):
        model.describe_list([np.zeros((64, 64, 3), np.float32)])


def test_pool_regions_shapes():
    feats = torch.rand(2, 6, 3, 4)
    p = pool_regions(feats, rmac_regions(96, 128, 2))
    assert (
        p.max_pooled.shape == (2, 8, 6)
        and p.avg_pooled.shape == (2, 8, 6)
        and p.global_avg.shape == (2, 6)
    )
