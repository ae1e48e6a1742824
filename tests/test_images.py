"""Query cropping as the authors' test script: box times S / max(H, W), np.round, exclusive end."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from regattn_lib.datasets.images import ImageError, crop_box, prepare_image, resize_longest
from regattn_lib.extraction.image_stream import target_size


def _indexed(h: int, w: int) -> np.ndarray:
    """uint8 (h, w, 3) whose pixel (r, c) holds (r, c, 0): a crop shows which rows/cols it kept."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)


def _span(crop: np.ndarray) -> tuple[int, int, int, int]:
    """(first row, end row, first col, end col) of a crop of an ``_indexed`` image."""
    return int(crop[0, 0, 0]), int(crop[-1, 0, 0]) + 1, int(crop[0, 0, 1]), int(crop[0, -1, 1]) + 1


def test_crop_rounds_half_to_even_with_exclusive_end():
    image = _indexed(20, 30)
    # [x1, y1, x2, y2] = [10.5, 3.5, 20.5, 7.5]: np.round gives 10, 4, 20, 8 (half to even), so
    # rows 4..7 and columns 10..19. Floor/ceil outward would give rows 3..7, columns 10..20;
    # half away from zero rows 4..7, columns 11..20; int() rows 3..6, columns 10..19.
    crop = crop_box(image, [10.5, 3.5, 20.5, 7.5])
    assert crop.shape == (4, 10, 3)
    assert _span(crop) == (4, 8, 10, 20)


def test_crop_scales_the_box_by_the_ratio():
    image = _indexed(60, 80)
    # ratio 0.5: [21, 13, 101, 55] -> [10.5, 6.5, 50.5, 27.5] -> np.round [10, 6, 50, 28]
    assert _span(crop_box(image, [21, 13, 101, 55], scale=0.5)) == (6, 28, 10, 50)
    # ratio 1.171875 (150 / 128): [10.2, 5.5, 80.7, 60.1] -> [11.95, 6.45, 94.57, 70.43]
    image = _indexed(112, 150)
    assert _span(crop_box(image, [10.2, 5.5, 80.7, 60.1], scale=150 / 128)) == (6, 70, 12, 95)


def test_crop_is_clipped_to_the_image():
    image = _indexed(20, 30)
    # -3 and -2.4 round to -3 and -2: clipped to 0 (numpy would wrap a negative start around)
    assert _span(crop_box(image, [-3, -2.4, 500, 12])) == (0, 12, 0, 30)
    with pytest.raises(ImageError, match="empty query box"):
        crop_box(image, [5, 5, 5, 9])
    with pytest.raises(ImageError, match="outside the 30x20 image"):
        crop_box(image, [40, 1, 50, 5])
    with pytest.raises(ImageError, match="4 finite numbers"):
        crop_box(image, [1, 2, 3])


@pytest.mark.parametrize(
    "size, longest, bbx, span",
    [
        # 240 x 320 -> 120 x 160 (ratio 0.5): [21, 13, 101, 85] -> [10.5, 6.5, 50.5, 42.5]
        # -> [10, 6, 50, 42]; floor/ceil outward would give 37 x 41 instead of 36 x 40.
        ((240, 320), 160, [21, 13, 101, 85], (6, 42, 10, 50)),
        # 96 x 128 -> 112 x 150 (round(112.5) = 112): the box is scaled by 150 / 128, not by
        # the height's 112 / 96, which would give [11.9, 6.42, 94.15, 70.12] -> 6..70, 12..94.
        ((96, 128), 150, [10.2, 5.5, 80.7, 60.1], (6, 70, 12, 95)),
    ],
)
def test_prepared_query_is_resized_then_cropped(tmp_path, size, longest, bbx, span):
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    path = tmp_path / "query.png"  # lossless, so the file holds exactly ``original``
    Image.fromarray(original).save(path)
    resized, ratio = resize_longest(original, longest)
    assert ratio == longest / max(size)
    r0, r1, c0, c1 = span
    crop = prepare_image(path, longest, bbx)
    np.testing.assert_array_equal(crop, resized[r0:r1, c0:c1])
    assert target_size(path, longest, bbx) == (r1 - r0, c1 - c0)


def test_check_rgb_names_the_image_and_the_problem():
    from regattn_lib.datasets.images import ImageError, check_rgb

    check_rgb(np.zeros((32, 40, 3), np.uint8), "fine")
    with pytest.raises(ImageError, match="small: image of 100x20 px is smaller than 32"):
        check_rgb(np.zeros((20, 100, 3), np.uint8), "small")
    with pytest.raises(ImageError, match=r"rgba: expected an RGB image .* \(64, 64, 4\)"):
        check_rgb(np.zeros((64, 64, 4), np.uint8), "rgba")
    with pytest.raises(ImageError, match="floats: expected uint8"):
        check_rgb(np.zeros((64, 64, 3), np.float32), "floats")
