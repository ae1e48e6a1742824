"""Training, extraction and the figures see the same regions, pooling and attention: they all go
through ``regattn_lib.core.descriptor``."""

from __future__ import annotations

import torch
from torch import nn

from regattn_lib.core.attention import RegionalAttention
from regattn_lib.core.descriptor import describe_feature_map, weighted_mean
from regattn_lib.core.regions import rmac_regions
from regattn_lib.extraction.methods import build_head, method_of
from regattn_lib.training.model import AttentionClassifier


class ToyBackbone(nn.Module):
    """A fixed stride-32 extractor: 32 x 32 average pooling of a 1x1 projection, then ReLU."""

    stride = 32
    channels = 5

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 5, 1)
        nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(1))

    def features(self, images):
        x = images.float() / 255
        return torch.relu(nn.functional.avg_pool2d(self.proj(x), 32, ceil_mode=True))


def test_training_pools_and_weights_exactly_as_extraction():
    torch.manual_seed(0)
    bb = ToyBackbone()
    att = RegionalAttention(5, hidden=4, context=True)
    fc = nn.Linear(5, 3)
    model = AttentionClassifier(bb, fc, att, levels=3)
    crops = torch.randint(0, 256, (2, 3, 192, 192), dtype=torch.uint8)
    x, k, g = model.pooled(crops)
    with torch.no_grad():
        test_time = describe_feature_map(bb.features(crops), rmac_regions(192, 192, 3), att)
    f = test_time.features
    assert torch.equal(x, f.max_pooled) and torch.equal(k, f.avg_pooled)
    assert torch.equal(g, f.global_avg)
    # the logits are the fc of the alpha-weighted mean with the descriptor's own alpha
    with torch.no_grad():
        torch.testing.assert_close(model(crops), fc(weighted_mean(x, test_time.alpha)))


def test_extraction_head_and_figures_share_the_training_alpha():

    torch.manual_seed(2)
    bb = ToyBackbone()
    att = RegionalAttention(5, hidden=4, context=False)
    model = AttentionClassifier(bb, nn.Linear(5, 2), att, levels=2)
    crops = torch.randint(0, 256, (3, 3, 160, 224), dtype=torch.uint8)
    x, k, g = model.pooled(crops)
    head = build_head(method_of(att), levels=2, attention=att, stride=bb.stride)
    ((_, out),) = head.describe(bb.features(crops), crops)
    assert torch.equal(out.features.max_pooled, x)
    with torch.no_grad():
        torch.testing.assert_close(out.alpha, att(k, g))
    torch.testing.assert_close(head(bb.features(crops), crops), out.descriptor)


def test_heads_on_one_feature_map_pool_and_whiten_once():
    from regattn_lib.core.descriptor import SharedSteps
    from regattn_lib.core.whitening import learn_pca_whitening
    from regattn_lib.extraction import methods

    bb = ToyBackbone()
    images = torch.randint(0, 256, (2, 3, 128, 160), dtype=torch.uint8)
    feats = bb.features(images)
    w = learn_pca_whitening(torch.rand(60, 5, generator=torch.Generator().manual_seed(4)))
    atts = [None] + [RegionalAttention(5, hidden=3, context=c) for c in (False, True, True)]
    heads = [
        methods.build_head(methods.method_of(a), levels=2, attention=a, whitening=w) for a in atts
    ]
    heads.append(methods.build_head("regional", levels=3, attention=atts[1], whitening=w))
    # a second head of the same attention, whitening and levels (as the scale study's row at
    # the ablation's L) is the same output
    heads.append(methods.build_head("regional", levels=2, attention=atts[1], whitening=w))
    shared = SharedSteps()
    with torch.no_grad():
        outs = [h(feats, images, shared) for h in heads]
    # pooling and whitening once per level set, not once per head; one output per distinct head
    assert shared.computed == {"pool": 2, "whiten": 2, "output": 5}
    with torch.no_grad():
        for h, out in zip(heads, outs, strict=True):
            regions = rmac_regions(128, 160, h.levels)
            alone = describe_feature_map(feats, regions, h.attention, w).descriptor
            assert torch.equal(out, alone)  # sharing changes no bit
            assert torch.equal(h(feats, images), alone)  # nor does describing without it
    # another whitening is whitened apart; another map gets its own SharedSteps
    w2 = w.truncate(3)
    heads[0].whitening = w2
    with torch.no_grad():
        heads[0](feats, images, shared)
    assert shared.computed == {"pool": 2, "whiten": 3, "output": 6}
