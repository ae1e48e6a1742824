"""Validation mAP of the metric-learned attention against the number of training landmarks
(after notebook 02, which chose the learning rate on the validation landmarks).

    .venv/bin/python scripts/metric_landmark_study.py --profile demo [--counts 20 40 80 160]

Writes ``results/<profile>/tables/metric_landmarks.{csv,md}``: per kind and count, the kept
epoch's validation mAP and its gain over R-MAC (alpha = 1) on the same validation landmarks.
Nothing here reads the test set.
"""

from __future__ import annotations

import argparse

from regattn_lib.experiments import metric_plan as MP
from regattn_lib.experiments import pipeline as P
from regattn_lib.experiments import reports as R


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default=None, help="data root (default: $REGATTN_DATA or data/)")
    ap.add_argument("--results", default=None, help="results folder of the run (results/<run>)")
    ap.add_argument("--counts", type=int, nargs="+", default=None, help="default: 20 40 80 all")
    args = ap.parse_args(argv)
    ctx = P.setup(args.profile, data_root=args.data, results=args.results, device=args.device)
    table = MP.landmark_count_study(ctx, P.learn_whitening(ctx, progress=False), args.counts)
    notes = [
        f"each kind retrained on the first n training landmarks of the metric split (seed "
        f"{ctx.profile.train.seeds[0]}, the learning rate notebook 02 chose on validation); "
        "validation mAP on all the validation landmarks; the test set is not read",
        *MP.logged_notes(ctx),
        *ctx.profile.notes,
    ]
    R.write_table(table, ctx.dirs["tables"], "metric_landmarks", notes)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
