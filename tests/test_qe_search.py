import numpy as np
import torch

from regattn_lib.core.qe import average_query_expansion
from regattn_lib.core.search import cosine_ranks


def unit(rows):
    a = np.asarray(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_aqe_hand_case():
    q = unit([[1, 0]])
    db = unit([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]])
    # top-2 neighbours: [1,0] and [0.8,0.6]; q' = L2([1,0] + [1,0] + [0.8,0.6]) = L2([2.8, 0.6])
    out = average_query_expansion(q, db, k=2)
    np.testing.assert_allclose(out, unit([[2.8, 0.6]]), atol=1e-6)
    assert isinstance(out, np.ndarray)


def test_alpha_qe_weights_by_similarity():
    q = torch.tensor(unit([[1, 0]]))
    db = torch.tensor(unit([[1, 0], [0.8, 0.6]]))
    # weights s^3: 1 and 0.512 -> q + [1,0] + 0.512*[0.8,0.6]
    out = average_query_expansion(q, db, k=2, alpha=3.0)
    expected = unit([[1 + 1 + 0.512 * 0.8, 0.512 * 0.6]])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_aqe_k_larger_than_db_and_shape():
    q, db = unit(np.random.rand(3, 4)), unit(np.random.rand(2, 4))
    assert average_query_expansion(q, db, k=5).shape == (3, 4)


def test_ranks_layout_and_ties():
    q = unit([[1, 0], [0, 1]])
    db = unit([[0, 1], [1, 0], [1, 0], [0.6, 0.8]])
    r = cosine_ranks(q, db)
    assert r.shape == (4, 2)
    # query 0: db1 and db2 tie at 1 -> lower index first, then db3 (0.6), then db0
    assert r[:, 0].tolist() == [1, 2, 3, 0]
    assert r[:, 1].tolist() == [0, 3, 1, 2]


def test_chunked_topk_equals_full_ranking():
    g = np.random.default_rng(0)
    q, db = unit(g.normal(size=(7, 16))), unit(g.normal(size=(1000, 16)))
    full = cosine_ranks(q, db)
    naive = np.argsort(-(q @ db.T), axis=1, kind="stable").T
    np.testing.assert_array_equal(full, naive)
    np.testing.assert_array_equal(cosine_ranks(q, db, topk=50, chunk=64), full[:50])
    np.testing.assert_array_equal(cosine_ranks(q, db, chunk=33), full)
