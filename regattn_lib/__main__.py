"""Command line: ``python -m regattn_lib eval --profile smoke`` and friends.

``eval``: generate/check the profile's data, learn the whitening, extract descriptors (cached)
and print mAP under the classic and Easy/Medium/Hard protocols for the chosen methods.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

METHODS = ("rmac", "rmac-nowhiten", "regional", "context", "mac", "spoc", "crow")
GLOBAL_LABELS = {"mac": "MAC", "spoc": "SPoC", "crow": "CroW"}  # the papers' spellings


def _heads(ctx, methods, whitening):
    from . import pipeline as P
    from .extract import GlobalHead, RegionalHead

    heads = {}
    for m in methods:
        if m == "rmac":
            heads["R-MAC + PCA"] = RegionalHead(
                name=m, levels=ctx.profile.levels, whitening=whitening
            )
        elif m == "rmac-nowhiten":
            heads["R-MAC"] = RegionalHead(name=m, levels=ctx.profile.levels)
        elif m in ("regional", "context"):
            att = P.load_attention(ctx, m)
            label = P.REGIONAL if m == "regional" else P.CONTEXT
            heads[label] = RegionalHead(
                name=m, levels=ctx.profile.levels, attention=att, whitening=whitening
            )
        else:
            heads[GLOBAL_LABELS[m]] = GlobalHead(name=m, pooling=m)
    return heads


def cmd_eval(args: argparse.Namespace) -> int:
    from . import pipeline as P
    from .evaluate import results_frame

    t0 = time.perf_counter()
    ctx = P.setup(args.profile, data_root=args.data_root, device=args.device)
    P.prepare_data(ctx, progress=not args.quiet)
    whitening = P.learn_whitening(ctx, progress=not args.quiet)
    name = args.dataset or ctx.profile.datasets[0]
    ds = P.dataset(ctx, name)
    heads = _heads(ctx, args.methods, whitening)
    descs = P.describe(ctx, ds, heads, progress=not args.quiet)
    rows = []
    for method, result in P.score(descs, ds, qe_k=args.qe).items():
        df = results_frame(result)
        df.insert(0, "method", method)
        # say which rows are whitened: MAC/SPoC/CroW here are raw, unlike in notebook 05
        w = heads[method].whitening
        df.insert(1, "whitening", "none" if w is None else f"PCA-{w.out_dim}d")
        rows.append(df)
    table = pd.concat(rows, ignore_index=True)
    print(f"{name}: {ds.n_db} database images, {ds.n_queries} queries; profile {ctx.profile.name}, "
          f"backbone {ctx.profile.backbone}{f', AQE top-{args.qe}' if args.qe else ''}")  # fmt: skip
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"({time.perf_counter() - t0:.1f} s; descriptors cached in {ctx.cache_dir})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m regattn_lib", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = ap.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="extract descriptors and print mAP for a profile's test set")
    ev.add_argument("--profile", default="smoke", help="smoke | demo | paper (default smoke)")
    ev.add_argument("--dataset", default=None, help="default: the profile's first test set")
    ev.add_argument("--methods", nargs="+", default=["rmac"], choices=METHODS)
    ev.add_argument(
        "--qe", type=int, default=0, help="average query expansion with the top-k (0: off)"
    )
    ev.add_argument("--device", default="auto")
    ev.add_argument("--data-root", default=None)
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
