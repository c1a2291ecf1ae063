"""Tests of scripts/notebook_tools.py: notebooks are stored as JupyterLab writes them, and every
stored output reads without a kernel (stills instead of widgets, final progress bars)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from notebook_tools import (  # noqa: E402
    WIDGET_STATE,
    WIDGET_VIEW,
    execute_notebooks,
    kernel_display_name,
    store_outputs,
)


def _model(name: str, **state) -> dict:
    return {
        "model_name": name,
        "model_module": "@jupyter-widgets/controls",
        "model_module_version": "2.0.0",
        "state": {"_model_name": name, **state},
    }


def _widget_output(model_id: str, **extra) -> nbformat.NotebookNode:
    data = {
        WIDGET_VIEW: {"model_id": model_id, "version_major": 2, "version_minor": 0},
        "text/plain": "VBox(children=(HBox(children=(Dropdown(...",
        **extra,
    }
    return new_output("display_data", data=data)


def test_store_outputs_keeps_stills_final_bars_and_no_widget_state() -> None:
    state = {
        "bar": _model(
            "HBoxModel",
            children=["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"],
            layout="IPY_MODEL_lay",
        ),
        "l": _model("HTMLModel", value="Score-CAM: 100%"),
        "p": _model("FloatProgressModel", value=454, max=454),
        "r": _model("HTMLModel", value="\xa0454/454 [00:12&lt;00:00, 36.2it/s]"),
        "lay": _model("LayoutModel"),
        "gone": _model(
            "HBoxModel",
            children=["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"],
            layout="IPY_MODEL_hidden",
        ),
        "hidden": _model("LayoutModel", visibility="hidden"),
        "box": _model("VBoxModel", _view_name="VBoxView", children=[]),
        "explorer": _model("VBoxModel", children=[]),
    }
    cell = new_code_cell("x")
    cell.outputs = [
        new_output("stream", name="stdout", text="   \n"),  # an erased text bar
        _widget_output("bar"),
        _widget_output("gone"),
        _widget_output("explorer", **{"image/jpeg": "/9j/"}),
        _widget_output("box"),
        new_output("stream", name="stdout", text="done\n"),
    ]
    nb = new_notebook(cells=[new_markdown_cell("# t"), cell])
    nb.metadata["widgets"] = {WIDGET_STATE: {"state": state, "version_major": 2}}
    warnings = store_outputs(nb)
    outs = nb.cells[1].outputs
    assert "widgets" not in nb.metadata
    assert [o.output_type for o in outs] == [
        "display_data",
        "display_data",
        "display_data",
        "stream",
    ]
    assert outs[0].data == {
        "text/plain": "Score-CAM: 100%|##########| 454/454 [00:12<00:00, 36.2it/s]"
    }
    assert set(outs[1].data) == {"image/jpeg", "text/plain"}  # the still, no widget view
    assert WIDGET_VIEW in outs[2].data  # kept, but reported
    assert len(warnings) == 1 and "cell 1 stores VBoxView without a still picture" in warnings[0]


NOTEBOOK = [
    "import time\nfrom xai_helpers.progress import progress",
    "for _ in progress(range(20), desc='text bar', mininterval=0):\n    time.sleep(0.01)",
    "for _ in progress(range(20), desc='erased', leave=False, mininterval=0):\n    pass",
    "from tqdm.notebook import tqdm\nfor _ in tqdm(range(7), desc='widget bar'):\n    pass",
    # an object shown as a widget with a still picture, like the explorers
    "import base64, ipywidgets\n"
    "class Still:\n"
    "    def __init__(self):\n"
    "        self.widget = ipywidgets.IntSlider()\n"
    "    def _repr_mimebundle_(self, **kw):\n"
    "        b = dict(self.widget._repr_mimebundle_(**kw))\n"
    "        b['image/png'] = base64.b64encode(open(%r, 'rb').read()).decode()\n"
    "        b['text/plain'] = 'Still: run the cells to use the controls.'\n"
    "        return b\n"
    "Still()",
]


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nb") / "demo.ipynb"
    png = str(ROOT / "data" / "coffee.png")
    cells = [new_code_cell(src % png if "%r" in src else src) for src in NOTEBOOK]
    nb = new_notebook(cells=[new_markdown_cell("# demo"), *cells])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    assert execute_notebooks([path], timeout=120) == 0
    return path


def test_executed_notebook_is_stored_as_jupyterlab_writes_it(executed) -> None:
    text = executed.read_text()
    nb = nbformat.reads(text, as_version=4)
    # what JupyterLab would change on opening: the kernel's display name, widget state
    assert nb.metadata.kernelspec.display_name == kernel_display_name() != "Python 3"
    assert nb.metadata.language_info.name == "python" and "widgets" not in nb.metadata
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5) and all("id" in c for c in nb.cells)
    # the Jupyter server saves with nbformat.write: the same bytes for the same notebook
    assert nbformat.writes(nb) + "\n" == text
    assert all("execution" not in c.metadata for c in nb.cells)


def test_executed_notebook_reads_without_a_kernel(executed) -> None:
    nb = nbformat.read(executed, as_version=4)
    outputs = [c.outputs for c in nb.cells[1:]]
    text_bar = outputs[1][0].text
    assert "\r" not in text_bar and text_bar.startswith("text bar: 100%|")
    assert "20/20" in text_bar and text_bar.count("\n") == 1
    assert outputs[2] == []  # leave=False: nothing stored
    (widget_bar,) = outputs[3]
    assert widget_bar.data["text/plain"].startswith("widget bar: 100%|##########| 7/7")
    (still,) = outputs[4]
    assert set(still.data) == {"image/png", "text/plain"}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert WIDGET_VIEW not in out.get("data", {})
            assert not re.search(r"(?<!\d)0%\|", str(out.get("data", out.get("text", ""))))
