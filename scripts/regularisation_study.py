"""Measure the attention's regularisers on a profile's classification split (after notebook 02).

    .venv/bin/python scripts/regularisation_study.py --profile demo

Writes ``results/<profile>/tables/regularisation.{csv,md}``; the runs stay under
``results/<profile>/models/regularisation/`` (resumable).
"""

from __future__ import annotations

import argparse

from regattn_lib.experiments import pipeline as P
from regattn_lib.experiments import reports as R
from regattn_lib.experiments.regularisation import regularisation_study


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--kind", default="regional", choices=("regional", "context"))
    ap.add_argument("--iterations", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--results", default=None)
    ap.add_argument(
        "--train-set",
        default=None,
        help="another classification set of the same design (default: the profile's)",
    )
    args = ap.parse_args(argv)
    overrides = {"train": {"train_set": args.train_set}} if args.train_set else None
    ctx = P.setup(
        args.profile,
        data_root=args.data_root,
        results=args.results,
        device=args.device,
        overrides=overrides,
    )
    table = regularisation_study(ctx, kind=args.kind, iterations=args.iterations)
    notes = [
        f"{args.kind} attention, seed {ctx.profile.train.seeds[0]}, the same cached views and "
        f"frozen fc for every variant; validation on the classification val split of "
        f"{ctx.profile.train.train_set}",
        "rule: the variant with the lowest best validation loss sets the profile's attention "
        "learning rate",
        *ctx.profile.notes,
    ]
    R.write_table(table, ctx.dirs["tables"], "regularisation", notes)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
