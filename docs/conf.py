"""Sphinx configuration of the course website (the book): ``python scripts/course.py book OUTDIR``.

``scripts/book.py`` lays out a source folder (the pages of ``docs/``, the notebooks as stored with
solutions collapsed and widgets replaced by their still pictures, the glossary and the references)
and runs Sphinx on it with this folder as the configuration directory (``-c docs``). Notebooks are
never executed: their stored outputs are the ones nbval checked.

Everything the pages load ships in the build: the themes' own assets and MathJax 3 (SVG output, so
no web fonts) copied from the PyPI package ``django-static-mathjax``; the site opens from file://.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # autodoc documents this checkout's xai_helpers

project = "Explaining image classifiers"
author = "the XAI notebook course authors"
copyright = "the XAI notebook course authors, MIT licence"  # noqa: A001 (Sphinx's name)

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_copybutton",
]
# The references page exists once notebooks/references.bib does: book.py then writes it (one
# bibliography entry per key, each under a label equal to the key, so that the notebooks' links
# ``references.md#KEY`` land on it) and builds with ``-t references`` (Sphinx's ``tags``).
if tags.has("references"):  # noqa: F821
    extensions.append("sphinxcontrib.bibtex")
    bibtex_bibfiles = []  # set in _bibfiles: the .bib lies in the source folder, not beside conf.py
    bibtex_default_style = "plain"

root_doc = "index"
templates_path = [str(DOCS / "_templates")]  # absolute: autosummary resolves it from the source dir
exclude_patterns = ["_build", "_includes", "**.ipynb_checkpoints"]
#: The appendix of the table of contents: these pages, in this order, where this build has them
#: (the glossary and the references exist once their files do); see _appendix below.
APPENDIX = ["notebooks/glossary", "notebooks/references", "api", "docs/AUTHORING"]
APPENDIX_MARKER = "<!-- appendix -->"
# The glossary's terms are `### term` headings right under its title (docs/AUTHORING.md: one
# anchor scheme for JupyterLab, GitHub and the book), which MyST would report as a skipped level.
suppress_warnings = ["myst.header"]

# --- notebooks: rendered as stored, never executed ---------------------------------------------
nb_execution_mode = "off"
nb_output_stderr = "show"
nb_merge_streams = True
nb_render_markdown_format = "myst"  # markdown outputs hold pipe tables (notebook 08)
nb_ipywidgets_js = {}  # no widget manager from a CDN: explorers show their still pictures
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "html_image"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links resolve
myst_dmath_double_inline = True

# --- API reference from the docstrings (numpy style, LaTeX in :math:) ---------------------------
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

# --- math: MathJax 3 from this build's own _static folder --------------------------------------
mathjax_path = "mathjax/tex-svg.js"
mathjax3_config = {
    "tex": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]]},
    "svg": {"fontCache": "global"},
}
#: What the page can load from MathJax: the SVG component, TeX extensions it autoloads
#: (\boldsymbol, \cancel, ...), the menu and the accessibility tools the menu switches on.
MATHJAX_PARTS = ["tex-svg.js", "input/tex/extensions", "ui", "a11y", "sre"]

# --- HTML ---------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "Explaining image classifiers"
html_static_path = ["_static"]
html_css_files = ["book.css"]
html_last_updated_fmt = None
html_context = {"default_mode": "light"}
# Search result summaries would be fetched from the pages, which browsers refuse on file://.
html_show_search_summary = False
html_domain_indices = False  # the module index would duplicate the API reference's table
html_theme_options = {
    "home_page_in_toc": False,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
    "search_bar_text": "Search the course...",
}
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_exclude = ".linenos, .gp, .go"


def mathjax_source() -> Path:
    """The es5 folder of the MathJax 3 distribution in the PyPI package django-static-mathjax."""
    try:
        import mathjax  # django-static-mathjax's top-level package
    except ImportError as err:
        raise RuntimeError(
            "the book needs MathJax from the PyPI package django-static-mathjax: "
            "pip install -e '.[dev]'"
        ) from err
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-svg.js").is_file():
        raise RuntimeError(f"no MathJax tex-svg.js under {es5}; reinstall django-static-mathjax")
    return es5


def _copy_mathjax(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source, target = mathjax_source(), Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, target / part, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / part, target / part)


def _appendix(app, docname: str, source: list[str]) -> None:
    """List the appendix pages this build has in the landing page's appendix toctree."""
    if docname == root_doc:
        found = [page for page in APPENDIX if page in app.env.found_docs]
        source[0] = source[0].replace(APPENDIX_MARKER, "\n".join(found))


def _bibfiles(app, config) -> None:
    if tags.has("references"):  # noqa: F821
        config.bibtex_bibfiles = [str(Path(app.srcdir) / "notebooks" / "references.bib")]


def setup(app) -> None:
    mathjax_source()  # fail before building, not after, when MathJax is missing
    app.connect("config-inited", _bibfiles)
    app.connect("source-read", _appendix)
    app.connect("build-finished", _copy_mathjax)
