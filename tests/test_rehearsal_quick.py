"""The paper-quick profile's rehearsal end to end (scripts/rehearse_paper.sh --quick)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rehearsal_runs import (
    LM,
    need_official_weights,
    rehearse_to_the_end,
    tail,
)


@pytest.mark.slow  # about a minute on 2 cores: no training, distractors or SfM-120k
def test_quick_rehearsal_end_to_end(tmp_path):
    """scripts/rehearse_paper.sh --quick: the real run_all.sh --profile paper-quick on the
    miniature mirror; the tables have the paper's rows and values and finite values of ours, and
    the mirror's log shows no request for SfM-120k, distractor or ImageNet files."""
    need_official_weights()
    log = tmp_path / "quick.log"
    rc = rehearse_to_the_end(tmp_path, "ci-quick", "--fresh", "--quick", log=log, timeout=900)
    assert rc == 0, tail(log)
    text = log.read_text()
    assert "check_paper_results: all tables complete" in text and "does not need" in text
    assert "downloads 10 files" in text  # the preflight's count of the profile's files
    work = tmp_path / "regattn-rehearsal-ci-quick"
    paths = [r["path"] for r in LM.read_log(work / "mirror.log")]
    assert paths and not [
        p for p in paths if any(s in p for s in ("revisitop1m", "/data/train/", "ILSVRC"))
    ]
    tables = work / "results" / "paper-quick" / "tables"
    abl = pd.read_csv(tables / "ablation.csv").set_index("method")
    assert abl.loc["+ regional attention", "oxford5k paper"] == 74.9
    assert np.isnan(abl.loc["+ regional attention", "oxford5k ours"])
    assert "--profile paper" in abl.loc["+ regional attention", "weights"]
    assert np.isfinite(abl.loc[["R-MAC + PCA", "+ context awareness"], "paris6k ours"]).all()
    sota = pd.read_csv(tables / "sota.csv")
    assert not [c for c in sota.columns if "105k" in c or "106k" in c]
    for name in ("ablation", "rpn", "sota", "scale_study", "revisited", "whitening"):
        md = (tables / f"{name}.md").read_text()
        assert "crosswise" in md and "PCA Landmark" in md, name
    assert "no Oxford105k / Paris106k columns" in (tables / "sota.md").read_text()
