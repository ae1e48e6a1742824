"""Command line: ``python -m regattn_lib eval --profile smoke`` and friends.

``eval``: generate/check the profile's data, learn the whitening, extract descriptors (cached)
and print mAP under the classic and Easy/Medium/Hard protocols for the chosen methods.
``--precision fp32 fp16`` compares backbone precisions on the same data: mAP of each, and the
cosine distance between their descriptors.
``index DIR`` / ``search DIR QUERY``: a folder of one's own photos as a searchable database
(``apps.photos.index``, ``apps.photos.search``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import pandas as pd

from regattn_lib.experiments import pipeline
from regattn_lib.extraction.methods import METHODS
from regattn_lib.runtime.environment import PRECISIONS
from regattn_lib.runtime.identity import fc_weight


def _heads(ctx, names, whitening):
    """Heads of the chosen methods (``methods.METHODS`` names), keyed by their labels. The
    global poolings (MAC, SPoC, CroW, CAM) stay raw here, unlike in the SOTA table."""
    heads = {}
    for name in names:
        m = METHODS[name]
        heads[m.label] = m.build(
            levels=ctx.profile.levels,
            whitening=whitening if m.family == "regional" else None,
            attention=None
            if m.attention_kind is None
            else pipeline.load_attention(ctx, m.attention_kind),
            fc_weight=fc_weight(ctx.backbone),
        )
    return heads


def _scores_table(descs, ds, heads, qe: int) -> pd.DataFrame:
    from regattn_lib.core.evaluate import results_frame

    rows = []
    for method, result in pipeline.score(descs, ds, qe_k=qe).items():
        df = results_frame(result)
        df.insert(0, "method", method)
        # say which rows are whitened: MAC/SPoC/CroW here are raw, unlike in notebook 05
        w = heads[method].whitening
        df.insert(1, "whitening", "none" if w is None else f"PCA-{w.out_dim}d")
        rows.append(df)
    return pd.concat(rows, ignore_index=True)


def precision_differences(reference, other, ref_table, other_table) -> pd.DataFrame:
    """Per method: cosine distance between the two precisions' descriptors (database and
    queries; max and median over vectors) and the largest mAP change over the protocols."""
    import torch

    rows = []
    for method in reference:
        a = torch.cat([reference[method].db, reference[method].queries]).double()
        b = torch.cat([other[method].db, other[method].queries]).double()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
        dist = (1 - cos).clamp_min(0)
        r = ref_table[ref_table["method"] == method].set_index("protocol")["mAP"]
        o = other_table[other_table["method"] == method].set_index("protocol")["mAP"]
        rows.append(
            {
                "method": method,
                "max cos distance": float(dist.max()),
                "median cos distance": float(dist.median()),
                "max |mAP change|": float((o - r).abs().max()),
            }
        )
    return pd.DataFrame(rows)


def cmd_eval(args: argparse.Namespace) -> int:
    from regattn_lib.runtime.environment import resolve_precision

    t0 = time.perf_counter()
    ctx = pipeline.setup(args.profile, data_root=args.data_root, device=args.device)
    pipeline.prepare_data(ctx, progress=not args.quiet)
    whitening = pipeline.learn_whitening(ctx, progress=not args.quiet)
    name = args.dataset or ctx.profile.datasets[0]
    ds = pipeline.dataset(ctx, name)
    heads = _heads(ctx, args.methods, whitening)
    precisions = [
        resolve_precision(p, ctx.device) for p in args.precision or [ctx.profile.precision]
    ]
    descs, tables = {}, {}
    for prec in dict.fromkeys(precisions):
        descs[prec] = pipeline.describe(ctx, ds, heads, progress=not args.quiet, precision=prec)
        tables[prec] = _scores_table(descs[prec], ds, heads, args.qe)
    print(
        f"{name}: {ds.n_db} database images, {ds.n_queries} queries; profile {ctx.profile.name}, "
        f"backbone {ctx.profile.backbone}{f', AQE top-{args.qe}' if args.qe else ''}"
    )
    fmt = {"float_format": lambda v: f"{v:.2f}", "index": False}
    for prec, table in tables.items():
        if len(tables) > 1:
            print(f"\nbackbone precision {prec}:")
        print(table.to_string(**fmt))
    ref = next(iter(tables))
    for prec in list(tables)[1:]:
        whitening_precision = resolve_precision(ctx.profile.precision, ctx.device)
        print(f"\n{prec} against {ref} (whitening learned in {whitening_precision} for both):")
        diff = precision_differences(descs[ref], descs[prec], tables[ref], tables[prec])
        print(
            diff.to_string(
                index=False,
                formatters={
                    "max cos distance": "{:.2e}".format,
                    "median cos distance": "{:.2e}".format,
                    "max |mAP change|": "{:.2f}".format,
                },
            )
        )
    print(f"({time.perf_counter() - t0:.1f} s; descriptors cached in {ctx.cache_dir})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (``eval`` and its options)."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    ap = argparse.ArgumentParser(
        # the console command `regattn` (pyproject [project.scripts]) or `python -m regattn_lib`
        prog="regattn" if invoked == "regattn" else "python -m regattn_lib",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="extract descriptors and print mAP for a profile's test set")
    ev.add_argument("--profile", default="smoke", help="smoke | demo | paper (default smoke)")
    ev.add_argument("--dataset", default=None, help="default: the profile's first test set")
    ev.add_argument("--methods", nargs="+", default=["rmac"], choices=list(METHODS))
    ev.add_argument(
        "--qe", type=int, default=0, help="average query expansion with the top-k (0: off)"
    )
    ev.add_argument("--device", default="auto")
    ev.add_argument(
        "--precision",
        nargs="+",
        default=None,
        choices=PRECISIONS,
        help="backbone precision (default: the profile's; paper fp32). Two or more, e.g. "
        "'fp32 fp16': scores each and prints the cosine distance between their descriptors "
        "and the mAP change against the first",
    )
    ev.add_argument("--data-root", default=None)
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)
    from regattn_lib.apps.photos.search import (
        add_photo_commands,  # index / search a folder of one's own photos
    )

    add_photo_commands(sub)
    rep = sub.add_parser(
        "report", help="(re)write results/<profile>/REPORT.md from the tables and figures on disk"
    )
    rep.add_argument("results_dir", nargs="+", help="e.g. results/demo")
    rep.add_argument("--check", action="store_true", help="exit 1 when a report is out of date")
    rep.set_defaults(func=cmd_report)
    return ap


def cmd_report(args: argparse.Namespace) -> int:
    """Write (or check) each results folder's report page."""
    from regattn_lib.experiments import report_page

    return report_page.main([*args.results_dir, *(["--check"] if args.check else [])])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
