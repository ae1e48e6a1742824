"""What a shorter metric-learning schedule would have kept, read from a finished run's
validation curves (``metrics/metric_history.csv``, written by notebook 02) without retraining.

    .venv/bin/python scripts/metric_budget.py results/demo [--epochs 3 5 8 12 20]
        [--curves FILE --log FILE]   # another run's curves and log (default: the run's own)

Training is deterministic and cirtorch's learning-rate decay does not depend on the number of
epochs, so a run capped at E epochs follows the same curve up to E and keeps its best epoch
among 0..E. For each cap and each subset of the swept learning rates, the script replays the
sweep's choice (best validation mAP on the first seed) and reports, per kind, the chosen rate,
the kept validation mAP of every seed (mean and sd) and the training time the schedule would
have cost (the log's seconds per epoch). Writes ``tables/metric_budget.{csv,md}`` of that run.
Nothing here reads the test set: only the validation landmarks of the metric split. (The
profile's weight decays are not replayed: the demo sweeps one, 0.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from regattn_lib.experiments import reports as R
from regattn_lib.experiments.metric_plan import METRIC_HISTORY, METRIC_LOG, schedule_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a run's results folder (results/<run>)")
    ap.add_argument("--epochs", type=int, nargs="+", default=None, help="caps (default: 1..max)")
    ap.add_argument("--curves", type=Path, default=None, help="default: the run's history")
    ap.add_argument("--log", type=Path, default=None, help="default: the run's training log")
    ap.add_argument("--note", action="append", default=[], help="a note added to the table")
    args = ap.parse_args(argv)
    metrics = args.results / "metrics"
    curves_file = args.curves or metrics / f"{METRIC_HISTORY}.csv"
    log_file = args.log or metrics / f"{METRIC_LOG}.csv"
    table = schedule_table(pd.read_csv(curves_file), pd.read_csv(log_file), args.epochs)
    notes = [
        f"replayed from {curves_file} and {log_file} (validation landmarks only)",
        *args.note,
        "a run capped at E epochs keeps its best epoch among 0..E (deterministic training, an "
        "epoch-independent learning-rate decay); seeds other than the first were trained only "
        "at the full schedule's pick, so a cap that picks another rate knows the first seed only",
        "train minutes: (rates swept + other seeds) x epochs x the log's seconds per epoch",
    ]
    R.write_table(table, args.results / "tables", "metric_budget", notes)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
