"""Notebook 07 in a real JupyterLab and headless Chromium: run all cells, switch the query
through the page's dropdown, check the page shows the explorer's results for it, and save
results/smoke/figures/explorer.png.

JupyterLab listens on 127.0.0.1 with a random port and token (never printed; its output goes
to a log file), and the server, its kernel and Chromium are stopped whatever happens. The
test skips only when Debian's chromium is missing and cannot be installed (not root, no apt).
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from regattn_lib.apps.explorer.model import QueryExplorer
from regattn_lib.apps.explorer.source import build_cache
from regattn_lib.experiments import pipeline as P

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _load_harness():
    """scripts/explorer_screenshot.py (JupyterLab + Chromium driver), loaded as a module."""
    name = "explorer_screenshot"
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


H = _load_harness()


def _ensure_chromium() -> None:
    if not H.CHROMIUM.is_file():
        subprocess.run(
            [str(REPO / "scripts" / "install_browser.sh")],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    if not H.CHROMIUM.is_file():
        pytest.skip(
            f"{H.CHROMIUM} is missing and scripts/install_browser.sh could not install Debian's "
            "chromium (it needs root and apt-get)"
        )


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (our server and its kernel)."""
    pids = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore"):
                pids.append(int(d.name))
        except OSError:
            continue  # the process ended while we looked
    return [p for p in pids if p != os.getpid()]


def test_query_explorer_in_jupyterlab(tmp_path):
    _ensure_chromium()
    ctx = P.setup("smoke", device="cpu")
    build_cache(ctx)
    ex = QueryExplorer(ctx)
    want_before, want_after = ex.select_query(0), ex.select_query(3)
    out = ctx.dirs["figures"] / "explorer.png"
    out.unlink(missing_ok=True)

    res = H.screenshot(out, profile="smoke", query=3, timeout=90, workdir=tmp_path)

    before, after = res["before"], res["after"]
    assert before["names"] == want_before["names"]
    assert after["names"] == want_after["names"] != want_before["names"]
    assert f"of {want_before['query_name']} with {want_before['method']}" in before["ap"]
    assert f"of {want_after['query_name']} with" in after["ap"]
    assert f"{want_after['ap']:.1f} %" in after["ap"]
    assert want_after["query_name"] in after["caption"]  # the attention view followed
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width >= 900 and im.height >= 900
    assert _processes_mentioning(str(tmp_path)) == []  # server and kernel are gone
