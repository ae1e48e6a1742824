import math

import torch

from regattn_lib.core.baselines import cam, crow, mac, spoc


def test_mac_spoc_hand_values():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 0.0]], [[0.0, 0.0], [0.0, 5.0]]]])  # (1, 2, 2, 2)
    assert mac(f).tolist() == [[3.0, 5.0]]
    assert spoc(f).tolist() == [[1.5, 1.25]]


def test_crow_hand_values():
    f = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])  # (1, 2, 1, 2)
    # S' = [2, 2]; ||S'||_2 = 2 sqrt 2; S = (1/sqrt 2)^(1/2) at both locations
    s = (1 / math.sqrt(2)) ** 0.5
    # Q = [0.5, 1.0]; channel weights log(1.5 / 0.5), log(1.5 / 1.0)
    expected = [s * 1 * math.log(3.0), s * 3 * math.log(1.5)]
    torch.testing.assert_close(crow(f, eps=0.0), torch.tensor([expected]))


def test_cam_single_class_is_weighted_sum_pooling():
    f = torch.tensor([[[[1.0, 3.0]], [[2.0, 0.0]]]])  # (1, C=2, 1, 2)
    w = torch.tensor([[1.0, 0.0], [0.0, -1.0]])  # class 0 looks at channel 0
    # class 0 wins (logit 2 > -1); map = [1, 3] / 3; pooled = [1/3*1 + 1*3, 1/3*2 + 0]
    v = torch.tensor([1 / 3 + 3, 2 / 3])
    torch.testing.assert_close(cam(f, w, top_classes=1), (v / v.norm())[None])
