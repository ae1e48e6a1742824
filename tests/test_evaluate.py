"""Evaluation: hand-worked AP / mP@k, junk handling, protocol builders, naive cross-check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from regattn_lib.core.evaluate import (
    classic_gnd,
    compute_ap,
    compute_map,
    evaluate,
    per_query_table,
    results_frame,
    revisited_gnd,
    supported_protocols,
)


def col(*idx: int) -> np.ndarray:
    """One query's ranking as a (N, 1) column."""
    return np.array(idx)[:, None]


# --- compute_ap -----------------------------------------------------------------------------


def test_compute_ap_hand_worked():
    # positives at ranks 1 and 3, two positives:
    # j=0: p0 = 0/1 = 0, p1 = 1/2 -> 0.25 ; j=1: p0 = 1/3, p1 = 2/4 -> 5/12 ; (3/12+5/12)/2 = 1/3
    assert compute_ap(np.array([1, 3]), 2) == pytest.approx(1 / 3)
    # rank 0 uses p0 = 1: j=0: (1+1)/2 = 1 ; j=1 at r=2: (1/2 + 2/3)/2 = 7/12 ; (19/12)/2
    assert compute_ap(np.array([0, 2]), 2) == pytest.approx(19 / 24)
    # one of two positives never retrieved: (1+1)/2 / 2 = 0.5
    assert compute_ap(np.array([0]), 2) == pytest.approx(0.5)
    assert compute_ap(np.array([], dtype=int), 3) == 0.0
    with pytest.raises(ValueError):
        compute_ap(np.array([0]), 0)


# --- compute_map: single queries -----------------------------------------------------------


def test_no_junk():
    # db indices 0 and 1 are positive; they sit at 0-based positions 1 and 3 -> AP 1/3 (above).
    m, aps, mpr, prs = compute_map(col(3, 0, 5, 1, 2, 4), [{"ok": [0, 1]}])
    assert m == pytest.approx(1 / 3)
    assert aps[0] == pytest.approx(1 / 3)
    # last positive at 1-based rank 4: k=1 -> k'=1, none of [2, 4] <= 1 -> 0;
    # k=5 -> k'=4, two of [2, 4] <= 4 -> 2/4; k=10 -> k'=4 again.
    np.testing.assert_allclose(prs[0], [0.0, 0.5, 0.5])
    np.testing.assert_allclose(mpr, [0.0, 0.5, 0.5])


def test_junk_first_shifts_every_positive():
    # same ranking, junk = [3] at position 0: positives move from [1, 3] to [0, 2] -> AP 19/24.
    m, _, _, prs = compute_map(col(3, 0, 5, 1, 2, 4), [{"ok": [0, 1], "junk": [3]}])
    assert m == pytest.approx(19 / 24)
    # junk-free 1-based ranks [1, 3], last = 3: k=1 -> 1/1; k=5 -> k'=3, 2/3; k=10 -> 2/3.
    np.testing.assert_allclose(prs[0], [1.0, 2 / 3, 2 / 3])


def test_junk_between_positives_is_ignored():
    # positives 0 (pos 0) and 2 (pos 3); junk 5 and 1 at positions 1, 2 sit between them:
    # shifted positives [0, 3-2=1] -> both first -> AP 1.
    m, _, _, prs = compute_map(col(0, 5, 1, 2, 3, 4), [{"ok": [0, 2], "junk": [5, 1]}])
    assert m == pytest.approx(1.0)
    np.testing.assert_allclose(prs[0], [1.0, 1.0, 1.0])


def test_junk_after_positives_changes_nothing():
    # positive 0 at position 1, junk 2 after it -> no shift: (0 + 1/2)/2 = 0.25
    m, _, _, _ = compute_map(col(1, 0, 2), [{"ok": [0], "junk": [2]}])
    assert m == pytest.approx(0.25)
    m2, _, _, _ = compute_map(col(1, 0, 2), [{"ok": [0]}])
    assert m2 == pytest.approx(0.25)


def test_junk_only_before_some_positives():
    # ranking 4 9 1 7 2 ; ok = [1, 2], junk = [9, 7]. Positions: 1 -> 2, 2 -> 4; junk at 1, 3.
    # shifted: 2-1 = 1, 4-2 = 2 -> j=0 r=1: (0 + 1/2)/2 = 1/4; j=1 r=2: (1/2 + 2/3)/2 = 7/12
    # AP = (1/4 + 7/12)/2 = 10/24 = 5/12
    m, _, _, _ = compute_map(col(4, 9, 1, 7, 2), [{"ok": [1, 2], "junk": [9, 7]}])
    assert m == pytest.approx(5 / 12)


def test_all_positives_first_gives_one():
    m, aps, mpr, _ = compute_map(col(2, 1, 0, 3), [{"ok": [2, 1, 0], "junk": []}])
    assert m == pytest.approx(1.0) and aps[0] == pytest.approx(1.0)
    # last positive at rank 3: k=1 -> 1/1, k=5 -> k'=3 -> 3/3, k=10 -> 3/3
    np.testing.assert_allclose(mpr, [1.0, 1.0, 1.0])


def test_order_given_is_the_order_used_ties_not_special():
    # Two rankings a tie-breaker could produce: only the given order counts.
    a, *_ = compute_map(col(0, 1, 2), [{"ok": [1]}])  # r=1 -> (0 + 1/2)/2 = 0.25
    b, *_ = compute_map(col(1, 0, 2), [{"ok": [1]}])  # r=0 -> 1
    assert (a, b) == (pytest.approx(0.25), pytest.approx(1.0))


def test_truncated_ranking_missing_positive():
    # top-2 of a 5-image db; positive 4 never retrieved: AP = (1+1)/2 / 2 = 0.5
    m, _, _, prs = compute_map(col(0, 3), [{"ok": [0, 4]}])
    assert m == pytest.approx(0.5)
    np.testing.assert_allclose(prs[0], [1.0, 1.0, 1.0])  # last retrieved positive at rank 1
    # none retrieved at all: AP 0 and precisions 0 (not NaN: the query has positives)
    m, aps, _, prs = compute_map(col(0, 3), [{"ok": [4]}])
    assert m == 0.0 and aps[0] == 0.0
    np.testing.assert_allclose(prs[0], [0.0, 0.0, 0.0])


# --- compute_map: several queries ----------------------------------------------------------


def test_empty_query_is_nan_and_excluded():
    ranks = np.stack(
        [np.array([3, 0, 5, 1, 2, 4]), np.arange(6), np.array([3, 0, 5, 1, 2, 4])], axis=1
    )
    gnd = [{"ok": [0, 1]}, {"ok": [], "junk": [1]}, {"ok": [0, 1], "junk": [3]}]
    m, aps, mpr, prs = compute_map(ranks, gnd)
    # mean of 1/3 and 19/24 = (8/24 + 19/24)/2 = 27/48 = 9/16
    assert m == pytest.approx(9 / 16)
    assert math.isnan(aps[1]) and np.isnan(prs[1]).all()
    # k=1: (0 + 1)/2; k=5: (1/2 + 2/3)/2 = 7/12; k=10 the same
    np.testing.assert_allclose(mpr, [0.5, 7 / 12, 7 / 12])
    assert aps.shape == (3,) and prs.shape == (3, 3) and mpr.shape == (3,)


def test_all_queries_empty_gives_nan():
    m, aps, mpr, _ = compute_map(col(0, 1), [{"ok": []}])
    assert math.isnan(m) and math.isnan(aps[0]) and np.isnan(mpr).all()


def test_torch_ranks_and_custom_kappas():
    ranks = torch.tensor([[3], [0], [5], [1], [2], [4]])
    m, _, mpr, prs = compute_map(ranks, [{"ok": [0, 1]}], kappas=(2, 4))
    assert m == pytest.approx(1 / 3)
    # k=2: k'=2, positives at 1-based [2, 4] -> 1/2 ; k=4: 2/4
    np.testing.assert_allclose(mpr, [0.5, 0.5])
    assert prs.shape == (1, 2)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="query columns"):
        compute_map(np.zeros((4, 2), dtype=int), [{"ok": [0]}])


# --- builders ------------------------------------------------------------------------------


def test_revisited_builders():
    g = [{"easy": [0, 1], "hard": [2], "junk": [3], "bbx": [0, 0, 1, 1]}]
    assert revisited_gnd(g, "easy") == [{"ok": [0, 1], "junk": [3, 2]}]
    assert revisited_gnd(g, "medium") == [{"ok": [0, 1, 2], "junk": [3]}]
    assert revisited_gnd(g, "hard") == [{"ok": [2], "junk": [3, 0, 1]}]
    with pytest.raises(ValueError):
        revisited_gnd(g, "extreme")
    with pytest.raises(KeyError):
        revisited_gnd([{"ok": [1]}], "easy")


def test_classic_builder():
    # 'ok' already holds the good images; a separate 'good' list is merged without repeats.
    assert classic_gnd([{"ok": [4, 5], "junk": [6]}]) == [{"ok": [4, 5], "junk": [6]}]
    assert classic_gnd([{"good": [1], "ok": [1, 2]}]) == [{"ok": [1, 2], "junk": []}]
    with pytest.raises(KeyError):
        classic_gnd([{"easy": [1], "hard": []}])


def test_supported_protocols():
    assert supported_protocols([{"ok": [1], "junk": []}]) == ["classic"]
    assert supported_protocols([{"easy": [], "hard": [1], "junk": []}]) == [
        "easy",
        "medium",
        "hard",
    ]
    both = [{"ok": [1], "easy": [1], "hard": [], "junk": []}]
    assert supported_protocols(both) == ["classic", "easy", "medium", "hard"]
    assert supported_protocols([]) == []


# --- evaluate / results_frame --------------------------------------------------------------


def _both_gnd():
    return [
        {"ok": [0, 2], "easy": [0], "hard": [2], "junk": [4]},
        {"ok": [3], "easy": [], "hard": [3], "junk": []},
    ]


def test_evaluate_all_protocols_hand_worked():
    ranks = np.stack([np.array([1, 0, 4, 2, 3]), np.array([3, 0, 1, 2, 4])], axis=1)
    res = evaluate(ranks, _both_gnd(), query_names=["q0", "q1"])
    p = res["protocols"]
    assert list(p) == ["classic", "easy", "medium", "hard"]
    # q0 classic: positives 0 (pos 1), 2 (pos 3); junk 4 at pos 2 -> [1, 2] -> AP 5/12.
    # q1 classic: 3 first -> 1. mAP = (5/12 + 1)/2 = 17/24
    assert p["classic"]["map"] == pytest.approx(100 * 17 / 24)
    # q0 easy: ok [0] at pos 1, junk {4, 2} at positions 2, 3 -> r = 1 -> AP 1/4;
    # q1 easy: no positives -> excluded
    assert p["easy"]["map"] == pytest.approx(25.0)
    assert p["easy"]["n_queries"] == 1 and math.isnan(p["easy"]["aps"][1])
    assert p["medium"]["map"] == pytest.approx(100 * 17 / 24)
    # q0 hard: ok [2] at pos 3, junk {4, 0} at positions 2, 1 -> r = 1 -> 1/4; q1 -> 1
    assert p["hard"]["map"] == pytest.approx(62.5)
    # mP@5: classic q0 last rank 3 -> 2/3, q1 -> 1 -> 5/6; easy q0 k'=2 -> 1/2; hard (1/2+1)/2
    assert p["classic"]["mp"][5] == pytest.approx(100 * 5 / 6)
    assert p["easy"]["mp"][5] == pytest.approx(50.0)
    assert p["hard"]["mp"][5] == pytest.approx(75.0)
    assert p["classic"]["mp"][1] == pytest.approx(50.0)  # q0 0, q1 1
    np.testing.assert_allclose(p["classic"]["aps"], [100 * 5 / 12, 100.0])
    assert res["query_names"] == ["q0", "q1"] and res["kappas"] == [1, 5, 10]

    df = results_frame(res)
    assert list(df.columns) == ["protocol", "mAP", "mP@1", "mP@5", "mP@10", "n_queries"]
    assert list(df["protocol"]) == ["classic", "easy", "medium", "hard"]
    assert df.loc[df.protocol == "hard", "mAP"].item() == pytest.approx(62.5)
    assert list(df["n_queries"]) == [2, 1, 2, 2]


def test_evaluate_protocol_selection_and_errors():
    ranks = np.stack([np.arange(5), np.arange(5)], axis=1)
    res = evaluate(ranks, _both_gnd(), protocols=["hard", "classic"])
    assert list(res["protocols"]) == ["classic", "hard"]
    with pytest.raises(ValueError, match="not supported"):
        evaluate(ranks, [{"ok": [0]}, {"ok": [1]}], protocols=["easy"])
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate(ranks, _both_gnd(), protocols=["classik"])
    with pytest.raises(ValueError, match="query names"):
        evaluate(ranks, _both_gnd(), query_names=["only-one"])


# --- cross-check against a naive implementation --------------------------------------------


def naive_query(ranking, ok, junk, kappas):
    """Walk the ranking, drop junk (that is not also positive), integrate precision by hand."""
    ok, junk = set(ok), set(junk)
    clean = [x for x in ranking if x in ok or x not in junk]
    ap, found, last = 0.0, 0, 0
    for r, x in enumerate(clean):
        if x in ok:
            before = 1.0 if r == 0 else found / r
            found += 1
            ap += (before + found / (r + 1)) / 2
            last = r + 1
    prs = []
    for k in kappas:
        kk = min(k, last)
        prs.append(sum(x in ok for x in clean[:kk]) / kk if kk else 0.0)
    return ap / len(ok), prs


def test_matches_naive_on_random_rankings():
    rng = np.random.default_rng(0)
    n, nq, kappas = 40, 25, (1, 3, 5, 10)
    ranks = np.stack([rng.permutation(n) for _ in range(nq)], axis=1)
    gnd = []
    for _ in range(nq):
        perm = rng.permutation(n)
        n_ok, n_junk = rng.integers(0, 8), rng.integers(0, 8)
        gnd.append({"ok": perm[:n_ok].tolist(), "junk": perm[n_ok : n_ok + n_junk].tolist()})
    gnd[3]["ok"] = []  # make sure one query is empty
    m, aps, mpr, prs = compute_map(ranks, gnd, kappas)
    want_aps, want_prs = [], []
    for q in range(nq):
        if not gnd[q]["ok"]:
            continue
        ap, pr = naive_query(ranks[:, q].tolist(), gnd[q]["ok"], gnd[q]["junk"], kappas)
        np.testing.assert_allclose(aps[q], ap, rtol=1e-12)
        np.testing.assert_allclose(prs[q], pr, rtol=1e-12)
        want_aps.append(ap)
        want_prs.append(pr)
    assert m == pytest.approx(np.mean(want_aps))
    np.testing.assert_allclose(mpr, np.mean(want_prs, axis=0))
    assert np.isnan(aps[3])


# --- skipped database images (issue 11, defect 3) --------------------------------------------


def _descriptors(skipped=()):
    from regattn_lib.extraction.extract import Descriptors
    from regattn_lib.extraction.image_stream import SkippedImage

    g = torch.Generator().manual_seed(3)
    db = torch.nn.functional.normalize(torch.randn(30, 8, generator=g), dim=1)
    q = torch.nn.functional.normalize(db[[0, 7]] + 0.8 * torch.randn(2, 8, generator=g), dim=1)
    db = db.clone()
    db[list(skipped)] = 0  # what extraction stores for a skipped image
    names = [f"d{i}" for i in range(30)]
    sk = [SkippedImage(i, names[i], f"{names[i]}.jpg", "cannot read image") for i in skipped]
    return Descriptors(db, q, names, ["q0", "q1"], skipped=sk)


def test_a_skipped_positive_counts_as_ranked_last_and_never_raises_the_map():
    from types import SimpleNamespace

    from regattn_lib.core.search import cosine_ranks
    from regattn_lib.experiments import pipeline as P

    gnd = [{"ok": [0, 3, 11], "junk": [5]}, {"ok": [7, 2], "junk": []}]
    ds = SimpleNamespace(gnd=gnd, qimlist=["q0", "q1"])
    full = _descriptors()
    skip = _descriptors(skipped=(3, 7, 20))
    # by hand: the full ranking with the skipped images moved to the end, in index order
    r = cosine_ranks(full.queries, full.db)
    by_hand = np.stack([np.concatenate([c[~np.isin(c, [3, 7, 20])], [3, 7, 20]]) for c in r.T], 1)
    ranked = P.rank(skip)
    assert (ranked[-3:] == np.array([[3, 3], [7, 7], [20, 20]])).all()
    np.testing.assert_array_equal(ranked, by_hand)
    # a zero row scores 0, above every negative similarity: rank must not leave it there
    assert (full.queries @ full.db.T).min() < 0
    m_skip = P.score({"m": skip}, ds, protocols=["classic"])["m"]
    m_full = P.score({"m": full}, ds, protocols=["classic"])["m"]
    m_hand = evaluate(by_hand, gnd, protocols=["classic"])
    assert m_skip["protocols"]["classic"]["map"] == m_hand["protocols"]["classic"]["map"]
    assert m_skip["protocols"]["classic"]["map"] <= m_full["protocols"]["classic"]["map"]
    assert m_skip["skipped"] == ["d3", "d7", "d20"] and m_full["skipped"] == []
    # with QE the skipped images stay last and never serve as neighbours
    qe = P.rank(skip, qe_k=3)
    assert (qe[-3:] == np.array([[3, 3], [7, 7], [20, 20]])).all()
    assert sorted(qe[:, 0].tolist()) == list(range(30))


# --- per_query_table ------------------------------------------------------------------------


def test_per_query_table_hand_worked():
    # 4 database images; query a: positive 0, b: positives 2 and 3, c: none (AP NaN).
    gnd = [{"ok": [0], "junk": []}, {"ok": [2, 3], "junk": []}, {"ok": [], "junk": []}]
    base = np.array([[1, 2, 0], [0, 3, 1], [2, 0, 2], [3, 1, 3]])
    ours = np.array([[0, 0, 0], [1, 2, 1], [2, 1, 2], [3, 3, 3]])
    aps = {
        m: evaluate(r, gnd, protocols=["classic"])["protocols"]["classic"]["aps"]
        for m, r in (("base", base), ("ours", ours))
    }
    table = per_query_table(["a", "b", "c"], aps)
    assert list(table.columns) == ["query", "AP base", "AP ours", "gain ours"]
    assert list(table["query"]) == ["a", "b", "c"]
    # a: base finds the positive 2nd: (0/1 + 1/2) / 2 = 0.25; ours 1st: 1.
    # b: base ranks both first: 1; ours at ranks 1 and 3: ((0 + 1/2) + (1/3 + 2/4)) / 2 / 2 = 1/3.
    np.testing.assert_allclose(table["AP base"], [25.0, 100.0, np.nan])
    np.testing.assert_allclose(table["AP ours"], [100.0, 100.0 / 3, np.nan])
    np.testing.assert_allclose(table["gain ours"], [75.0, 100.0 / 3 - 100.0, np.nan])
    against_ours = per_query_table(["a", "b", "c"], aps, baseline="ours")
    assert list(against_ours.columns) == ["query", "AP base", "AP ours", "gain base"]
    np.testing.assert_allclose(against_ours["gain base"], -table["gain ours"])


def test_per_query_table_rejects_a_wrong_baseline_or_length():
    with pytest.raises(ValueError, match="baseline 'x'"):
        per_query_table(["a"], {"m": [1.0]}, baseline="x")
    with pytest.raises(ValueError, match="2 APs for 1 queries"):
        per_query_table(["a"], {"m": [1.0, 2.0]})
