import math

import pandas as pd

from regattn_lib.experiments.reports import PAPER_ABLATION, PAPER_SOTA, side_by_side, write_table


def test_side_by_side_paper_ours_diff():
    ours = pd.DataFrame(
        {"method": ["R-MAC + PCA", "+ context awareness", "MAC"], "oxford5k": [71.1, 75.0, 50.0]}
    )
    t = side_by_side(ours, PAPER_ABLATION, ["oxford5k"])
    assert list(t.columns) == ["method", "oxford5k paper", "oxford5k ours", "oxford5k diff"]
    assert t["oxford5k paper"].tolist()[:2] == [70.1, 76.8]
    assert math.isclose(t["oxford5k diff"][0], 1.0) and math.isclose(t["oxford5k diff"][1], -1.8)
    assert math.isnan(t["oxford5k paper"][2]) and math.isnan(t["oxford5k diff"][2])


def test_ours_plus_qe_paper_cell_is_empty():
    row = PAPER_SOTA.set_index("method").loc["Ours+QE"]
    assert row.isna().all()
    assert PAPER_SOTA.set_index("method").loc["Ours", "oxford105k"] == 73.6


def test_write_table_csv_and_markdown_with_notes(tmp_path):
    df = pd.DataFrame({"method": ["a"], "x": [1.25]})
    csv, md = write_table(df, tmp_path, "t", notes=["synthetic data"])
    assert pd.read_csv(csv)["x"].tolist() == [1.25]
    text = md.read_text()
    assert "| a " in text and "> synthetic data" in text


def test_compare_to_paper_reference_layout_and_paper_only_rows():
    from regattn_lib.experiments.reports import PAPER_SOTA
    from regattn_lib.experiments.tables import compare_to_paper

    ours = pd.DataFrame({"method": ["MAC", "R-MAC", "Ours"], "synthetic": [40.0, 50.0, 55.0]})
    t, notes = compare_to_paper(ours, PAPER_SOTA, ["synthetic"], baseline="R-MAC")
    t = t.set_index("method")
    # SDCF is only in the paper: kept, with an empty "ours" cell
    assert math.isnan(t.loc["SDCF", "synthetic ours"]) and t.loc["SDCF", "oxford5k paper"] == 69.1
    # gains against each side's own R-MAC row
    assert (
        t.loc["Ours", "synthetic ours gain"] == 5.0 and t.loc["MAC", "synthetic ours gain"] == -10.0
    )
    assert math.isclose(t.loc["Ours", "oxford5k paper gain"], 76.8 - 70.1)
    assert "not on the paper's datasets" in notes[0]


def test_compare_to_paper_same_datasets_gives_diff():
    from regattn_lib.experiments.tables import compare_to_paper

    ours = pd.DataFrame({"method": ["R-MAC + PCA"], "oxford5k": [72.0], "paris6k": [85.0]})
    t, notes = compare_to_paper(ours, PAPER_ABLATION, ["oxford5k", "paris6k"])
    assert notes == [] and math.isclose(t.loc[0, "oxford5k diff"], 1.9)
    assert len(t) == 3  # the paper's attention rows stay, ours empty


def test_gain_intervals_against_the_baseline_and_carried_into_the_compared_table():
    import numpy as np
    import pandas as pd

    from regattn_lib.experiments.reports import PAPER_ABLATION
    from regattn_lib.experiments.tables import compare_to_paper, gain_intervals

    base = np.array([50.0, 20.0, 80.0, np.nan])
    aps = {"R-MAC + PCA": base, "+ regional attention": base + 3.0, "+ context awareness": None}
    cols = gain_intervals(aps, "R-MAC + PCA", "synthetic-demo")
    assert list(cols) == [
        "synthetic-demo gain",
        "synthetic-demo gain low",
        "synthetic-demo gain high",
    ]
    # the baseline gains exactly 0; a constant +3 gives a point interval; a missing method NaN
    assert cols["synthetic-demo gain"][:2] == [0.0, 3.0]
    assert cols["synthetic-demo gain low"][:2] == [0.0, 3.0] == cols["synthetic-demo gain high"][:2]
    assert np.isnan(cols["synthetic-demo gain"][2])
    seeds = gain_intervals({"a": base, "b": np.stack([base + 1, base + 3])}, "a", "x")
    assert seeds["x gain"] == [0.0, 2.0] and seeds["x gain seed sd"][1] == np.std([1, 3], ddof=1)

    ours = pd.DataFrame({"method": list(aps), "synthetic-demo": [50.0, 53.0, 51.0], **cols})
    table, _ = compare_to_paper(ours, PAPER_ABLATION, ["synthetic-demo"])
    assert table["synthetic-demo ours gain"].tolist()[:2] == [0.0, 3.0]
    assert table["synthetic-demo ours gain low"].tolist()[:2] == [0.0, 3.0]
    assert "synthetic-demo ours gain high" in table.columns
    # on the paper's own datasets (the paper profile) the intervals are carried too
    real = pd.DataFrame(
        {
            "method": list(aps),
            "oxford5k": [70.0, 73.0, 71.0],
            **gain_intervals(aps, "R-MAC + PCA", "oxford5k"),
        }
    )
    table, notes = compare_to_paper(real, PAPER_ABLATION, ["oxford5k"])
    assert notes == [] and table["oxford5k diff"].tolist()[0] == 70.0 - 70.1
    assert table["oxford5k ours gain low"].tolist()[1] == 3.0


def test_gain_columns_passed_as_datasets_are_carried_not_compared():
    import numpy as np
    import pandas as pd

    from regattn_lib.experiments.reports import PAPER_SOTA
    from regattn_lib.experiments.tables import compare_to_paper, gain_intervals

    aps = {"R-MAC": np.array([50.0, 70.0]), "Ours": np.array([55.0, 75.0])}
    ours = pd.DataFrame(
        {
            "method": ["R-MAC", "Ours"],
            "oxford5k": [60.0, 65.0],
            **gain_intervals(aps, "R-MAC", "oxford5k"),
        }
    )
    # notebook 05 passes every column of its table: the gains must not turn it into a table
    # of unlike datasets (it is the paper's own dataset: paper, ours and diff side by side)
    table, notes = compare_to_paper(ours, PAPER_SOTA, list(ours.columns[1:]), baseline="R-MAC")
    assert notes == [] and "oxford5k diff" in table.columns
    assert table.set_index("method").loc["Ours", "oxford5k ours gain"] == 5.0
    assert not any(c.startswith("oxford5k gain") for c in table.columns)
