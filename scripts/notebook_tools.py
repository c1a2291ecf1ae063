"""Executing the notebooks and timing them: ``course.py execute`` and ``course.py timings``.

``execute`` runs each notebook top to bottom on a fresh kernel (nbclient, the engine behind
``jupyter nbconvert --execute``) and stores it the way JupyterLab writes it (nbformat's
serialisation, the installed kernel's display name, no per-cell timing metadata), so that
opening a stored notebook in JupyterLab changes nothing. What a reader without a live kernel
sees is decided here too (:func:`store_outputs`):

* a widget output that carries a still picture (the explorers do) is stored as that picture:
  GitHub, nbviewer, the course website and an untrusted JupyterLab all show it, with its note
  "run the cells to use the controls"; running the cell brings the live widget back;
* a tqdm widget bar is stored as the text of its final state (not ``0%| 0/454``), one that
  was hidden at the end (``leave=False``) not at all; text bars (:mod:`xai_helpers.progress`)
  keep their last line, since carriage returns are resolved;
* no widget state is stored in the notebook's metadata: nothing is left that needs it, and
  JupyterLab would rewrite it on every save;
* any other widget output is stored as it is and reported, because what GitHub shows of it is
  the widget's raw repr (``VBox(children=...``): give it a still picture.

``timings`` runs each notebook under nbval, exactly as the README's test command does, inside
``/usr/bin/time -v``, and records the wall time and the peak resident memory of the largest
process (the kernel). The table goes to ``notebooks/timings.json`` and into the README between
the markers ``<!-- timings:start -->`` and ``<!-- timings:end -->``.
"""

from __future__ import annotations

import html
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TIMINGS = NOTEBOOKS / "timings.json"
README = ROOT / "README.md"
KERNEL = "python3"


def all_notebooks() -> list[Path]:
    """The course's notebooks in learning order (their file names start with the number)."""
    return sorted(p for p in NOTEBOOKS.glob("*.ipynb") if not p.name.startswith("_"))


def _resolve(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths or all_notebooks():
        p = p if p.is_absolute() else (Path.cwd() / p)
        if not p.is_file():
            raise SystemExit(f"no notebook at {p}; pass paths like notebooks/01_cam.ipynb")
        out.append(p.resolve())
    return out


def kernel_display_name(name: str = KERNEL) -> str:
    """The display name JupyterLab writes into a notebook run with kernel ``name``."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KernelSpecManager().get_kernel_spec(name).display_name


def execute_notebooks(paths: list[Path], timeout: int = 600) -> int:
    """Execute each notebook in place on a fresh kernel; stop at the first failing one."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    display_name = kernel_display_name()
    for path in _resolve(paths):
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name=KERNEL,
            resources={"metadata": {"path": str(path.parent)}},
            record_timing=False,
            coalesce_streams=True,  # one stream per cell, carriage returns resolved
        )
        start = time.perf_counter()
        try:
            client.execute()
        except CellExecutionError as err:
            print(f"FAILED {path.name}: {str(err).splitlines()[-1] if str(err) else err}")
            return 1
        nb.metadata["kernelspec"] = {
            "display_name": display_name,
            "language": "python",
            "name": KERNEL,
        }
        for warning in store_outputs(nb):
            print(f"warning: {path.name}: {warning}")
        nbformat.validate(nb)
        nbformat.write(nb, path)
        print(f"executed {_shown(path)} in {time.perf_counter() - start:.0f} s")
    return 0


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
STILLS = ("image/png", "image/jpeg", "image/svg+xml")


def store_outputs(nb: Any) -> list[str]:
    """Make an executed notebook readable without a kernel; return warnings (see the module
    docstring). Changes ``nb`` in place and removes ``metadata.widgets``."""
    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    warnings = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if output.output_type == "stream" and not output.text.strip():
                continue  # an erased text bar (leave=False)
            data = output.get("data", {})
            if WIDGET_VIEW not in data:
                kept.append(output)
                continue
            model = state.get(data[WIDGET_VIEW].get("model_id", ""), {}).get("state", {})
            if any(kind in data for kind in STILLS):
                del data[WIDGET_VIEW]
            elif _is_progress_bar(model, state):
                if _hidden(model, state):
                    continue
                data.clear()
                data["text/plain"] = _progress_text(model, state)
            else:
                name = model.get("_view_name") or "a widget"
                warnings.append(
                    f"cell {index} stores {name} without a still picture; GitHub will show "
                    "its raw repr (give the object a _repr_mimebundle_ with an image)"
                )
            kept.append(output)
        cell.outputs = kept
    return warnings


def _children(model: dict[str, Any], state: dict[str, Any]) -> list[dict[str, Any]]:
    ids = [c.removeprefix("IPY_MODEL_") for c in model.get("children", [])]
    return [state.get(i, {}).get("state", {}) for i in ids]


def _is_progress_bar(model: dict[str, Any], state: dict[str, Any]) -> bool:
    """tqdm's widget bar: an HBox of (HTML, a progress bar, HTML)."""
    kinds = [c.get("_model_name") for c in _children(model, state)]
    return (
        model.get("_model_name") == "HBoxModel"
        and len(kinds) == 3
        and kinds[0] == kinds[2] == "HTMLModel"
        and kinds[1] in ("FloatProgressModel", "IntProgressModel")
    )


def _hidden(model: dict[str, Any], state: dict[str, Any]) -> bool:
    layout = state.get(str(model.get("layout", "")).removeprefix("IPY_MODEL_"), {})
    style = layout.get("state", {})
    return style.get("visibility") == "hidden" or style.get("display") == "none"


def _progress_text(model: dict[str, Any], state: dict[str, Any]) -> str:
    """The bar's last state as text: ``desc: 100%|##########| 454/454 [00:12<00:00]``."""
    left, bar, right = _children(model, state)
    value, top = float(bar.get("value", 0)), float(bar.get("max", 1)) or 1.0
    filled = round(10 * min(max(value / top, 0.0), 1.0))
    text = f"{_plain(left.get('value', ''))}|{'#' * filled}{' ' * (10 - filled)}|"
    return f"{text}{_plain(right.get('value', ''))}".strip()


def _plain(value: str) -> str:
    # tqdm pads with figure spaces (U+2007) and non-breaking spaces in its HTML
    text = html.unescape(re.sub(r"<[^>]+>", "", value))
    return text.replace("\u2007", " ").replace("\xa0", " ")


def _time_one(path: Path) -> dict[str, object]:
    cmd = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "pytest",
        "--nbval-lax",
        "--nbval-current-env",
        "-p",
        "no:cacheprovider",
        "-q",
        str(path.relative_to(ROOT)),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    seconds = 0.0
    if wall:
        for part in wall.group(1).split(":"):
            seconds = seconds * 60 + float(part)
    return {
        "notebook": path.name,
        "passed": proc.returncode == 0,
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(int(rss.group(1)) / 1024) if rss else None,
    }


def time_notebooks(paths: list[Path], update_readme: bool = True) -> int:
    """Time every notebook under nbval; write ``notebooks/timings.json`` and the README table."""
    rows = []
    for path in _resolve(paths):
        row = _time_one(path)
        rows.append(row)
        print(
            f"{row['notebook']:<40} {'ok  ' if row['passed'] else 'FAIL'} "
            f"{row['seconds']:6.1f} s  {row['peak_rss_mib']} MiB peak"
        )
    record = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "command": "/usr/bin/time -v python -m pytest --nbval-lax --nbval-current-env NOTEBOOK",
        "notebooks": rows,
    }
    if not paths:  # a full run replaces the record; a partial one updates its rows
        TIMINGS.write_text(json.dumps(record, indent=1) + "\n")
    else:
        old = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {"notebooks": []}
        merged = {r["notebook"]: r for r in old["notebooks"]}
        merged.update({r["notebook"]: r for r in rows})
        record["notebooks"] = [merged[k] for k in sorted(merged)]
        TIMINGS.write_text(json.dumps(record, indent=1) + "\n")
    if update_readme:
        write_readme_table(record)
    return 0 if all(r["passed"] for r in rows) else 1


def readme_table(record: dict) -> str:
    """The README's timing table, from a ``timings.json`` record."""
    lines = [
        f"Measured by `python scripts/course.py timings` on {record['date']} "
        f"({record['machine']}, Python {record['python']}): each notebook under nbval, "
        "inside `/usr/bin/time -v` (peak memory is the kernel's resident set).",
        "",
        "| notebook | seconds under nbval | peak memory (MiB) |",
        "|---|---:|---:|",
    ]
    for row in record["notebooks"]:
        status = "" if row["passed"] else " (FAILED)"
        name, seconds, peak = row["notebook"], row["seconds"], row["peak_rss_mib"]
        lines.append(f"| `{name}`{status} | {seconds:.0f} | {peak} |")
    return "\n".join(lines)


def write_readme_table(record: dict) -> None:
    text = README.read_text()
    start, end = "<!-- timings:start -->", "<!-- timings:end -->"
    if start not in text or end not in text:
        print(f"README has no {start} ... {end} markers; table not written")
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{start}\n{readme_table(record)}\n{end}{tail}")
