import numpy as np
import torch

from regattn_lib.core.pooling import (
    global_avg_pool,
    global_max_pool,
    region_masks,
    regional_avg_pool,
    regional_max_pool,
)
from regattn_lib.core.regions import region_cells, rmac_regions


def naive_pool(feats, cells, op):
    n, c = feats.shape[:2]
    out = torch.zeros(n, len(cells), c)
    for i in range(n):
        for r, (c0, r0, c1, r1) in enumerate(cells):
            block = feats[i, :, r0 : r1 + 1, c0 : c1 + 1].reshape(c, -1)
            out[i, r] = block.amax(1) if op == "max" else block.mean(1)
    return out


def test_regional_pools_match_naive_loops_including_border_regions():
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(3, 5, 9, 13, generator=g) * 4 - 1  # negatives too: max must not clip at 0
    H, W = 9 * 32, 13 * 32
    regions = rmac_regions(H, W, 4, full_image=True)
    cells = region_cells(regions, 9, 13)
    assert (cells[:, 2] == 12).any() and (cells[:, 3] == 8).any()  # some touch the far border
    torch.testing.assert_close(regional_max_pool(feats, cells), naive_pool(feats, cells, "max"))
    torch.testing.assert_close(regional_avg_pool(feats, cells), naive_pool(feats, cells, "avg"))


def test_single_cell_and_hand_values():
    feats = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    # cells (c0, r0, c1, r1): one cell (2,1) = 6; block cols 1..2 rows 0..1 = [1,2,5,6]
    cells = np.array([[2, 1, 2, 1], [1, 0, 2, 1]])
    assert regional_max_pool(feats, cells).flatten().tolist() == [6.0, 6.0]
    assert regional_avg_pool(feats, cells).flatten().tolist() == [6.0, 3.5]
    assert global_avg_pool(feats).item() == 5.5
    assert global_max_pool(feats).item() == 11.0


def test_masks_rows_sum_to_one():
    m = region_masks(np.array([[0, 0, 1, 1], [3, 2, 3, 2]]), 3, 4)
    torch.testing.assert_close(m.sum(1), torch.ones(2))
    assert (m[1] > 0).sum() == 1 and m[1, 2 * 4 + 3] == 1
