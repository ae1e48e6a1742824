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


def test_seed_subset_table_by_hand():
    """Fewer seeds on validation: means and sd over all seeds and over the first ``keep``, the
    paper's recipe from the training summary, metric learning from the chosen rate's runs."""
    from regattn_lib.experiments.tables import seed_subset_table

    training = pd.DataFrame(
        {
            "stage": ["fc", "regional", "regional seed 2", "regional seed 1", "context"],
            "kept val_loss": [9.0, 1.0, 4.0, 2.0, 5.0],
            "kept val_acc": [0.0, 0.5, 0.2, 0.3, 0.1],
        }
    )
    log = pd.DataFrame(
        {
            "kind": ["metric-regional"] * 4,
            "stage": ["sweep", "sweep", "seed", "seed"],
            "seed": [0, 0, 1, 2],
            "chosen": [False, True, False, False],
            "val mAP": [99.0, 10.0, 14.0, 30.0],
        }
    )
    t = seed_subset_table(training, log, keep=2).set_index(["model", "measure"])
    loss = t.loc[("regional (the paper's recipe)", "kept val_loss")]
    # seeds 0, 1, 2 -> 1, 2, 4: mean 7/3; the first two 1, 2: mean 1.5, sd sqrt(0.5)
    assert loss["seeds"] == 3 and loss["seeds kept"] == 2
    assert loss["mean"] == pytest.approx(7 / 3) and loss["mean kept"] == pytest.approx(1.5)
    assert loss["sd kept"] == pytest.approx(0.5**0.5)
    assert loss["change"] == pytest.approx(1.5 - 7 / 3)
    ctx = t.loc[("context (the paper's recipe)", "kept val_loss")]
    assert ctx["seeds"] == 1 and ctx["mean kept"] == 5.0  # one seed: kept as it is
    m = t.loc[("metric-regional", "val mAP")]  # the unchosen sweep run (99) is not a seed
    assert m["mean"] == pytest.approx(18.0) and m["mean kept"] == pytest.approx(12.0)
