"""What fewer seeds change on validation, read from a finished run's logs without retraining.

    .venv/bin/python scripts/seed_budget.py results/demo --keep 2 \
        --training results/demo/metrics/training_3seeds.csv \
        --metric-log results/demo/metrics/metric_training_3seeds.csv

Per attention model (the paper's recipe: validation loss and accuracy of the kept checkpoint;
metric learning: validation-landmark mAP of the chosen rate's runs), the mean and sd over every
seed of the run and over its first ``--keep`` seeds (``tables.seed_subset_table``). Writes
``tables/seed_budget.{csv,md}`` of the results folder. Only validation splits are read: never
the test set. The demo went from 3 to 2 seeds for its 25-minute budget; the 3-seed run's logs
(commit c471009's run) are kept beside its results for this table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from regattn_lib.experiments import reports as R
from regattn_lib.experiments.tables import seed_subset_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="the results folder the table goes to")
    ap.add_argument("--keep", type=int, default=2, help="seeds kept (the first ones; 2)")
    ap.add_argument("--training", type=Path, required=True, help="a run's training.csv")
    ap.add_argument("--metric-log", type=Path, required=True, help="its metric_training.csv")
    args = ap.parse_args(argv)
    table = seed_subset_table(pd.read_csv(args.training), pd.read_csv(args.metric_log), args.keep)
    notes = [
        f"validation only: each model's measure over every seed of the run read from "
        f"{args.training.name} and {args.metric_log.name}, and over its first {args.keep} "
        "seeds; the kept seeds' models are the same runs",
        "the demo keeps 2 seeds (of 3) for its 25-minute budget on 2 cores",
    ]
    csv, _ = R.write_table(table, args.results / "tables", "seed_budget", notes)
    print(f"wrote {csv}")
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
