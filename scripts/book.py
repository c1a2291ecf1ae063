"""The course as a book: ``python scripts/course.py book OUTDIR``.

Builds a static website from the notebooks **as stored** (their outputs are the ones nbval
checked; nothing is re-executed) with Sphinx, MyST-NB and the Sphinx Book Theme. The Sphinx
configuration and the book's pages (landing page, API reference, and the authoring guide) live
in ``docs/``; this module lays out a source folder for Sphinx in a temporary directory and runs
it on it:

* the pages of ``docs/`` and the README (the landing page includes its sections from the setup
  to the book: setup, instructors' tools, tests);
* every numbered notebook ``notebooks/NN_*.ipynb`` (learning order is the file-name order), with
  two presentation changes that a static page needs (:func:`prepare_notebook`): exercise
  solutions collapsed behind a toggle, and widgets replaced by what a page can show;
* ``notebooks/glossary.md`` and ``notebooks/references.bib`` where they exist (the references
  page is formatted from the .bib by sphinxcontrib-bibtex, see :func:`references_page`).

The build fails on any Sphinx warning (``-W``). The result opens from file:// without internet:
MathJax ships inside it (``docs/conf.py``).
"""

from __future__ import annotations

import copy
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
#: the pages that docs/ gives the book, and where each goes in it; the authoring guide keeps its
#: repository path, so that the README's links to docs/AUTHORING.md (included in the landing
#: page) resolve in the book too
BOOK_PAGES = {"index.md": "index.md", "api.md": "api.md", "AUTHORING.md": "docs/AUTHORING.md"}

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
PICTURES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
#: a solution code cell starts with this comment (docs/AUTHORING.md); the cell tag ``solution``
#: is recognised as well
SOLUTION_COMMENT = re.compile(r"\A\s*#\s*Solution\b")
SOLUTION_TAG = "solution"
#: a check that grading runs but the student edition removes; it holds the expected values
HIDDEN_CHECK_COMMENT = re.compile(r"\A\s*#\s*Check\s+\d+\s*\(hidden\)")
#: the line under each widget's still picture
STILL_NOTE = (
    "*A still picture of an interactive widget: its controls are live when you run this "
    "notebook in JupyterLab.*"
)
NO_PICTURE_NOTE = "*An interactive widget: it appears when you run this notebook in JupyterLab.*"


def chapters(notebooks: Path) -> list[Path]:
    """The course's notebooks in learning order: ``NN_name.ipynb``, sorted by their number."""
    return sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))


def is_solution(cell: dict) -> bool:
    """Whether a cell holds an exercise's solution (tag ``solution`` or a ``# Solution N`` cell)."""
    if SOLUTION_TAG in cell.get("metadata", {}).get("tags", []):
        return True
    return cell.get("cell_type") == "code" and bool(SOLUTION_COMMENT.match(cell.get("source", "")))


def is_hidden_check(cell: dict) -> bool:
    """Whether a cell is a hidden grading check (first line ``# Check N (hidden)``)."""
    return cell.get("cell_type") == "code" and bool(
        HIDDEN_CHECK_COMMENT.match(cell.get("source", ""))
    )


def _collapse(cell: dict, what: str) -> None:
    """Fold a code cell, source and output, behind a "Show <what>" toggle (MyST-NB's hide-cell)."""
    tags = cell["metadata"].setdefault("tags", [])
    if "hide-cell" not in tags:
        tags.append("hide-cell")
    cell["metadata"]["mystnb"] = {
        **cell["metadata"].get("mystnb", {}),
        "code_prompt_show": f"Show {what}",
        "code_prompt_hide": f"Hide {what}",
    }


def _markdown_output(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("display_data", data={"text/markdown": text})


def _plain_text(fragment: str) -> str:
    """Text of one of tqdm's HTML fragments: no tags, entities decoded, figure spaces as spaces."""
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).replace("\u2007", " ").strip()


def progress_text(model_id: str, state: dict) -> str | None:
    """The final line of a tqdm notebook progress bar, from the widget state stored with the
    notebook (an HBox of an HTML label, a progress bar and an HTML counter); None otherwise."""
    box = state.get(model_id, {})
    if box.get("model_name") != "HBoxModel":
        return None
    children = [
        state.get(str(c).removeprefix("IPY_MODEL_"), {})
        for c in box.get("state", {}).get("children", [])
    ]
    names = [c.get("model_name") for c in children]
    if (
        len(children) != 3
        or names[0] != "HTMLModel"
        or names[2] != "HTMLModel"
        or names[1] not in ("FloatProgressModel", "IntProgressModel")
    ):
        return None
    label, bar, counter = (c.get("state", {}) for c in children)
    done = float(bar.get("value", 0)) / max(float(bar.get("max", 1)), 1e-12)
    filled = min(10, max(0, int(done * 10)))
    return (
        f"{_plain_text(label.get('value', ''))}|{'█' * filled}{' ' * (10 - filled)}| "
        f"{_plain_text(counter.get('value', ''))}"
    )


#: the text ``course.py execute`` stores beside an explorer's still (explorer_draw.STILL_NOTE)
STORED_STILL_TEXT = "run the cells to use the controls"


def _is_stored_still(output: dict) -> bool:
    """An explorer as ``course.py execute`` stores it: a picture whose text says it is a still."""
    data = output.get("data", {})
    text = data.get("text/plain", "")
    text = "".join(text) if isinstance(text, list) else text
    return any(mime in data for mime in PICTURES) and STORED_STILL_TEXT in text


def _static_outputs(output: dict, state: dict) -> list[nbformat.NotebookNode]:
    """What a static page shows for one output that holds a widget view."""
    data = output["data"]
    if any(mime in data for mime in PICTURES):
        still = copy.deepcopy(output)
        for mime in (WIDGET_VIEW, "text/plain"):
            still["data"].pop(mime, None)
        return [still, _markdown_output(STILL_NOTE)]
    line = progress_text(data[WIDGET_VIEW].get("model_id", ""), state)
    if line is not None:
        return [nbformat.v4.new_output("display_data", data={"text/plain": line})]
    return [_markdown_output(NO_PICTURE_NOTE)]


def prepare_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` as the book shows it; the cells' sources and other outputs are unchanged.

    * Solution code cells (see :func:`is_solution`) are collapsed, source and output, behind a
      "Show solution" toggle (MyST-NB's ``hide-cell`` tag; ``hide-input`` alone would leave the
      solution's printed answer and figures in view). Solution prose is left as written: the
      course folds it in ``<details>``. Hidden grading checks (``# Check N (hidden)``), which
      hold the expected values, are collapsed the same way ("Show hidden check").
    * Widget views cannot run in a static page. An output with a still picture (the explorers
      store one) keeps the picture and gets a one-line note that the widget is live in
      JupyterLab; a tqdm progress bar becomes its final line, read from the stored widget state;
      any other widget becomes the note alone. The widget state itself is dropped, so no
      widget manager is loaded.
    """
    nb = copy.deepcopy(nb)
    widgets = nb.metadata.pop("widgets", {})
    state = widgets.get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue  # solution prose is already folded in <details> (docs/AUTHORING.md)
        if is_solution(cell):
            if SOLUTION_TAG not in cell.metadata.setdefault("tags", []):
                cell.metadata.tags.append(SOLUTION_TAG)
            _collapse(cell, "solution")
        elif is_hidden_check(cell):
            _collapse(cell, "hidden check")
        outputs = []
        for output in cell.outputs:
            if WIDGET_VIEW in output.get("data", {}):
                outputs.extend(_static_outputs(output, state))
            elif _is_stored_still(output):
                outputs.extend(_static_outputs(output, state))
            else:
                outputs.append(output)
        cell.outputs = outputs
    return nb


REFERENCES_INTRO = """\
# References

Every paper the course cites, formatted from `notebooks/references.bib`. The notebooks link to an
entry as `references.md#KEY`, with the BibTeX key as the anchor.
"""


def references_page(bib: Path) -> str:
    """The book's references page: every entry of ``bib``, sorted by key, each rendered by
    sphinxcontrib-bibtex and preceded by a label equal to its key (its anchor)."""
    from pybtex.database import parse_file  # sphinxcontrib-bibtex's BibTeX parser

    keys = sorted(parse_file(str(bib)).entries.keys(), key=str.lower)
    blocks = [f"({key})=\n```{{bibliography}}\n:list: bullet\n\n{key}\n```\n" for key in keys]
    return REFERENCES_INTRO + "\n" + "\n".join(blocks)


def stage(source: Path, root: Path = ROOT) -> list[str]:
    """Lay out Sphinx's source folder ``source`` from the repository at ``root``.

    Returns the Sphinx tags of the build (``references`` when ``notebooks/references.bib``
    exists). Raises SystemExit with the fix when there is nothing to build.
    """
    notebooks = root / "notebooks"
    found = chapters(notebooks)
    if not found:
        raise SystemExit(f"no notebooks named NN_name.ipynb in {notebooks}; nothing to build")
    for name, target in BOOK_PAGES.items():
        if (root / "docs" / name).is_file():
            (source / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / "docs" / name, source / target)
    (source / "_includes").mkdir()
    shutil.copy2(root / "README.md", source / "_includes" / "README.md")
    (source / "notebooks").mkdir()
    for path in found:
        nb = nbformat.read(path, as_version=4)
        nbformat.write(prepare_notebook(nb), source / "notebooks" / path.name)
    tags = []
    if (notebooks / "glossary.md").is_file():
        shutil.copy2(notebooks / "glossary.md", source / "notebooks" / "glossary.md")
    bib = notebooks / "references.bib"
    if bib.is_file():
        # the book formats the .bib itself (sphinxcontrib-bibtex), in place of the generated
        # notebooks/references.md that JupyterLab and GitHub show
        shutil.copy2(bib, source / "notebooks" / "references.bib")
        (source / "notebooks" / "references.md").write_text(references_page(bib))
        tags.append("references")
    return tags


def _check_target(outdir: Path) -> None:
    """Refuse to replace a folder that is neither empty nor an earlier build of the book."""
    if outdir.is_file() or (
        outdir.is_dir() and any(outdir.iterdir()) and not (outdir / ".buildinfo").is_file()
    ):
        raise SystemExit(
            f"{outdir} exists and is not an earlier build of the book (no .buildinfo); "
            "pass a new or empty folder, e.g. build/book"
        )


def pages(outdir: Path) -> list[Path]:
    """The built HTML pages (the site's own, not the theme's or MathJax's assets)."""
    return sorted(p for p in outdir.rglob("*.html") if "_static" not in p.relative_to(outdir).parts)


def build_book(outdir: Path, root: Path = ROOT, quiet: bool = False) -> int:
    """Build the site into ``outdir``; 0 on success, Sphinx's exit status otherwise.

    Fails on any Sphinx warning (``-W --keep-going``: every warning is reported, then the build
    fails). Sphinx writes into a temporary folder (MyST-NB puts its extracted images beside its
    output folder, which must not be the user's); only a successful build replaces ``outdir``.
    ``outdir/index.html`` opens from a local folder, no server and no internet needed.
    """
    outdir = Path(outdir).resolve()
    _check_target(outdir)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xai-book-") as tmp:
        source, site = Path(tmp) / "src", Path(tmp) / "out" / "site"
        source.mkdir()
        tags = stage(source, root)
        command = [
            sys.executable,
            "-m",
            "sphinx",
            "-b",
            "html",
            "-W",
            "--keep-going",
            "-c",
            str(root / "docs"),
            "-d",
            str(Path(tmp) / "doctrees"),
            *(arg for tag in tags for arg in ("-t", tag)),
            *(["-q"] if quiet else []),
            str(source),
            str(site),
        ]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        status = subprocess.run(command, env=env).returncode
        seconds = time.perf_counter() - start
        if status != 0:
            print(
                f"book: Sphinx failed (exit {status}) after {seconds:.0f} s; see the warnings above"
            )
            return status
        # the pages' download button offers the notebook as the course stores it, not the
        # copy prepared for the page (folding tags, widgets replaced)
        for path in chapters(root / "notebooks"):
            if (site / "_sources" / "notebooks" / path.name).is_file():
                shutil.copy2(path, site / "_sources" / "notebooks" / path.name)
        if outdir.exists():
            shutil.rmtree(outdir)
        shutil.copytree(site, outdir)
    print(f"book: {len(pages(outdir))} pages in {seconds:.0f} s; open {outdir / 'index.html'}")
    return 0
