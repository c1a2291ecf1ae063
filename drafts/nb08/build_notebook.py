"""Build notebooks/08_comparison.ipynb from the cell list below (run from the repo root)."""

import sys

import nbformat

CELLS = []


def md(text, tags=()):
    CELLS.append(("md", text.strip("\n"), tags))


def code(text, tags=()):
    CELLS.append(("code", text.strip("\n"), tags))


exec(open(sys.argv[1]).read())  # the cells

nb = nbformat.v4.new_notebook()
for kind, src, tags in CELLS:
    meta = {"tags": list(tags)} if tags else {}
    cell = (nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell)(src)
    cell.metadata = meta
    nb.cells.append(cell)
nb.metadata = nbformat.read("notebooks/08_comparison.ipynb", as_version=4).metadata
long = [(i, len(c.source.splitlines())) for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and len(c.source.splitlines()) > 30]
print("cells > 30 lines:", long)
nbformat.write(nb, sys.argv[2] if len(sys.argv) > 2 else "notebooks/08_comparison.ipynb")
