"""Screenshot the query explorer: notebook 07 in a real JupyterLab and headless Chromium.

``python scripts/explorer_screenshot.py --screenshot PATH [--profile demo] [--dataset D | --folder F]`` runs
all cells, switches the query through the page's dropdown and saves the explorer as a PNG;
tests/test_browser.py drives ``screenshot`` the same way. Needs Debian's ``chromium``
(scripts/install_browser.sh) and Playwright for Python (never ``playwright install``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Notebook of the explorer (``screenshot`` opens a parameterised copy of it).
NOTEBOOK = REPO / "notebooks" / "07_query_explorer.ipynb"
CHROMIUM = Path(os.environ.get("REGATTN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parameterised_notebook(dest: Path, params: dict[str, Any]) -> Path:
    """A copy of notebook 07 with ``params`` injected after its parameters cell (papermill)."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    # papermill's loader gives every cell its metadata.tags, which parameterize expects
    nb = load_notebook_node(str(NOTEBOOK))
    nb = parameterize_notebook(nb, params) if params else nb
    out = dest / NOTEBOOK.name
    nbformat.write(nb, out)
    return out


@contextmanager
def jupyter_lab(root: Path, log: Path, timeout: float = 60.0):
    """JupyterLab on 127.0.0.1 (random port and token) serving ``root``; yields its base URL
    and token. Its output goes to ``log``; it is stopped (with its kernels) on exit."""
    port, token = free_port(), secrets.token_hex(16)
    conf = root.parent / "jupyter-config"
    env = dict(
        os.environ,
        JUPYTER_TOKEN=token,
        JUPYTER_CONFIG_DIR=str(conf),
        JUPYTER_RUNTIME_DIR=str(conf / "runtime"),
        JUPYTER_DATA_DIR=str(conf / "data"),
        MPLBACKEND="Agg",
    )
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI run as root
    _quiet_lab_settings(conf)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(proc, f"{base}/api/status?token={token}", timeout, log)
        yield base, token
    finally:
        _stop(proc)


def _quiet_lab_settings(conf: Path) -> None:
    """User settings of the throwaway config: no news or update toasts over the page."""
    d = conf / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    d.mkdir(parents=True, exist_ok=True)
    (d / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )


def _wait_for_server(proc: subprocess.Popen, url: str, timeout: float, log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}; log: {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s; log: {log}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server we started and its kernels (its own process group)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of that group is left (kernels)
    except ProcessLookupError:
        pass
    proc.wait(5)


def _result_names(page: Any) -> list[str]:
    return [
        t.strip()
        for t in page.locator(".regattn-results .regattn-name").all_inner_texts()
        if t.strip()
    ]


def _run_all_cells(page: Any) -> None:
    """JupyterLab's menu Run > Run All Cells."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def _drive(page: Any, url: str, query: int, out: Path) -> dict[str, Any]:
    """Run notebook 07 at ``url``, switch query through the dropdown, screenshot the explorer."""
    page.goto(url)
    page.locator(".jp-Notebook").first.wait_for()
    # Run All before the kernel is connected can be lost: wait for the status bar's "Idle".
    page.locator(".jp-StatusBar-Widget").get_by_text("| Idle").first.wait_for()
    _run_all_cells(page)
    ap = page.locator(".regattn-ap").first
    ap.wait_for()
    page.wait_for_function(
        "() => document.querySelectorAll('.regattn-results .regattn-name').length > 0"
    )
    caption = page.locator(".regattn-heat-caption").first
    before = {"ap": ap.inner_text(), "names": _result_names(page), "caption": caption.inner_text()}
    page.locator(".regattn-query select").select_option(index=query)
    # The result tiles change with the query (a folder has no AP line that would change).
    page.wait_for_function(
        "n => [...document.querySelectorAll('.regattn-results .regattn-name')]"
        ".map(e => e.innerText.trim()).filter(Boolean).join('|') !== n",
        arg="|".join(before["names"]),
    )
    # The heat maps come last (the backbone runs for them): the screenshot waits for them.
    page.wait_for_function(
        "t => document.querySelector('.regattn-heat-caption').innerText !== t",
        arg=before["caption"],
    )
    after = {"ap": ap.inner_text(), "names": _result_names(page), "caption": caption.inner_text()}
    page.locator(".regattn-explorer").first.screenshot(path=str(out))
    return {"before": before, "after": after}


def screenshot(
    out: str | os.PathLike,
    profile: str = "smoke",
    dataset: str | None = None,
    query: int = 1,
    timeout: float = 120.0,
    workdir: str | os.PathLike | None = None,
    folder: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Open notebook 07 in JupyterLab with headless Chromium, run all cells, switch to query
    ``query`` through the page's dropdown and save a screenshot of the explorer to ``out``.

    ``folder``: a folder of photos as the database (notebook 07's ``folder``) instead of the
    profile's test set. Returns what the page showed before and after the switch (``ap``: the AP line,
    ``names``: the result names). JupyterLab's output goes to a log in a temporary folder,
    removed on success and named in the error otherwise. Needs Debian's ``chromium``
    (scripts/install_browser.sh) and Playwright for Python (never ``playwright install``).
    """
    from playwright.sync_api import sync_playwright

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="regattn-browser-", dir=workdir))
    (work / "root").mkdir()
    params: dict[str, Any] = {"profile": profile} if profile != "smoke" else {}
    if dataset:
        params["dataset"] = dataset
    if folder:
        params["folder"] = str(Path(folder).resolve())
    nb = _parameterised_notebook(work / "root", params)
    log = work / "jupyter.log"
    try:
        with jupyter_lab(work / "root", log) as (base, token), sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1800})
                page.set_default_timeout(timeout * 1000)
                result = _drive(page, f"{base}/lab/tree/{nb.name}?token={token}", query, out)
            finally:
                browser.close()
    except Exception as e:
        raise RuntimeError(f"browser run failed: {e}\nJupyterLab log: {log}") from e
    shutil.rmtree(work, ignore_errors=True)
    return {**result, "screenshot": str(out)}


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/explorer_screenshot.py --screenshot PATH [--profile demo] [--dataset D]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--screenshot", required=True, help="PNG to write")
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--folder", default=None, help="a folder of photos as the database")
    ap.add_argument("--query", type=int, default=1, help="query switched to through the page")
    args = ap.parse_args(argv)
    res = screenshot(args.screenshot, args.profile, args.dataset, args.query, folder=args.folder)
    print(f"before: {res['before']['ap']}\nafter:  {res['after']['ap']}\nwrote {res['screenshot']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
