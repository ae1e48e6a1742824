"""Replaying a shorter metric-learning schedule from a run's validation curves
(``metric_plan.replay_schedule``), on a hand-made log."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from regattn_lib.experiments.metric_plan import replay_schedule, schedule_table


def _curves() -> tuple[pd.DataFrame, pd.DataFrame]:
    # one kind; the sweep (seed 0) tried lr 0.1 and 1; the full schedule (3 epochs) picked 1,
    # whose peak comes late; seed 1 trained at 1 only
    val = {
        ("sweep", 0, 0.1): [10, 14, 13, 12],
        ("sweep", 0, 1.0): [10, 11, 12, 16],
        ("seed", 1, 1.0): [10, 12, 11, 15],
    }
    rows = [
        {
            "kind": "k",
            "stage": st,
            "seed": sd,
            "lr": lr,
            "weight_decay": 0.0,
            "epoch": e,
            "val_map": v,
        }
        for (st, sd, lr), vs in val.items()
        for e, v in enumerate(vs)
    ]
    log = pd.DataFrame(
        [
            {"kind": "k", "stage": st, "seed": sd, "lr": lr, "epochs": 3, "time_s": 30.0}
            for (st, sd, lr) in val
        ]
    )
    return pd.DataFrame(rows), log


def test_full_schedule_replays_the_logged_choice():
    curves, log = _curves()
    (row,) = replay_schedule(curves, log, 3, (0.1, 1.0))
    assert row["chosen lr"] == 1.0 and row["val mAP R-MAC"] == 10
    assert row["val mAP (seed mean)"] == pytest.approx((16 + 15) / 2)
    assert row["val mAP sd"] == pytest.approx(math.sqrt(0.5))
    assert row["seeds known"] == 2
    # (2 rates + 1 more seed) x 3 epochs x 10 s per epoch
    assert row["train minutes"] == pytest.approx(3 * 3 * 10 / 60)


def test_a_shorter_cap_changes_the_pick_and_knows_only_the_first_seed():
    curves, log = _curves()
    (row,) = replay_schedule(curves, log, 1, (0.1, 1.0))
    assert row["chosen lr"] == 0.1 and row["val mAP (seed mean)"] == 14
    assert row["seeds known"] == 1 and math.isnan(row["val mAP sd"])
    (row,) = replay_schedule(curves, log, 2, (1.0,))  # one rate: best of epochs 0..2
    assert row["chosen lr"] == 1.0
    assert row["val mAP (seed mean)"] == pytest.approx((12 + 12) / 2)
    assert row["train minutes"] == pytest.approx(2 * 2 * 10 / 60)


def test_schedule_table_covers_every_cap_and_rate_subset():
    curves, log = _curves()
    table = schedule_table(curves, log)
    assert len(table) == 3 * 3  # caps 1..3 x subsets {0.1}, {1}, {0.1, 1}
    assert set(table["lrs"]) == {"0.1", "1", "0.1 1"}
