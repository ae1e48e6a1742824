"""Every number the README, docs/ and the committed REPORT.md quote comes from a result file."""

import re
import shutil
from pathlib import Path

import pandas as pd

from regattn_lib.experiments import quotes
from regattn_lib.experiments.report_page import report_is_current

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "results" / "demo"


def test_every_quote_is_what_its_file_gives():
    paths = quotes.files(root=REPO)
    assert REPO / "README.md" in paths and len(paths) > 5
    assert sum(len(quotes.QUOTE.findall(p.read_text())) for p in paths) > 50
    problems = [pr for p in paths for pr in quotes.stale(p, REPO)]
    assert problems == [], "\n".join(problems)


def test_committed_demo_report_is_what_its_tables_give():
    assert report_is_current(DEMO), "rerun: python -m regattn_lib report results/demo"


def test_one_changed_csv_cell_fails_the_check(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(DEMO, root / "results" / "demo")
    shutil.copytree(REPO / "results" / "bench", root / "results" / "bench")
    shutil.copy(REPO / "README.md", root / "README.md")
    assert quotes.stale(root / "README.md", root) == []
    assert report_is_current(root / "results" / "demo")
    csv = root / "results" / "demo" / "tables" / "ablation.csv"
    # one cell: the regional row's classic gain low, raised by 0.1
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    col = "synthetic-demo ours gain low"
    row = df.index[df["method"] == "+ regional attention"][0]
    new_low = float(df.loc[row, col]) + 0.1
    df.loc[row, col] = f"{new_low:.4g}"
    df.to_csv(csv, index=False)
    problems = quotes.stale(root / "README.md", root)
    assert len(problems) == 1 and f"{new_low:+.2f}" in problems[0], problems
    assert not report_is_current(root / "results" / "demo")
    # re-rendering repairs it
    (root / "README.md").write_text(quotes.render((root / "README.md").read_text(), root))
    assert quotes.stale(root / "README.md", root) == []


def test_a_quote_naming_a_missing_row_or_ambiguous_rows_is_reported(tmp_path):
    (tmp_path / "t.csv").write_text("method,x\na,1\na,2\nb,3\n")
    md = tmp_path / "p.md"
    md.write_text(
        '<!-- quote: t.csv row="a" col="x" fmt=".1f" -->1.0<!-- /quote -->\n'
        '<!-- quote: t.csv row="c" col="x" fmt=".1f" -->1.0<!-- /quote -->\n'
        '<!-- quote: t.csv row="b" col="x" fmt=".1f" -->3.0<!-- /quote -->\n'
    )
    problems = quotes.stale(md, tmp_path)
    assert len(problems) == 2 and all("want exactly 1" in p for p in problems)


def test_half_up_rounding_of_the_csv_text():
    assert quotes._round(0.245, "+.2f") == "+0.25" and quotes._round(-0.1778, "+.2f") == "-0.18"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _documents() -> list[Path]:
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    docs += sorted((REPO / "results").glob("*/REPORT.md"))
    return docs


def test_every_link_and_image_resolves():
    missing = []
    for doc in _documents():
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+://|mailto:|#", target):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            if not path.exists():
                missing.append(f"{doc.relative_to(REPO)} -> {target}")
    assert missing == [], missing
    report = (DEMO / "REPORT.md").read_text()
    assert "![" in report and "(tables/ablation.csv)" in report


def test_demo_csvs_keep_every_column():
    abl = pd.read_csv(DEMO / "tables" / "ablation.csv")
    assert "synthetic-demo medium ours gain seed sd" in abl.columns and len(abl.columns) == 27
    # the metric-learned rows' paired gain over the paper's recipe, with its interval
    vs = "synthetic-demo ours vs paper's recipe gain"
    assert {vs, f"{vs} low", f"{vs} high"} <= set(abl.columns)
