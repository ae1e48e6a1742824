import numpy as np
import pytest
import torch

from regattn_lib.core.whitening import CovarianceAccumulator, PCAWhitening, learn_pca_whitening


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


# --- streaming statistics (defect 2: the whitening pass never stacks its vectors) ------------


def _old_learn(x, n_components=None, eps=1e-12):
    """The stacked implementation as it was before streaming (reference for 'unchanged')."""
    x = torch.as_tensor(x).to("cpu", torch.float64)
    m, c = x.shape
    d = c if n_components is None else n_components
    mean = x.mean(0)
    xc = x - mean
    eigvals, eigvecs = torch.linalg.eigh(xc.T @ xc / (m - 1))
    order = torch.argsort(eigvals, descending=True)[:d]
    eigvals = eigvals[order].clamp_min(eps)
    comps = eigvecs[:, order].T
    comps = comps * torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    return mean.float(), (comps / eigvals.sqrt()[:, None]).float(), eigvals.float()


def test_stacked_input_gives_exactly_the_previous_results():
    x = correlated(m=300, c=7, seed=11)
    for d in (None, 4):
        w = learn_pca_whitening(x, n_components=d)
        mean, proj, ev = _old_learn(x, d)
        assert torch.equal(w.mean, mean) and torch.equal(w.projection, proj)
        assert torch.equal(w.eigenvalues, ev)


def _splits(m, sizes):
    """Consecutive (start, end) ranges of the given sizes, cycled until m rows are covered."""
    out, s, k = [], 0, 0
    while s < m:
        e = min(m, s + sizes[k % len(sizes)])
        out.append((s, e))
        s, k = e, k + 1
    return out


@pytest.mark.parametrize("block_rows", [1, 5, 4096])
@pytest.mark.parametrize("sizes", [[1], [3, 1, 17, 2, 40, 0, 9]])
def test_streamed_batches_equal_the_stacked_array_in_fp64(block_rows, sizes):
    # far from the origin with a small spread: raw sums of outer products would lose digits
    x = correlated(m=257, c=6, seed=2).double() * 0.01 + 1e3
    ref_mean = x.mean(0)
    ref_cov = torch.from_numpy(np.cov(x.numpy(), rowvar=False))
    acc = CovarianceAccumulator(block_rows)
    for i, (s, e) in enumerate(_splits(len(x), sizes)):
        part = x[s:e]
        acc.update(part.numpy() if i % 2 else part)  # arrays and tensors mixed
    assert acc.n == 257
    torch.testing.assert_close(acc.mean, ref_mean, rtol=1e-10, atol=0)
    torch.testing.assert_close(
        acc.covariance(), ref_cov, rtol=1e-10, atol=1e-10 * ref_cov.abs().max()
    )
    # the learned whitening from batches equals the one from the stacked array
    batches = (x[s:e] for s, e in _splits(len(x), sizes))
    w_stream, w_stack = learn_pca_whitening(batches), learn_pca_whitening(x)
    torch.testing.assert_close(w_stream.mean, w_stack.mean, rtol=1e-7, atol=0)
    torch.testing.assert_close(w_stream.eigenvalues, w_stack.eigenvalues, rtol=1e-6, atol=0)
    torch.testing.assert_close(w_stream.apply(x[:20]), w_stack.apply(x[:20]), rtol=0, atol=1e-4)
    assert w_stream.meta["n_vectors"] == 257


def test_accumulator_merge_and_state_roundtrip(tmp_path):
    x = correlated(m=120, c=5, seed=4).double()
    a, b = CovarianceAccumulator(7), CovarianceAccumulator(3)
    a.update(x[:50])
    b.update(x[50:])
    path = tmp_path / "acc.pt"
    torch.save(a.state_dict(), path)
    a2 = CovarianceAccumulator.from_state_dict(torch.load(path, weights_only=True))
    a2.merge(b)
    assert a2.n == 120
    torch.testing.assert_close(a2.mean, x.mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(a2.covariance(), torch.cov(x.T), rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="5-d"):
        a2.update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="at least 2"):
        learn_pca_whitening(iter([np.zeros((1, 3))]))


def test_whitening_memory_benchmark_tiny_run(tmp_path):
    """The benchmark runs the real pass in child processes and reports their peak RSS."""
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "whitening_memory.py"
    spec = importlib.util.spec_from_file_location("whitening_memory", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = [
        "--n",
        "300",
        "--dim",
        "16",
        "--image-size",
        "128",
        "--stacked-n",
        "300",
        "--threads",
        "1",
        "--out-dir",
        str(tmp_path),
        "--name",
        "wm",
    ]
    r = bench.main(argv)
    saved = json.loads((tmp_path / "wm.json").read_text())
    assert saved["runs"] == r["runs"] and (tmp_path / "wm.md").is_file()
    streamed, stacked = r["runs"]
    assert (streamed["mode"], stacked["mode"]) == ("streamed", "stacked")
    # 128x96 at L = 3: 20 regions per image, so 15 images give 300 vectors
    assert streamed["vectors_per_image"] == 20 and streamed["n_images"] == 15
    assert streamed["n_vectors"] == 300 and streamed["backbone_calls"] == 15
    assert streamed["eigenvalues_finite"] and streamed["eigenvalue_max"] > 0
    # the same generated vectors: both code paths learn the same spectrum
    assert (
        abs(streamed["eigenvalue_max"] - stacked["eigenvalue_max"])
        < 1e-5 * stacked["eigenvalue_max"]
    )
    assert 0 < streamed["rss_before_gb"] <= streamed["peak_rss_gb"]
