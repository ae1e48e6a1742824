import numpy as np
import pytest
import torch

from regattn_lib.whitening import PCAWhitening, learn_pca_whitening


def correlated(m=500, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(c, c, generator=g)
    return torch.randn(m, c, generator=g) @ a + torch.arange(c, dtype=torch.float32) * 3


def test_whitened_training_vectors_have_identity_covariance_and_zero_mean():
    x = correlated()
    w = learn_pca_whitening(x)
    y = w.apply(x).double()
    cov = torch.cov(y.T)  # ddof=1, as scikit-learn's PCA(whiten=True)
    torch.testing.assert_close(cov, torch.eye(6, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-4, rtol=0)
    assert (w.eigenvalues[:-1] >= w.eigenvalues[1:]).all()


def test_hand_case_diagonal_data():
    # Points (+-2, 0) and (0, +-1): variance 8/3 along x, 2/3 along y (ddof=1, M=4)
    x = torch.tensor([[2.0, 0], [-2, 0], [0, 1], [0, -1]])
    w = learn_pca_whitening(x)
    torch.testing.assert_close(w.eigenvalues, torch.tensor([8 / 3, 2 / 3]))
    torch.testing.assert_close(
        w.apply(torch.tensor([[2.0, 0.0]])), torch.tensor([[2 / (8 / 3) ** 0.5, 0.0]])
    )


def test_deterministic_and_reduced_dimensions(tmp_path):
    x = correlated(seed=3)
    w1, w2 = learn_pca_whitening(x, n_components=3), learn_pca_whitening(x.numpy(), n_components=3)
    torch.testing.assert_close(w1.projection, w2.projection)
    assert w1.out_dim == 3 and w1.apply(x).shape == (500, 3)
    # sign convention: each component's largest entry is positive
    comps = w1.projection * w1.eigenvalues.sqrt()[:, None]
    assert (comps.gather(1, comps.abs().argmax(1, keepdim=True)) > 0).all()
    w1.meta["backbone"] = "toy"
    path = w1.save(tmp_path / "w.pt")
    w3 = PCAWhitening.load(path)
    torch.testing.assert_close(w3.apply(x), w1.apply(x))
    assert w3.meta["backbone"] == "toy" and w3.meta["n_vectors"] == 500


def test_errors():
    with pytest.raises(ValueError, match="n_components"):
        learn_pca_whitening(np.zeros((10, 4)), n_components=5)
    w = learn_pca_whitening(correlated())
    with pytest.raises(ValueError, match="6-d vectors"):
        w.apply(torch.zeros(2, 5))


def test_truncating_the_full_whitening_equals_learning_fewer_components():
    x = correlated(seed=5)
    full = learn_pca_whitening(x)
    for d in (1, 3, 6):
        small = learn_pca_whitening(x, n_components=d)
        t = full.truncate(d)
        torch.testing.assert_close(t.projection, small.projection)
        torch.testing.assert_close(t.apply(x), small.apply(x))
        assert t.out_dim == d and t.meta["out_dim"] == d
    # never more components than the data's rank (M - 1)
    few = learn_pca_whitening(x[:4])
    assert few.truncate(6).out_dim == 3
