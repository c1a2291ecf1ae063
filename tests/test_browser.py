"""The explorers in a real browser: JupyterLab on localhost, driven in headless Chromium.

This is the one test that checks what no kernel-side test can: that the widgets render in
JupyterLab (widget manager, comm round trip, updates sent from the explorer's worker thread),
that a file chosen in the browser reaches the kernel, how the layout behaves at 1024, 800 and
1920 px, and that a notebook stored by ``python scripts/course.py execute`` opens in JupyterLab
without becoming "modified".

It starts JupyterLab on a free localhost port with a random token, serving a temporary folder
with two notebooks made from notebook 00 plus a robustness-explorer cell and a progress-bar
cell: ``explorer.ipynb`` with its outputs cleared (so nothing stored can pass for a live
result) and ``stored.ipynb`` executed by the course's own tool. Debian's Chromium
(``/usr/bin/chromium``, driven by Playwright for Python; Playwright's own browser download is
never used) opens them. Screenshots, and the measured time from click to picture for each
method (``click_to_picture.json``), go to ``artifacts/`` (or ``$XAI_ARTIFACTS``).

Run it alone with ``python -m pytest -m browser``. Without Chromium it is skipped, unless
``XAI_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

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
    # every cell in the page, so that text and layout checks see the whole notebook
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}
#: Cells appended to notebook 00 for the test: the robustness explorer and a text progress bar.
EXTRA_CELLS = [
    "from xai_helpers.widgets import robustness_explorer\n\n"
    'robustness = robustness_explorer(lm, lm.view(sample_path("chelsea")), method="grad_cam")\n'
    "robustness",
    "import time\n\nfrom xai_helpers.progress import progress\n\n"
    'for _ in progress(range(30), desc="a text progress bar", unit="step"):\n'
    "    time.sleep(0.02)",
]
SLOW = 300_000  # ms: Score-CAM on a shared 2-core CPU


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


def _fixture_notebook(target: Path, clear: bool) -> None:
    """Notebook 00 plus :data:`EXTRA_CELLS`; ``clear``: without outputs or widget state."""
    import nbformat
    from nbformat.v4 import new_code_cell

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.extend(new_code_cell(src) for src in EXTRA_CELLS)
    for cell in nb.cells:
        if cell.cell_type == "code" and clear:
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, target)


def _artifacts() -> Path:
    path = Path(os.environ.get("XAI_ARTIFACTS", REPO / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server on 127.0.0.1:<free port> serving a temporary folder; its URL base."""
    _require_browser()
    root = tmp_path_factory.mktemp("lab")
    _fixture_notebook(root / "explorer.ipynb", clear=True)
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
        yield f"{base}/lab/tree/{{}}?token={token}", root
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _start_kernel(page: Page, timeout: float = 120.0) -> None:
    """Accept JupyterLab's "Select Kernel" dialog if it asks, then wait for an idle kernel."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        accept = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
        if accept.count() and accept.first.is_visible():
            accept.first.click()
        elif page.get_by_text("Python 3 (ipykernel) | Idle").count():
            return
        page.wait_for_timeout(250)
    pytest.fail(f"the notebook's kernel did not start within {timeout:.0f} s")


def _browser(p, width: int = 1366, height: int = 900):
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    return browser, browser.new_page(viewport={"width": width, "height": height})


# ----------------------------------------------------------------------------------------------
# a stored notebook opens without changes
# ----------------------------------------------------------------------------------------------


def test_stored_notebook_opens_and_closes_unchanged(lab: tuple[str, Path]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, root = lab
    stored = root / "stored.ipynb"
    _fixture_notebook(stored, clear=True)
    sys.path.insert(0, str(REPO / "scripts"))
    from notebook_tools import execute_notebooks

    assert execute_notebooks([stored]) == 0  # what python scripts/course.py execute stores
    before = stored.read_bytes()
    shots = _artifacts()
    with sync_playwright() as p:
        browser, page = _browser(p, height=1400)  # tall enough for whole stills
        try:
            page.goto(url.format("stored.ipynb"))
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            _start_kernel(page)
            page.wait_for_timeout(3000)  # kernel info, widget manager restore, metadata sync
            tab = page.locator(".lm-TabBar-tab.jp-mod-current")
            expect(tab).to_contain_text("stored.ipynb")
            assert "jp-mod-dirty" not in (tab.get_attribute("class") or ""), "opened dirty"

            # what a reader without a running kernel sees: stills, final bars, no raw reprs
            notebook = page.locator(".jp-Notebook")
            stills = notebook.locator(".jp-OutputArea-output img")
            assert stills.count() >= 3  # the figures, the explorer and the robustness explorer
            text = notebook.evaluate("el => el.textContent")
            for raw in (
                "VBox(children",
                "HBox(children",
                "model not found",
                "Error displaying widget",
            ):
                assert raw not in text, raw
            assert not re.search(r"(?<!\d)0%\|", text)
            assert re.search(r"a text progress bar: 100%\|#+\| 30/30", text)
            page.screenshot(path=str(shots / "stored_notebook.png"))
            for i, name in ((-2, "explorer"), (-1, "robustness")):  # the last two stills
                still = stills.nth(stills.count() + i)
                still.scroll_into_view_if_needed()
                still.screenshot(path=str(shots / f"stored_{name}_still.png"))

            # saved by JupyterLab: the same bytes; closed: no "save your changes?" dialog
            page.keyboard.press("Control+s")
            page.wait_for_timeout(2000)
            assert stored.read_bytes() == before, "JupyterLab wrote a different notebook"
            page.keyboard.press("Alt+w")
            page.wait_for_timeout(1500)
            assert page.locator(".jp-Dialog").count() == 0, "closing asked to save changes"
            expect(page.locator(".lm-TabBar-tab", has_text="stored.ipynb")).to_have_count(0)
        except Exception:
            page.screenshot(path=str(shots / "browser_failure_stored.png"), full_page=True)
            raise
        finally:
            browser.close()


# ----------------------------------------------------------------------------------------------
# the explorers, live
# ----------------------------------------------------------------------------------------------


class Explorer:
    """Locators of one explorer on the page, and a stopwatch from click to picture."""

    def __init__(self, page: Page, root: Locator) -> None:
        self.page, self.root = page, root
        self.picture = root.locator("img.xai-picture")
        self.status = root.locator(".widget-html", has=page.locator(".xai-msg"))
        self.cancel = root.locator("button", has_text="Cancel")

    def dropdown(self, label: str) -> Locator:
        """The dropdown whose own label reads ``label`` (not one whose options contain it)."""
        exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
        name = self.page.locator("label.widget-label", has_text=exact)
        return self.root.locator(".widget-dropdown", has=name)

    def select(self, label: str) -> Locator:
        return self.dropdown(label).locator("select")

    def chosen(self, label: str) -> str:
        return self.select(label).evaluate("s => s.options[s.selectedIndex].text")

    def timed(self, action: Callable[[], None], done: str, timeout: float = 120_000) -> float:
        """Seconds from ``action`` to a new, current picture whose status contains ``done``."""
        from playwright.sync_api import expect

        before = self.picture.get_attribute("src")
        start = time.perf_counter()
        action()
        expect(self.status).to_contain_text(done, timeout=timeout)
        expect(self.picture).not_to_have_attribute("src", before, timeout=timeout)
        expect(self.picture).not_to_have_class(re.compile("xai-stale"), timeout=timeout)
        return time.perf_counter() - start


def _pixels(picture: Locator) -> list[int]:
    """Size and a checksum of the decoded picture (independent of CSS, unlike a screenshot)."""
    return picture.evaluate(
        """img => {
            const c = document.createElement('canvas');
            c.width = img.naturalWidth; c.height = img.naturalHeight;
            const ctx = c.getContext('2d');
            ctx.drawImage(img, 0, 0);
            const d = ctx.getImageData(0, 0, c.width, c.height).data;
            let h = 0;
            for (let i = 0; i < d.length; i += 3) h = (h * 31 + d[i]) >>> 0;
            return [c.width, c.height, h];
        }"""
    )


def _overflow(root: Locator) -> list[str]:
    """Elements inside ``root`` that scroll sideways (a horizontal scrollbar)."""
    return root.evaluate(
        """root => [root, ...root.querySelectorAll('*')].filter(el => {
               const x = getComputedStyle(el).overflowX;
               return (x === 'auto' || x === 'scroll') && el.scrollWidth > el.clientWidth + 1;
           }).map(el => el.className || el.tagName)"""
    )


def _truncated_selects(root: Locator) -> list[str]:
    """Drop-down menus whose chosen label is wider than the menu (cut off)."""
    return root.evaluate(
        """root => [...root.querySelectorAll('select')].filter(s => {
               const c = document.createElement('canvas').getContext('2d');
               c.font = getComputedStyle(s).font;
               const text = s.options[s.selectedIndex] ? s.options[s.selectedIndex].text : '';
               return c.measureText(text).width + 24 > s.clientWidth;
           }).map(s => s.options[s.selectedIndex].text)"""
    )


def _layout_checks(page: Page, explorers: list[Explorer], width: int, shots: Path) -> None:
    from playwright.sync_api import expect

    page.set_viewport_size({"width": width, "height": 1600})  # tall: whole-explorer shots
    page.wait_for_timeout(1500)
    for i, ex in enumerate(explorers):
        ex.root.scroll_into_view_if_needed()
        assert _overflow(ex.root) == [], f"horizontal scrollbar at {width} px"
        expect(ex.root.locator(".widget-upload")).to_be_visible()
        box, upload = ex.root.bounding_box(), ex.root.locator(".widget-upload").bounding_box()
        assert upload["x"] + upload["width"] <= box["x"] + box["width"] + 1
        assert _truncated_selects(ex.root) == [], f"labels cut at {width} px"
        picture = ex.picture.bounding_box()
        assert picture["width"] <= box["width"] + 1 and picture["width"] > 0.45 * min(
            box["width"], 900
        ), f"picture {picture['width']:.0f} px wide in a {box['width']:.0f} px explorer"
        name = ("explorer", "robustness")[i]
        ex.root.screenshot(path=str(shots / f"{name}_{width}.png"))


def test_explorers_render_and_respond_in_jupyterlab(lab: tuple[str, Path]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, root = lab
    shots = _artifacts()
    times: dict[str, float] = {}
    with sync_playwright() as p:
        browser, page = _browser(p)
        try:
            page.goto(url.format("explorer.ipynb"))
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            _start_kernel(page)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            # both explorers render from the live kernel (the copy has no outputs)
            expect(page.locator(".xai-explorer img.xai-picture")).to_have_count(2, timeout=SLOW)
            ex = Explorer(page, page.locator(".xai-explorer").nth(0))
            rx = Explorer(page, page.locator(".xai-explorer").nth(1))
            ex.root.scroll_into_view_if_needed()
            expect(ex.status).to_contain_text("Grad-CAM of 'tiger cat' (282) on chelsea")
            for label in ("image", "method", "class", "layer", "colours"):
                expect(ex.dropdown(label)).to_have_count(1)
            for broken in ("could not be displayed", "Error displaying widget"):
                assert page.get_by_text(broken).count() == 0, broken

            # time from click to picture, per method (the shared CPU makes these pessimistic)
            second = ex.select("class").locator("option").nth(1).inner_text()
            tabby = re.sub(r"\s+(<\s)?[\d.]+\s*%\s*$", "", second).strip()  # "tabby  12.3 %"
            times["Grad-CAM"] = ex.timed(
                lambda: ex.select("class").select_option(index=1), f"Grad-CAM of '{tabby}'"
            )
            times["CAM"] = ex.timed(
                lambda: ex.select("method").select_option(label="CAM"), f"CAM of '{tabby}'"
            )
            expect(ex.status).to_contain_text("Same picture as Grad-CAM")

            # search: a plain name and Enter
            search = ex.root.get_by_placeholder(re.compile("search 1000 classes"))

            def espresso() -> None:
                search.fill("espresso")
                search.press("Enter")

            times["search + Enter"] = ex.timed(espresso, "CAM of 'espresso' (967) on chelsea")
            expect(search).to_have_value("967: espresso")
            times["Grad-CAM++"] = ex.timed(
                lambda: ex.select("method").select_option(label="Grad-CAM++"), "Grad-CAM++ of"
            )
            times["LRP"] = ex.timed(
                lambda: ex.select("method").select_option(label="LRP"), "LRP of 'espresso'"
            )
            ex.root.screenshot(path=str(shots / "explorer_lrp.png"))

            # a Score-CAM run, cancelled mid-way: controls back to what the picture shows
            shown = _pixels(ex.picture)
            ex.select("method").select_option(label="Score-CAM")
            expect(ex.status).to_contain_text(
                re.compile(r"Score-CAM of .*: \d+/\d+ passes"), timeout=SLOW
            )
            expect(ex.picture).to_have_class(re.compile("xai-stale"))
            ex.root.screenshot(path=str(shots / "explorer_busy.png"))
            ex.cancel.click()
            expect(ex.status).to_contain_text("Cancelled Score-CAM of 'espresso'")
            expect(ex.status).to_contain_text("The picture shows LRP of 'espresso'")
            assert ex.chosen("method") == "LRP" and ex.chosen("class").startswith("espresso")
            expect(ex.picture).not_to_have_class(re.compile("xai-stale"))
            expect(ex.cancel).to_be_hidden()
            assert _pixels(ex.picture) == shown  # the same picture as before the run
            expect(ex.select("layer")).to_be_disabled()  # as LRP's record says

            # the kernel stayed usable: the next choice is computed at once
            ex.timed(
                lambda: ex.select("method").select_option(label="Grad-CAM"),
                "Grad-CAM of 'espresso'",
            )
            times["Score-CAM"] = ex.timed(
                lambda: ex.select("method").select_option(label="Score-CAM"),
                "Score-CAM of 'espresso'",
                timeout=SLOW,
            )

            # uploads: a text file gets the one-line message, a photo is explained
            ex.timed(lambda: ex.select("method").select_option(label="Grad-CAM"), "cache")
            upload = ex.root.locator(".widget-upload")

            def choose(path: Path) -> None:  # the button opens the browser's file chooser
                with page.expect_file_chooser() as chooser:
                    upload.click()
                chooser.value.set_files(str(path))

            notes = root / "notes.txt"
            notes.write_text("not an image")
            choose(notes)
            expect(ex.status).to_contain_text("notes.txt is not a readable image")
            photo = root / "my_photo.png"
            shutil.copy(REPO / "data" / "coffee.png", photo)
            ex.timed(lambda: choose(photo), "on upload: my_photo.png", timeout=SLOW)
            expect(ex.root.locator("table.xai-predictions")).to_contain_text("espresso")
            assert "⚠" not in ex.status.inner_text()  # the error went with the next success

            # the robustness explorer: the BGR control changes the picture
            rx.root.scroll_into_view_if_needed()
            expect(rx.status).to_contain_text("Grad-CAM on notebook picture")
            times["robustness: BGR"] = rx.timed(
                lambda: rx.root.locator("button", has_text="BGR").click(), "BGR", timeout=SLOW
            )
            times["robustness: LRP"] = rx.timed(
                lambda: rx.select("method").select_option(label="LRP"),
                "LRP on notebook",
                timeout=SLOW,
            )

            # layouts: a laptop with the file browser open, a small window, a projector
            files = page.locator(".jp-SideBar .lm-TabBar-tab[data-id='filebrowser']").first
            if "lm-mod-current" not in (files.get_attribute("class") or ""):
                files.click()  # open the file browser: the notebook gets narrower
            for width in (1024, 800, 1920):
                _layout_checks(page, [ex, rx], width, shots)

            # errors stay readable on the dark theme
            page.set_viewport_size({"width": 1366, "height": 900})
            page.locator(".lm-MenuBar-itemLabel", has_text="Settings").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Theme").first.hover()
            page.locator(".lm-Menu-itemLabel", has_text="JupyterLab Dark").first.click()
            page.wait_for_timeout(3000)
            search.fill("xyzzy")
            search.press("Enter")
            error = ex.root.locator(".xai-msg-error")
            expect(error).to_contain_text("no class matches 'xyzzy'")
            assert _contrast(error) >= 4.5
            ex.root.screenshot(path=str(shots / "explorer_dark_error.png"))
        except Exception:
            page.screenshot(path=str(shots / "browser_failure.png"), full_page=True)
            raise
        finally:
            (shots / "click_to_picture.json").write_text(json.dumps(times, indent=1) + "\n")
            print("time from click to picture (s):", json.dumps(times, indent=1))
            browser.close()


def _contrast(element: Locator) -> float:
    """WCAG contrast of the element's text on its (blended) background."""
    return element.evaluate(
        """el => {
            const rgba = s => (s.match(/[\\d.]+/g) || []).map(Number);
            let bg = [0, 0, 0, 0], node = el;
            const layers = [];
            while (node && node.nodeType === 1) {
                const c = rgba(getComputedStyle(node).backgroundColor);
                if (c.length >= 3 && (c.length === 3 || c[3] > 0)) layers.push(c);
                if (c.length === 3 || c[3] === 1) break;
                node = node.parentElement;
            }
            let base = [255, 255, 255];
            for (const c of layers.reverse()) {
                const a = c.length === 4 ? c[3] : 1;
                base = base.map((v, i) => a * c[i] + (1 - a) * v);
            }
            const fg = rgba(getComputedStyle(el).color);
            const lum = c => {
                const [r, g, b] = c.slice(0, 3).map(v => {
                    v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
                });
                return 0.2126 * r + 0.7152 * g + 0.0722 * b;
            };
            const [a, b] = [lum(fg), lum(base)].sort((x, y) => y - x);
            return (a + 0.05) / (b + 0.05);
        }"""
    )
