import numpy as np
import torch

from regattn_lib.models.rpn import RPNRegions, boxes_to_regions


def test_boxes_to_regions_clip_round_and_min_side():
    boxes = np.array([[10.2, 5.7, 50.1, 40.0], [-5, -5, 300, 300], [90, 90, 91, 91]])
    r = boxes_to_regions(boxes, height=100, width=120, min_side=8)
    # floor/ceil outward: x 10..51, y 5..40; the second is clipped to the image;
    # the third (1 px) grows to 8 px
    np.testing.assert_array_equal(r, [[10, 5, 41, 35], [0, 0, 120, 100], [90, 90, 8, 8]])


def test_random_rpn_gives_regions_inside_each_image():
    rpn = RPNRegions(weights="random", top_n=10, min_side=32)
    assert "random" in rpn.label
    imgs = torch.randint(
        0, 256, (2, 3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    regions = rpn(imgs)
    assert len(regions) == 2
    for r in regions:
        assert 1 <= len(r) <= 10
        assert (r[:, 0] >= 0).all() and (r[:, 0] + r[:, 2] <= 128).all()
        assert (r[:, 1] >= 0).all() and (r[:, 1] + r[:, 3] <= 96).all()
        assert (r[:, 2:] >= 32).all()


def test_downsized_rpn_boxes_are_scaled_back_to_the_image():
    rpn = RPNRegions(weights="random", top_n=5, min_side=8, max_side=64)
    g = torch.Generator().manual_seed(0)
    regions = rpn(torch.randint(0, 256, (1, 3, 96, 256), dtype=torch.uint8, generator=g))[0]
    assert (regions[:, 0] + regions[:, 2] <= 256).all() and (
        regions[:, 1] + regions[:, 3] <= 96
    ).all()
    assert regions[:, 0].max() + regions[:, 2].max() > 64  # boxes reach beyond the 64-px copy


def test_proposals_are_computed_once_per_batch(monkeypatch):
    rpn = RPNRegions(weights="random", top_n=5)
    calls = []
    real = rpn._propose
    monkeypatch.setattr(rpn, "_propose", lambda im: calls.append(1) or real(im))
    g = torch.Generator().manual_seed(2)
    a = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=g)
    first = rpn(a)
    assert rpn(a) is first and len(calls) == 1  # a second head on the same batch
    rpn(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=g))
    assert len(calls) == 2
