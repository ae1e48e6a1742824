"""Re-render the compact Markdown beside every CSV of a results folder, and its REPORT.md.

    python scripts/rerender_tables.py results/demo [--no-report]

Reads each ``tables/<name>.csv`` (never writes it) and the notes of ``tables/<name>.md``, and
writes the ``.md`` in the compact layout (``regattn_lib.experiments.compact``); then writes
``REPORT.md`` (``report_page.write_report``). For results written before the compact layout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from regattn_lib.experiments.report_page import write_report  # noqa: E402
from regattn_lib.experiments.reports import rewrite_markdown  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results_dir")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args(argv)
    root = Path(args.results_dir)
    for csv in sorted((root / "tables").glob("*.csv")):
        print(rewrite_markdown(csv))
    if not args.no_report:
        print(write_report(root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
