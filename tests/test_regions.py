import numpy as np
import pytest
from reference_case import usual_pipeline

from regattn_lib.core.regions import region_cells, rmac_regions, round_half_away


def reference_rmac(H, W, L):
    """The authors' (Tolias/Gordo) loop, transcribed naively in the usual pipeline."""
    return usual_pipeline().authors_rmac_regions(H, W, L)


def test_region_counts_match_the_paper():
    assert len(rmac_regions(768, 1024, 5)) == 70  # 2 + 6 + 12 + 20 + 30
    assert len(rmac_regions(1024, 768, 5)) == 70
    assert len(rmac_regions(1024, 1024, 5)) == 55  # 1 + 4 + 9 + 16 + 25
    assert len(rmac_regions(768, 1024, 3)) == 20


def test_hand_computed_grid_for_4_by_3():
    # H=768, W=1024: short=768; level 1 side=768, 2 regions 256 apart along x;
    # level 2 side=floor(1536/3)=512, 3 along x (step 256), 2 along y (step 256).
    r = rmac_regions(768, 1024, 2)
    expected = [
        [0, 0, 768, 768],
        [256, 0, 768, 768],
        [0, 0, 512, 512],
        [256, 0, 512, 512],
        [512, 0, 512, 512],
        [0, 256, 512, 512],
        [256, 256, 512, 512],
        [512, 256, 512, 512],
    ]
    np.testing.assert_array_equal(r, expected)
    assert r.dtype == np.int64


def test_full_image_region_is_optional_and_first():
    r = rmac_regions(300, 400, 2, full_image=True)
    np.testing.assert_array_equal(r[0], [0, 0, 400, 300])
    np.testing.assert_array_equal(r[1:], rmac_regions(300, 400, 2))


@pytest.mark.parametrize("hw", [(768, 1024), (1024, 683), (500, 500), (101, 357), (333, 97)])
@pytest.mark.parametrize("levels", [1, 3, 5, 7])
def test_matches_naive_reference_and_stays_inside(hw, levels):
    H, W = hw
    r = rmac_regions(H, W, levels)
    np.testing.assert_array_equal(r, reference_rmac(H, W, levels))
    assert (r[:, :2] >= 0).all()
    assert (r[:, 0] + r[:, 2] <= W).all() and (r[:, 1] + r[:, 3] <= H).all()


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="levels"):
        rmac_regions(100, 100, 0)
    with pytest.raises(ValueError, match="positive"):
        rmac_regions(0, 100, 3)


def test_round_half_away_from_zero():
    np.testing.assert_array_equal(
        round_half_away([0.5, 1.5, 2.5, -0.5, -2.5, 2.49]), [1, 2, 3, -1, -3, 2]
    )
    assert round(2.5) == 2  # why the helper exists: Python rounds half to even


def test_region_cells_inclusive_corners_and_half_away():
    # x1=80 -> 80/32=2.5 -> 3 (half to even would give 2); x2=80+32-1=111 -> 3.47 -> 3
    # y1=16 -> 0.5 -> 1; y2=47 -> 1.47 -> 1
    np.testing.assert_array_equal(
        region_cells(np.array([[80, 16, 32, 32]]), 10, 10), [[3, 1, 3, 1]]
    )
    # Full 1024x768 image, map 24x32: x2=1023 -> 31.97 -> 32 -> clipped to 31; y2=767 -> 24 -> 23
    np.testing.assert_array_equal(
        region_cells(np.array([[0, 0, 1024, 768]]), 24, 32), [[0, 0, 31, 23]]
    )
    # Left edge 768 -> 24, right 768+512-1=1279 -> 39.97 -> 40 -> clipped at 31; y2=511 -> 15.97 -> 16
    np.testing.assert_array_equal(
        region_cells(np.array([[768, 0, 512, 512]]), 24, 32), [[24, 0, 31, 16]]
    )
