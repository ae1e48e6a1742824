import math
import shutil

import pytest
import torch

from regattn_lib.core.attention import (
    AttentionFileError,
    RegionalAttention,
    attention_from_state_dict,
)
from regattn_lib.models.attention_weights import OFFICIAL_SHA256, load_official_attention


def softplus(v):
    return math.log1p(math.exp(v))


def set_params(m, w1, b1, w2, b2):
    with torch.no_grad():
        m.conv_att_1.weight.copy_(
            torch.tensor(w1, dtype=torch.float32).reshape(m.conv_att_1.weight.shape)
        )
        m.conv_att_1.bias.copy_(torch.tensor(b1, dtype=torch.float32))
        m.conv_att_2.weight.copy_(
            torch.tensor(w2, dtype=torch.float32).reshape(m.conv_att_2.weight.shape)
        )
        m.conv_att_2.bias.copy_(torch.tensor(b2, dtype=torch.float32))


def test_regional_attention_hand_values():
    m = RegionalAttention(in_channels=2, hidden=1, context=False)
    set_params(m, [[1.0, -1.0]], [0.5], [[2.0]], [-1.0])
    k = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [3.0, 1.0]]])
    alpha = m(k)
    expected = [
        softplus(2 * math.tanh(1 - 0 + 0.5) - 1),
        softplus(2 * math.tanh(0.5) - 1),
        softplus(2 * math.tanh(2.5) - 1),
    ]
    torch.testing.assert_close(alpha, torch.tensor([expected]))
    assert alpha.shape == (1, 3) and (alpha > 0).all()


def test_context_concatenates_regional_then_global():
    m = RegionalAttention(in_channels=1, hidden=1, context=True)
    # W_r = [1 (regional), 10 (global)] so the order is visible in the result
    set_params(m, [[1.0, 10.0]], [0.0], [[1.0]], [0.0])
    k = torch.tensor([[[0.1], [0.2]]])
    g = torch.tensor([[0.05]])
    expected = [softplus(math.tanh(0.1 + 0.5)), softplus(math.tanh(0.2 + 0.5))]
    torch.testing.assert_close(m(k, g), torch.tensor([expected]))


def test_softplus_first_activation_option():
    m = RegionalAttention(in_channels=1, hidden=1, context=False, activation="softplus")
    set_params(m, [[1.0]], [0.0], [[1.0]], [0.0])
    torch.testing.assert_close(m(torch.zeros(1, 1, 1)), torch.tensor([[softplus(softplus(0.0))]]))
    with pytest.raises(ValueError, match="activation"):
        RegionalAttention(4, activation="relu")


def test_shape_errors():
    m = RegionalAttention(in_channels=8)
    with pytest.raises(ValueError, match=r"\(N, R, 8\)"):
        m(torch.zeros(2, 3, 7), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="global_avg"):
        m(torch.zeros(2, 3, 8))


def test_load_official_weights(official_weights):
    m = load_official_attention(official_weights)
    assert m.in_channels == 2048 and m.hidden == 64 and m.context and m.activation == "tanh"
    state = torch.load(official_weights, map_location="cpu", weights_only=True)
    torch.testing.assert_close(m.conv_att_1.weight, state["conv_att_1.weight"])
    alpha = m(torch.rand(2, 70, 2048), torch.rand(2, 2048))
    assert alpha.shape == (2, 70) and (alpha > 0).all()


def test_official_loader_rejects_corrupt_and_wrong_shape(tmp_path, official_weights):
    bad = tmp_path / "att.pth"
    shutil.copy(official_weights, bad)
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(AttentionFileError, match="sha256"):
        load_official_attention(bad)
    bad.write_bytes(b"not a pickle")
    with pytest.raises(AttentionFileError, match="cannot read"):
        load_official_attention(bad, check_sha256=False)
    state = torch.load(official_weights, map_location="cpu", weights_only=True)
    state["conv_att_2.weight"] = torch.zeros(1, 32, 1)
    with pytest.raises(AttentionFileError, match="conv_att_2.weight has shape"):
        attention_from_state_dict(state, source="x.pth")
    del state["conv_att_1.bias"]
    with pytest.raises(AttentionFileError, match="missing keys"):
        attention_from_state_dict(state, source="x.pth")


def test_sha_constant_matches_shipped_copy(official_weights):
    from regattn_lib.runtime.atomic import sha256_file

    assert sha256_file(official_weights) == OFFICIAL_SHA256
