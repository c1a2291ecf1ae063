"""The explorer in a real browser: JupyterLab on localhost, driven in headless Chromium.

This is the one test that checks what no kernel-side test can: that the widgets actually render in
JupyterLab (the widget manager is installed and the comm round trip works), that the overlay image
arrives, and that a file chosen in the browser reaches the kernel through the upload button.

It starts JupyterLab on a free localhost port with a random token, serving a temporary copy of
notebook 00 with its outputs cleared (so nothing stored can pass for a live result, and the
repository's notebook is never rewritten), opens it in Debian's Chromium (``/usr/bin/chromium``,
driven by Playwright for Python; Playwright's own browser download is never used), runs all cells
from the Run menu, then checks the explorer and uses it. Screenshots go to ``artifacts/`` (or
``$XAI_ARTIFACTS``).

Run it alone with ``python -m pytest -m browser``. Without Chromium it is skipped, unless
``XAI_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "00_getting_started.ipynb"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# what the machine's closed network needs: no background connections, no sandbox as root
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: JupyterLab settings for the run: no autosave, no news or update checks.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def _require_browser() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append("Debian's chromium (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright for Python (pip install -e '.[dev]')")
    if missing:
        message = "the browser test needs " + " and ".join(missing)
        if os.environ.get("XAI_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cleared_copy(source: Path, target: Path) -> None:
    """The notebook without outputs, execution counts or stored widget state."""
    nb = json.loads(source.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)
    target.write_text(json.dumps(nb, indent=1))


def _artifacts() -> Path:
    path = Path(os.environ.get("XAI_ARTIFACTS", REPO / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server on 127.0.0.1:<free port> serving a temporary folder; its URL base."""
    _require_browser()
    root = tmp_path_factory.mktemp("lab")
    _cleared_copy(NOTEBOOK, root / "explorer.ipynb")
    settings = tmp_path_factory.mktemp("lab-settings")
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path_factory.mktemp("lab-workspaces")),
    }
    log = (root.parent / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.allow_root=True",
            "--LabApp.news_url=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start; log: {log.name}")
                time.sleep(0.5)
        yield f"{base}/lab/tree/explorer.ipynb?token={token}", root
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _start_kernel(page: Page, timeout: float = 90.0) -> None:
    """Accept JupyterLab's "Select Kernel" dialog if it asks, then wait for an idle kernel."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        accept = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
        if accept.count() and accept.first.is_visible():
            accept.first.click()
        elif page.get_by_text("Python 3 (ipykernel) | Idle").count():
            return
        page.wait_for_timeout(250)
    pytest.fail("the notebook's kernel did not start within 90 s")


def test_explorer_renders_and_responds_in_jupyterlab(lab: tuple[str, Path]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, root = lab
    shots = _artifacts()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(url)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            _start_kernel(page)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            # the explorer: its picture is rendered by the live kernel (the copy has no outputs)
            picture = page.locator("img.widget-image")
            expect(picture).to_have_count(1, timeout=240_000)
            explorer = page.locator(".widget-vbox", has=picture).last
            explorer.scroll_into_view_if_needed()
            page.wait_for_function(
                "() => { const i = document.querySelector('img.widget-image');"
                " return i && i.complete && i.naturalWidth > 200; }",
                timeout=60_000,
            )
            status = explorer.locator(".widget-html").first
            expect(status).to_contain_text("Grad-CAM of 'tiger cat' (282) on chelsea")
            for label in ("image", "method", "class", "layer", "colours"):
                expect(explorer.locator(".widget-dropdown", has_text=label)).to_have_count(1)
            expect(explorer.locator(".widget-upload")).to_have_count(1)
            search = explorer.get_by_placeholder("search all 1000 classes")
            expect(search).to_have_count(1)
            expect(explorer.locator(".widget-slider", has_text="opacity")).to_have_count(1)
            explorer.screenshot(path=str(shots / "explorer.png"))
            for broken in ("could not be displayed", "Error displaying widget"):
                assert page.get_by_text(broken).count() == 0, broken

            # a control changed in the browser reaches the kernel, and a new picture comes back
            before = picture.get_attribute("src")
            method = explorer.locator(".widget-dropdown", has_text="method").locator("select")
            method.select_option(label="CAM")
            expect(status).to_contain_text("CAM of 'tiger cat' (282) on chelsea", timeout=60_000)
            expect(picture).not_to_have_attribute("src", before, timeout=30_000)

            # the searchable list of all 1000 classes: typing a full entry explains that class
            search.fill("1: goldfish")
            search.press("Enter")
            expect(status).to_contain_text("CAM of 'goldfish' (1) on chelsea", timeout=60_000)

            # uploads: a text file gets the one-line message, a photo is explained
            upload = explorer.locator(".widget-upload")

            def choose(path: Path) -> None:  # the button opens the browser's file chooser
                with page.expect_file_chooser() as chooser:
                    upload.click()
                chooser.value.set_files(str(path))

            notes = root / "notes.txt"
            notes.write_text("not an image")
            choose(notes)
            expect(status).to_contain_text("notes.txt is not a readable image", timeout=60_000)
            photo = root / "my_photo.png"
            shutil.copy(REPO / "data" / "coffee.png", photo)
            choose(photo)
            expect(status).to_contain_text("on upload: my_photo.png", timeout=60_000)
            expect(explorer.locator(".widget-html").nth(1)).to_contain_text("espresso")
            explorer.screenshot(path=str(shots / "explorer_upload.png"))
        except Exception:
            page.screenshot(path=str(shots / "browser_failure.png"), full_page=True)
            raise
        finally:
            browser.close()
