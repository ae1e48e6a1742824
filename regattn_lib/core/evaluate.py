"""Retrieval evaluation: the field's trapezoid AP, mAP and mP@k, classic and revisited protocols.

Conventions (spec section 4): junk images are removed from a ranking by shifting each positive's
rank down by the number of junk images ranked before it; AP is the trapezoid rule over the
precision-recall curve; a query with no positives is left out of the mean. ``compute_map`` keeps
the contract of revisitop's function of the same name so results can be compared one to one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Protocol names in the order they are reported.
PROTOCOLS = ("classic", "easy", "medium", "hard")


def compute_ap(ranks_of_positives: np.ndarray, n_positives: int) -> float:
    """Trapezoid average precision of one query.

    Parameters
    ----------
    ranks_of_positives:
        Junk-free, 0-based ranks r_0 < r_1 < ... of the positives that were retrieved.
    n_positives:
        Number of positives of the query; positives absent from ``ranks_of_positives`` (e.g. a
        truncated ranking) count as never retrieved.

    Returns sum_j (p0_j + p1_j) / 2 / n_positives with p0_j = j / r_j (1 when r_j = 0) and
    p1_j = (j + 1) / (r_j + 1).
    """
    if n_positives <= 0:
        raise ValueError("compute_ap needs at least one positive")
    r = np.asarray(ranks_of_positives, dtype=np.float64).ravel()
    if r.size == 0:
        return 0.0
    j = np.arange(r.size, dtype=np.float64)
    # r == 0 can only happen for j == 0; dividing by 1 there and overriding keeps it vectorised.
    p0 = np.where(r == 0, 1.0, j / np.where(r == 0, 1.0, r))
    p1 = (j + 1.0) / (r + 1.0)
    return float(((p0 + p1) / 2.0).sum() / n_positives)


def _as_numpy_ranks(ranks: Any) -> np.ndarray:
    """``ranks`` as a 2-D integer numpy array (torch tensors are moved to the CPU)."""
    if hasattr(ranks, "detach"):
        ranks = ranks.detach().cpu().numpy()
    arr = np.asarray(ranks)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"ranks must have shape (database size, n_queries), got {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _indices(q: Mapping[str, Any], key: str) -> np.ndarray:
    """Integer indices stored under ``key`` (empty when absent or ``None``)."""
    v = q.get(key)
    if v is None:
        return np.empty(0, dtype=np.int64)
    return np.asarray(v, dtype=np.int64).ravel()


def compute_map(
    ranks: Any, gnd: Sequence[Mapping[str, Any]], kappas: Sequence[int] = (1, 5, 10)
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """mAP and mean precision at k over queries (revisitop's contract).

    Parameters
    ----------
    ranks:
        numpy array or torch tensor of shape (database size or top-k, n_queries); column q holds
        database indices sorted by decreasing similarity to query q.
    gnd:
        One dict per query with ``'ok'`` (positive indices) and optionally ``'junk'``.
    kappas:
        The k of mP@k, default (1, 5, 10). For each k, k' = min(k, 1-based rank of the last
        retrieved positive) and the precision is (#positives within k') / k'.

    Returns ``(map, aps, mpr, prs)``: mAP (fraction, not %), per-query APs of shape (Q,) with NaN
    for queries without positives, mean precisions of shape (len(kappas),) and per-query
    precisions of shape (Q, len(kappas)) with NaN rows for queries without positives. Queries
    without positives are left out of both means (NaN when no query has positives).
    """
    r = _as_numpy_ranks(ranks)
    nq = len(gnd)
    if r.shape[1] != nq:
        raise ValueError(f"ranks has {r.shape[1]} query columns but gnd has {nq} queries")
    kappas = [int(k) for k in kappas]
    aps = np.full(nq, np.nan)
    prs = np.full((nq, len(kappas)), np.nan)
    for i in range(nq):
        ok = _indices(gnd[i], "ok")
        if ok.size == 0:
            continue
        junk = _indices(gnd[i], "junk")
        col = r[:, i]
        pos = np.flatnonzero(np.isin(col, ok))
        junk_pos = np.flatnonzero(np.isin(col, junk))
        # Each positive moves up by the number of junk images strictly before it.
        pos = pos - np.searchsorted(junk_pos, pos, side="left")
        aps[i] = compute_ap(pos, ok.size)
        if pos.size == 0:
            # Nothing retrieved (truncated ranking): zero precision at every k.
            prs[i, :] = 0.0
            continue
        last = int(pos.max()) + 1
        for j, k in enumerate(kappas):
            kq = min(last, k)
            prs[i, j] = np.count_nonzero(pos + 1 <= kq) / kq
    valid = ~np.isnan(aps)
    if valid.any():
        mean_ap = float(aps[valid].mean())
        mpr = prs[valid].mean(axis=0)
    else:
        mean_ap = math.nan
        mpr = np.full(len(kappas), np.nan)
    return mean_ap, aps, mpr, prs


def _unique_concat(*parts: np.ndarray) -> list[int]:
    """Concatenate index lists, dropping repeats but keeping first-seen order."""
    seen: dict[int, None] = {}
    for p in parts:
        for v in p.tolist():
            seen.setdefault(int(v), None)
    return list(seen)


def classic_gnd(gnd: Sequence[Mapping[str, Any]]) -> list[dict[str, list[int]]]:
    """Ground truth of the classic protocol: positives = good + ok, junk ignored.

    The classic pickles already store the good images inside ``'ok'`` (spec section 4); a
    separate ``'good'`` key, when present (e.g. ground truth built from VGG's text files), is
    merged in without duplicates.
    """
    out = []
    for i, q in enumerate(gnd):
        if "ok" not in q:
            raise KeyError(f"query {i}: no 'ok' list, the classic protocol is not available")
        ok = _unique_concat(_indices(q, "good"), _indices(q, "ok"))
        out.append({"ok": ok, "junk": _unique_concat(_indices(q, "junk"))})
    return out


def revisited_gnd(gnd: Sequence[Mapping[str, Any]], protocol: str) -> list[dict[str, list[int]]]:
    """Ground truth of a revisited protocol (Radenovic et al. 2018).

    Parameters
    ----------
    gnd:
        One dict per query with ``'easy'``, ``'hard'`` and ``'junk'``.
    protocol:
        ``'easy'``: ok = easy, junk = junk + hard; ``'medium'``: ok = easy + hard, junk = junk;
        ``'hard'``: ok = hard, junk = junk + easy.
    """
    if protocol not in ("easy", "medium", "hard"):
        raise ValueError(f"unknown revisited protocol {protocol!r}; use easy, medium or hard")
    out = []
    for i, q in enumerate(gnd):
        if "easy" not in q or "hard" not in q:
            raise KeyError(f"query {i}: no 'easy'/'hard' lists, revisited protocols unavailable")
        easy, hard, junk = _indices(q, "easy"), _indices(q, "hard"), _indices(q, "junk")
        if protocol == "easy":
            ok, jk = easy, np.concatenate([junk, hard])
        elif protocol == "medium":
            ok, jk = np.concatenate([easy, hard]), junk
        else:
            ok, jk = hard, np.concatenate([junk, easy])
        out.append({"ok": _unique_concat(ok), "junk": _unique_concat(jk)})
    return out


def supported_protocols(gnd: Sequence[Mapping[str, Any]]) -> list[str]:
    """Protocols the ground truth supports: 'classic' when every query has 'ok', the revisited
    ones when every query has 'easy' and 'hard'."""
    if len(gnd) == 0:
        return []
    out = []
    if all("ok" in q for q in gnd):
        out.append("classic")
    if all("easy" in q and "hard" in q for q in gnd):
        out.extend(["easy", "medium", "hard"])
    return out


def protocol_gnd(gnd: Sequence[Mapping[str, Any]], protocol: str) -> list[dict[str, list[int]]]:
    """The ``{'ok', 'junk'}`` ground truth of ``protocol`` ('classic', 'easy', 'medium', 'hard')."""
    if protocol == "classic":
        return classic_gnd(gnd)
    return revisited_gnd(gnd, protocol)


def evaluate(
    ranks: Any,
    gnd: Sequence[Mapping[str, Any]],
    protocols: Sequence[str] | None = None,
    kappas: Sequence[int] = (1, 5, 10),
    query_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate one ranking under every requested protocol.

    Parameters
    ----------
    ranks:
        (database size, n_queries) ranking, as for ``compute_map``.
    gnd:
        The dataset's raw per-query ground truth (keys 'ok' and/or 'easy', 'hard', 'junk').
    protocols:
        Subset of 'classic', 'easy', 'medium', 'hard'; default ``None``: all that ``gnd``
        supports. Asking for an unsupported one raises ``ValueError``.
    kappas:
        The k of mP@k, default (1, 5, 10).
    query_names:
        Optional names, one per query, kept in the result for per-query tables.

    Returns ``{'kappas': [...], 'query_names': [...] or None, 'protocols': {name: {'map': mAP %,
    'mp': {k: mP@k %}, 'aps': per-query AP % (NaN if no positives), 'n_queries': queries
    counted in the mean}}}``.
    """
    available = supported_protocols(gnd)
    if protocols is None:
        protocols = available
    for p in protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"unknown protocol {p!r}; choose from {PROTOCOLS}")
        if p not in available:
            raise ValueError(f"protocol {p!r} not supported by this ground truth ({available})")
    if query_names is not None and len(query_names) != len(gnd):
        raise ValueError(f"{len(query_names)} query names for {len(gnd)} queries")
    kappas = [int(k) for k in kappas]
    out: dict[str, Any] = {
        "kappas": kappas,
        "query_names": list(query_names) if query_names is not None else None,
        "protocols": {},
    }
    for p in sorted(protocols, key=PROTOCOLS.index):
        m, aps, mpr, _ = compute_map(ranks, protocol_gnd(gnd, p), kappas)
        out["protocols"][p] = {
            "map": 100.0 * m,
            "mp": {k: 100.0 * float(v) for k, v in zip(kappas, mpr, strict=True)},
            "aps": 100.0 * aps,
            "n_queries": int(np.count_nonzero(~np.isnan(aps))),
        }
    return out


def results_frame(result: Mapping[str, Any]):
    """One row per protocol: ``protocol``, ``mAP``, ``mP@k`` for each k (all in %), ``n_queries``.

    Returns a ``pandas.DataFrame``.
    """
    import pandas as pd

    rows = []
    for p, r in result["protocols"].items():
        row = {"protocol": p, "mAP": r["map"]}
        row.update({f"mP@{k}": v for k, v in r["mp"].items()})
        row["n_queries"] = r["n_queries"]
        rows.append(row)
    cols = ["protocol", "mAP"] + [f"mP@{k}" for k in result["kappas"]] + ["n_queries"]
    return pd.DataFrame(rows, columns=cols)


def per_query_table(
    query_names: Sequence[str], aps: Mapping[str, Any], baseline: str | None = None
):
    """Per-query AP of several methods and each one's gain over a baseline, one row per query.

    Parameters
    ----------
    query_names:
        One name per query (the ``query`` column).
    aps:
        Method -> per-query AP in %, NaN for queries without positives (``evaluate``'s
        ``'aps'``); the columns follow its order.
    baseline:
        The method the gains are measured against; default ``None``: the first of ``aps``.

    Returns a ``pandas.DataFrame`` with ``query``, ``AP <method>`` for every method, then
    ``gain <method>`` = its AP minus the baseline's for every other method (NaN where either
    AP is NaN).
    """
    import pandas as pd

    methods = list(aps)
    baseline = methods[0] if baseline is None else baseline
    if baseline not in aps:
        raise ValueError(f"baseline {baseline!r} is not one of the methods {methods}")
    table = pd.DataFrame({"query": list(query_names)})
    for m in methods:
        values = np.asarray(aps[m], dtype=np.float64)
        if values.shape != (len(table),):
            raise ValueError(f"{m}: {values.size} APs for {len(table)} queries")
        table[f"AP {m}"] = values
    for m in methods:
        if m != baseline:
            table[f"gain {m}"] = table[f"AP {m}"] - table[f"AP {baseline}"]
    return table
