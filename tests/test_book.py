"""The course as a book: ``python scripts/course.py book OUTDIR`` (scripts/book.py, docs/).

The fast tests check how a notebook is prepared for a static page (solutions collapsed, widgets
replaced by what a page can show), on small notebooks made here and on the course's own.

The ``book`` tests build the site once from the stored notebooks (Sphinx with ``-W``) and check
it: every chapter and page is there; nothing is loaded from outside the folder; every internal
link and anchor resolves (LinkChecker, a crawler with its own HTML parser); and, in Debian's
Chromium driven by Playwright from file:// with every non-file request blocked, math is typeset,
figures load, solutions are folded, wide outputs scroll and search finds "Grad-CAM++".
Screenshots go to ``artifacts/`` (or ``$XAI_ARTIFACTS``). A small broken course checks that a
Sphinx warning fails the build.
"""

from __future__ import annotations

import csv
import io
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
sys.path.insert(0, str(REPO / "scripts"))

import book  # noqa: E402  (scripts/ is not a package)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# a closed network and root: no background connections, no sandbox
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: chapters the browser opens: math and figures (02), an explorer's still picture (04), wide
#: tables and many figures (08)
BROWSER_CHAPTERS = ["02_grad_cam", "04_score_cam", "08_comparison"]
RAW_TEX = re.compile(r"\\(frac|sum|mathrm|partial|alpha|text|big)\b|\\[(\[]|\$\$|\$[^$\s][^$\n]*\$")


# --- preparing a notebook for a static page -----------------------------------------------------


def _widget_view(model_id: str) -> dict:
    return {"model_id": model_id, "version_major": 2, "version_minor": 0}


def _model(name: str, **state) -> dict:
    return {"model_name": name, "model_module": "@jupyter-widgets/controls", "state": state}


def _notebook_with_widgets() -> nbformat.NotebookNode:
    """An explorer (widget + still picture), a tqdm bar and a widget without a picture."""
    nb = nbformat.v4.new_notebook()
    explorer = nbformat.v4.new_code_cell("explorer")
    explorer.outputs = [
        nbformat.v4.new_output(
            "execute_result",
            data={
                book.WIDGET_VIEW: _widget_view("e1"),
                "image/jpeg": "/9j/AAAA",
                "text/plain": "Explorer(...)",
            },
            execution_count=1,
        )
    ]
    progress = nbformat.v4.new_code_cell("for i in tqdm(range(8)): ...")
    progress.outputs = [
        nbformat.v4.new_output(
            "display_data",
            data={book.WIDGET_VIEW: _widget_view("p1"), "text/plain": "passes:   0%| | 0/8"},
        ),
        nbformat.v4.new_output("stream", name="stdout", text="done\n"),
    ]
    other = nbformat.v4.new_code_cell("robustness_explorer()")
    other.outputs = [
        nbformat.v4.new_output(
            "display_data", data={book.WIDGET_VIEW: _widget_view("v1"), "text/plain": "VBox()"}
        )
    ]
    nb.cells = [explorer, progress, other]
    state = {
        "p1": _model("HBoxModel", children=["IPY_MODEL_p2", "IPY_MODEL_p3", "IPY_MODEL_p4"]),
        "p2": _model("HTMLModel", value="masked\u2007passes:\u2007100%"),
        "p3": _model("FloatProgressModel", value=8.0, max=8.0, bar_style="success"),
        "p4": _model("HTMLModel", value="\u20078/8\u2007[00:02&lt;00:00,\u2007\u20072.98it/s]"),
        "v1": _model("VBoxModel", children=[]),
        "e1": _model("VBoxModel", children=[]),
    }
    nb.metadata["widgets"] = {book.WIDGET_STATE: {"state": state, "version_major": 2}}
    return nb


def test_widgets_become_what_a_static_page_can_show():
    nb = _notebook_with_widgets()
    shown = book.prepare_notebook(nb)
    explorer, progress, other = (cell.outputs for cell in shown.cells)
    # the explorer: its still picture, then the note that it is live in JupyterLab
    assert list(explorer[0]["data"]) == ["image/jpeg"]
    assert explorer[1]["data"] == {"text/markdown": book.STILL_NOTE}
    assert "JupyterLab" in book.STILL_NOTE
    # the progress bar: its final line, read from the stored widget state (not the 0% repr)
    assert progress[0]["data"] == {
        "text/plain": "masked passes: 100%|██████████| 8/8 [00:02<00:00,  2.98it/s]"
    }
    assert progress[1]["text"] == "done\n"
    # a widget without a picture: the note alone, never its text repr
    assert [o["data"] for o in other] == [{"text/markdown": book.NO_PICTURE_NOTE}]
    assert "widgets" not in shown.metadata  # no widget manager is loaded for the page
    nbformat.validate(shown)
    # the notebook itself is left as it was
    assert book.WIDGET_VIEW in nb.cells[0].outputs[0]["data"] and "widgets" in nb.metadata


def test_progress_text_half_done_and_not_a_progress_bar():
    state = _notebook_with_widgets().metadata["widgets"][book.WIDGET_STATE]["state"]
    state["p3"]["state"]["value"] = 4.0
    assert book.progress_text("p1", state).startswith("masked passes: 100%|█████     | 8/8")
    assert book.progress_text("v1", state) is None
    assert book.progress_text("missing", state) is None


def _exercise_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    tagged = nbformat.v4.new_code_cell("# Solution 2\nx = 2  # SOLUTION")
    tagged.metadata["tags"] = ["solution", "hide-input"]
    prose = nbformat.v4.new_markdown_cell("<details><summary>Solution 2</summary>\n\nx</details>")
    prose.metadata["tags"] = ["solution"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("**Exercise 1.** (1 point) Define `x`."),
        nbformat.v4.new_code_cell("# Solution 1\nx = 1"),  # the provisional convention
        tagged,
        prose,
        nbformat.v4.new_code_cell("# Check 1\nassert x > 0"),
        nbformat.v4.new_code_cell("# Check 1 (hidden)\nassert x == 1"),
        nbformat.v4.new_code_cell("y = x  # Solution is a word here, not the first line"),
    ]
    return nb


def test_solutions_and_hidden_checks_are_collapsed():
    shown = book.prepare_notebook(_exercise_notebook())
    question, legacy, tagged, prose, check, hidden, plain = shown.cells
    for cell in (legacy, tagged):
        assert {"solution", "hide-cell"} <= set(cell.metadata["tags"])
        assert cell.metadata["mystnb"]["code_prompt_show"] == "Show solution"
    assert "hide-cell" in hidden.metadata["tags"]
    assert hidden.metadata["mystnb"]["code_prompt_show"] == "Show hidden check"
    for cell in (question, check, plain):  # visible: the question, the visible check, code
        assert "hide-cell" not in cell.metadata.get("tags", [])
    assert prose.metadata["tags"] == ["solution"]  # prose stays folded in its <details>


def test_every_notebook_is_a_chapter_in_learning_order():
    found = book.chapters(NOTEBOOKS)
    numbers = [int(path.name[:2]) for path in found]
    assert found and numbers == sorted(set(numbers)), "chapter numbers must be unique"
    # no notebook is left out of the book by its name
    every = {p for p in NOTEBOOKS.glob("*.ipynb") if not p.name.startswith(("_", "."))}
    assert set(found) == every, f"not named NN_name.ipynb: {sorted(every - set(found))}"


@pytest.mark.parametrize("path", book.chapters(NOTEBOOKS), ids=lambda p: p.stem)
def test_course_notebook_prepares_for_the_book(path: Path):
    nb = nbformat.read(path, as_version=4)
    shown = book.prepare_notebook(nb)
    nbformat.validate(shown)
    outputs = [o for cell in shown.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not any(book.WIDGET_VIEW in o.get("data", {}) for o in outputs)
    assert "widgets" not in shown.metadata
    for before, after in zip(nb.cells, shown.cells, strict=True):
        assert after.source == before.source
        hidden = "hide-cell" in after.metadata.get("tags", [])
        if before.cell_type == "code":
            assert hidden == (book.is_solution(before) or book.is_hidden_check(before))


# --- the built site ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site() -> Iterator[Path]:
    """The book built from this checkout (once per test run)."""
    folder = Path(tempfile.mkdtemp(prefix="xai-book-test-"))
    try:
        assert book.build_book(folder / "site", quiet=True) == 0, "the book does not build"
        yield folder / "site"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Page(HTMLParser):
    """The text of a page and the URLs of what it loads (scripts, styles, images, frames)."""

    LOADED_LINKS = {"stylesheet", "preload", "icon", "modulepreload", "prefetch"}

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.loads: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        if tag in ("script", "img", "iframe", "source", "audio", "video") and attrs.get("src"):
            self.loads.append(attrs["src"])
        rel = set((attrs.get("rel") or "").split())
        if tag == "link" and attrs.get("href") and rel & self.LOADED_LINKS:
            self.loads.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.mark.book
def test_every_page_is_built(site: Path):
    expected = ["index", "search", "api", "genindex"]
    expected += [f"notebooks/{path.stem}" for path in book.chapters(NOTEBOOKS)]
    import xai_helpers

    modules = [
        m.name for m in pkgutil.iter_modules(xai_helpers.__path__) if not m.name.startswith("_")
    ]
    expected += ["api/xai_helpers"] + [f"api/xai_helpers.{name}" for name in modules]
    if (NOTEBOOKS / "glossary.md").is_file():
        expected.append("notebooks/glossary")
    if (NOTEBOOKS / "references.bib").is_file():
        expected.append("notebooks/references")
    if (REPO / "docs" / "AUTHORING.md").is_file():
        expected.append("docs/AUTHORING")
    missing = [name for name in expected if not (site / f"{name}.html").is_file()]
    assert not missing, f"pages missing from the book: {missing}"
    # the landing page shows the README's setup and test commands
    landing = "".join(_parse(site / "index.html").text)
    for command in (
        'pip install -e ".[dev]"',
        "jupyter lab notebooks/",
        "python -m pytest --nbval-lax --nbval-current-env",
        "course.py book",
    ):
        assert command in landing, command
    # the download button of a chapter gives the notebook as the course stores it
    for path in book.chapters(NOTEBOOKS):
        download = site / "_sources" / "notebooks" / path.name
        assert download.read_bytes() == path.read_bytes(), path.name
        assert (
            f"_sources/notebooks/{path.name}"
            in (site / "notebooks" / f"{path.stem}.html").read_text()
        )
    # every chapter is in the table of contents, in learning order
    toc = [
        m
        for m in re.findall(
            r'href="(notebooks/\d\d_[^"#]+)\.html"', (site / "index.html").read_text()
        )
        if m
    ]
    chapters = [f"notebooks/{path.stem}" for path in book.chapters(NOTEBOOKS)]
    assert list(dict.fromkeys(toc)) == chapters


@pytest.mark.book
def test_the_book_loads_nothing_from_outside_its_folder(site: Path):
    assert (site / "_static" / "mathjax" / "tex-svg.js").is_file()
    outside, missing = [], []
    for path in book.pages(site):
        for url in _parse(path).loads:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc:
                if parts.scheme != "data":
                    outside.append(f"{path.relative_to(site)}: {url}")
                continue
            if not (path.parent / unquote(parts.path)).resolve().is_file():
                missing.append(f"{path.relative_to(site)}: {url}")
    assert not outside, f"loaded from the network: {outside[:10]}"
    assert not missing, f"missing files: {missing[:10]}"
    chapter = (site / "notebooks" / f"{book.chapters(NOTEBOOKS)[0].stem}.html").read_text()
    assert '_static/mathjax/tex-svg.js"' in chapter


#: LinkChecker's command line, minus one step: run as root (as CI is), it switches to the user
#: nobody, who may not read this checkout or its virtual environment; it only reads local files.
LINKCHECKER = (
    "import sys; from linkcheck.command import linkchecker as cli; "
    "cli.drop_privileges = lambda: None; sys.exit(cli.linkchecker())"
)


@pytest.mark.book
def test_every_internal_link_and_anchor_resolves(site: Path):
    """LinkChecker crawls the site from index.html over file://, with anchors checked."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LINKCHECKER,
            "-f",
            str(REPO / "docs" / "linkcheckerrc"),
            "--no-status",
            "--verbose",
            "--output",
            "csv",
            "--threads",
            "2",
            (site / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]  # 2: LinkChecker itself failed
    rows = list(
        csv.DictReader(
            io.StringIO(
                "".join(
                    line + "\n" for line in result.stdout.splitlines() if not line.startswith("#")
                )
            ),
            delimiter=";",
        )
    )
    assert rows, result.stdout[-2000:]
    bad = [
        f"{r['url']} (in {r['parentname']}): {r['result']} {r['warningstring']}".strip()
        for r in rows
        if not r["url"].startswith("data:") and (r["valid"] != "True" or r["warningstring"])
    ]
    assert not bad, f"{len(bad)} broken links or anchors, e.g.\n" + "\n".join(bad[:15])
    # the crawl reached every page of the site, so none was left unchecked
    reached = {urlsplit(r["url"])._replace(fragment="").geturl() for r in rows}
    unreached = [p.relative_to(site) for p in book.pages(site) if p.as_uri() not in reached]
    assert not unreached, f"pages no link leads to: {unreached}"
    assert sum("#" in r["url"] for r in rows) > 50  # anchors were checked, not just files


@pytest.mark.book
def test_a_sphinx_warning_fails_the_build(tmp_path: Path):
    root = tmp_path / "course"
    (root / "notebooks").mkdir(parents=True)
    shutil.copytree(REPO / "docs", root / "docs")
    (root / "docs" / "api.md").unlink()  # quicker: no API reference (its absence is no warning)
    shutil.copy2(REPO / "README.md", root / "README.md")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 01 · tiny\n\nSee [a chapter](02_missing.ipynb).")]
    nbformat.write(nb, root / "notebooks" / "01_tiny.ipynb")
    assert book.build_book(tmp_path / "out", root=root, quiet=True) != 0
    assert not (tmp_path / "out").exists()  # nothing half-built is left behind


# --- the site in a real browser ------------------------------------------------------------------


def _require_browser() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append("Debian's chromium (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright for Python (pip install -e '.[dev]')")
    if missing:
        message = "the book's browser check needs " + " and ".join(missing)
        if os.environ.get("XAI_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _artifacts() -> Path:
    path = Path(os.environ.get("XAI_ARTIFACTS", REPO / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# visible text of the article without code, math and scripts: where raw TeX would show
_PROSE_JS = """() => {
  const clone = document.querySelector('main').cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, mjx-container, .highlight')
       .forEach(e => e.remove());
  return clone.textContent;
}"""
_IMAGES_JS = """() => Array.from(document.querySelectorAll('main img')).map(i => ({
  src: i.getAttribute('src'), complete: i.complete, natural: i.naturalWidth,
  shown: i.clientWidth}))"""
_OVERFLOW_JS = """() => {
  const a = document.querySelector('main article') || document.querySelector('main');
  return a.scrollWidth - a.clientWidth;
}"""


# the first figure with math less than a screen above it, scrolled to the screen's foot
_MATH_AND_FIGURE_JS = """() => {
  const top = e => e.getBoundingClientRect().top + window.scrollY;
  const maths = Array.from(document.querySelectorAll('main mjx-container')).map(top);
  for (const img of document.querySelectorAll('main img')) {
    const bottom = top(img) + img.getBoundingClientRect().height;
    if (maths.some(t => t < top(img) && t > bottom - 850)) {
      window.scrollTo(0, bottom - 860);
      return true;
    }
  }
  return false;
}"""
# the table with the most columns: brought into view; does whatever overflows scroll?
_WIDEST_TABLE_JS = """() => {
  const tables = Array.from(document.querySelectorAll('main table'));
  const columns = t => t.rows[0].cells.length;
  const table = tables.sort((a, b) => columns(b) - columns(a))[0];
  table.scrollIntoView({block: 'center'});
  for (let e = table; e && e.tagName !== 'MAIN'; e = e.parentElement) {
    if (e.scrollWidth > e.clientWidth + 1) {
      return {columns: columns(table), overflows: true,
              scrolls: ['auto', 'scroll'].includes(getComputedStyle(e).overflowX)};
    }
  }
  return {columns: columns(table), overflows: false, scrolls: false};
}"""


def _typeset(page) -> None:
    """Wait until MathJax has typeset the page (pages without math do not load it)."""
    page.wait_for_load_state("load")
    if page.locator('script[src*="mathjax"]').count():
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
        page.evaluate("() => MathJax.startup.promise")


@pytest.mark.book
@pytest.mark.browser
def test_the_book_in_a_browser(site: Path):
    _require_browser()
    from playwright.sync_api import sync_playwright

    shots, outside, errors = _artifacts(), [], []

    def offline(route):
        url = route.request.url
        if url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route("**/*", offline)
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))

            # the landing page
            page.goto((site / "index.html").as_uri())
            _typeset(page)
            assert "Chapters" in page.inner_text("main")
            page.screenshot(path=str(shots / "book-index.png"))

            for name in BROWSER_CHAPTERS:
                page.goto((site / "notebooks" / f"{name}.html").as_uri())
                _typeset(page)
                assert page.locator("mjx-container svg").count() > 10, f"{name}: no math"
                raw = RAW_TEX.search(page.evaluate(_PROSE_JS))
                assert raw is None, f"{name}: raw TeX on the page: {raw.group(0)!r}"
                images = page.evaluate(_IMAGES_JS)
                assert images, f"{name}: no figures"
                broken = [i["src"] for i in images if not i["complete"] or i["natural"] == 0]
                assert not broken, f"{name}: figures that do not load: {broken}"
                # figures keep their pixels: shrunk to the column at most, never blown up
                assert all(i["shown"] <= i["natural"] + 1 for i in images), name
                assert page.evaluate(_OVERFLOW_JS) <= 1, f"{name}: content wider than the page"
                assert "Loading widget" not in page.inner_text("main")
                if name == "02_grad_cam":
                    assert page.evaluate(_MATH_AND_FIGURE_JS), "no figure near math"
                    page.wait_for_timeout(300)
                    page.screenshot(path=str(shots / f"book-{name}.png"))
                    # solutions are folded; a click opens one
                    solutions = page.locator(".tag_solution details")
                    assert solutions.count() > 0
                    assert all(
                        not solutions.nth(i).evaluate("d => d.open")
                        for i in range(solutions.count())
                    )
                    code = solutions.first.locator(".cell_input")
                    assert not code.is_visible()
                    solutions.first.locator("summary").click()
                    assert code.is_visible()
                elif name == "04_score_cam":
                    note = page.get_by_text(book.STILL_NOTE.strip("*"))
                    assert note.count() >= 1, "the explorer's note is missing"
                    note.first.evaluate("e => e.scrollIntoView({block: 'end'})")
                    page.wait_for_timeout(300)
                    page.screenshot(path=str(shots / f"book-{name}.png"))
                else:
                    widest = page.evaluate(_WIDEST_TABLE_JS)
                    assert widest["columns"] >= 8, widest  # the star table: method + 7 measures
                    assert widest["scrolls"] or not widest["overflows"], widest
                    page.wait_for_timeout(300)
                    page.screenshot(path=str(shots / f"book-{name}.png"))

            # the API reference: the docstrings' LaTeX is typeset too
            page.goto((site / "api" / "xai_helpers.cams.html").as_uri())
            _typeset(page)
            assert page.locator("mjx-container svg").count() > 10, "API: no math"
            raw = RAW_TEX.search(page.evaluate(_PROSE_JS))
            assert raw is None, f"API: raw TeX on the page: {raw.group(0)!r}"

            # search works offline (the index is a script beside the pages)
            page.goto((site / "search.html").as_uri() + "?q=Grad-CAM%2B%2B")
            page.wait_for_selector("#search-results ul.search li", timeout=30_000)
            hits = page.locator("#search-results ul.search li a").evaluate_all(
                "links => links.map(a => [a.textContent, a.getAttribute('href')])"
            )
            assert any(
                "03_grad_cam_plus_plus" in href and "Grad-CAM++" in text for text, href in hits
            ), hits
            page.screenshot(path=str(shots / "book-search.png"))
        finally:
            browser.close()
    assert not outside, f"the book tried to reach the network: {outside[:10]}"
    assert not errors, f"errors in the pages: {errors[:10]}"


def test_raw_tex_is_recognised():
    for raw in (r"\frac{a}{b}", r"\(x\)", "$$x$$", "the weights $w_k$ here", r"\mathrm{ReLU}"):
        assert RAW_TEX.search(raw), raw
    for prose in ("costs 5 $ a month", "Grad-CAM++ (eq. 19)", "a \\ b"):
        assert RAW_TEX.search(prose) is None, prose
