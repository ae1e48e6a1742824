"""The paper profile's dress rehearsal end to end: scripts/rehearse_paper.sh on the miniature
mirror, then the result check."""

from __future__ import annotations

import pytest
from rehearsal_runs import (
    need_official_weights,
    rehearse_to_the_end,
    repository_outputs,
    tail,
)


@pytest.mark.slow  # about 2 minutes on 2 cores
def test_rehearsal_end_to_end(tmp_path):
    """scripts/rehearse_paper.sh: the real run_all.sh --profile paper on the miniature mirror,
    then the result check (every table, row, label; the known answer's AP 100)."""
    need_official_weights()
    log = tmp_path / "rehearsal.log"
    before = repository_outputs()
    rc = rehearse_to_the_end(tmp_path, "ci", "--fresh", log=log, timeout=1200)
    assert rc == 0, tail(log)
    assert "check_paper_results: all tables complete" in log.read_text()
    # rooted elsewhere, it wrote nothing into the repository's results/ or data/
    assert repository_outputs() == before
    assert (tmp_path / "regattn-rehearsal-ci" / "results" / "paper" / "tables").is_dir()
