"""How much room the synthetic benchmark leaves the attention, and how much of it each learned
attention takes (after notebook 02; offline profiles).

    .venv/bin/python scripts/attention_room.py --profile demo

Writes ``results/<profile>/tables/attention_room.{csv,md}``: R-MAC; the ceiling (alpha from the
test images' own landmark masks: not a method); the diagnostic (an attention supervised by the
metric-learning split's training masks); the learned attention models (first seed), all from
one cache of the test images' pooled regions (``experiments.attention_room``).
"""

from __future__ import annotations

import argparse

from regattn_lib.experiments import pipeline as P
from regattn_lib.experiments import reports as R
from regattn_lib.experiments.attention_room import CEILING_EPS, attention_room


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default=None, help="data root (default: $REGATTN_DATA or data/)")
    ap.add_argument("--results", default=None, help="results folder of the run (results/<run>)")
    args = ap.parse_args(argv)
    ctx = P.setup(args.profile, data_root=args.data, results=args.results, device=args.device)
    table = attention_room(ctx, P.learn_whitening(ctx, progress=False))
    notes = [
        f"ceiling: alpha_i = o_i + {CEILING_EPS}, o_i the landmark share of region i in the test "
        "image's own mask; it reads the test set's ground truth, so it is a bound, not a method",
        f"diagnostic: an attention regressed onto o_i + {CEILING_EPS} of the metric-learning "
        "split's training images (full-batch Adam, lr 1e-3, 300 steps), the step kept on its "
        "validation landmarks' masks; the test set is not read",
        "learned rows: the first seed's model; every row from one cache of the test images' "
        "pooled regions, whitened as in the tables; gain over R-MAC with its 95% paired-bootstrap "
        "interval over queries; share of the room = gain / the ceiling's gain",
        *ctx.profile.notes,
    ]
    R.write_table(table, ctx.dirs["tables"], "attention_room", notes)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
