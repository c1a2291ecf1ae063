"""Student edition and grading: ``course.py student``, ``grade`` and ``references``.

A thin adapter over Otter-Grader (``otter assign`` builds the student notebook and the autograder,
``otter run`` grades one notebook locally: no Docker, no server, no database). The instructor
notebooks mark their exercises with cell tags and first-line comments (docs/AUTHORING.md); this
module turns those marks into Otter's raw delimiter cells, runs Otter, and tidies what Otter leaves
(our tags, widget state). The exercise format, in short::

    **Exercise N.** (P points) ...     markdown question (or "(ungraded)")
    # Solution N                       code, tags solution + hide-cell, "# SOLUTION" markers
    <details>...</details>             optional markdown, tag solution
    # Check N  /  # Check N (hidden)   code, asserts only

``references`` writes ``notebooks/references.md`` from ``notebooks/references.bib`` (pybtex).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
# shipped with the student edition: what the notebooks link to
COMPANION_FILES = ("glossary.md", "references.md", "references.bib")

SOLUTION_TAG, HIDE_TAG = "solution", "hide-cell"  # hide-cell: the book folds input and output
QUESTION = re.compile(
    r"^\s*\*\*Exercise (?P<n>\d+)\.\*\*\s*"
    r"\((?:(?P<points>\d+(?:\.\d+)?) points?|(?P<ungraded>ungraded))\)"
)
ANY_QUESTION = re.compile(r"\*\*Exercise \d+\.?\*\*")
SOLUTION_HEADER = re.compile(r"^#\s*Solution (\d+)\s*$")
CHECK_HEADER = re.compile(r"^#\s*Check (\d+)\s*(\(hidden\))?\s*$")
# Otter's solution markers (otter.assign.solutions); a solution cell needs at least one
MARKER = re.compile(r"#\s?(BEGIN SOLUTION|SOLUTION)\b")
STUDENT_HEADER = "# Exercise {n}: your answer (replace each ... with your code)"


class FormatError(ValueError):
    """A notebook breaks the exercise format of docs/AUTHORING.md."""


@dataclass
class Exercise:
    """The cells of one exercise, as indices into the notebook's cells."""

    number: int
    points: float | None  # None: ungraded
    question: int
    solutions: list[int] = field(default_factory=list)  # code and prose, in order
    checks: list[int] = field(default_factory=list)
    hidden_checks: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"exercise_{self.number}"

    @property
    def last(self) -> int:
        return max([self.question, *self.solutions, *self.checks])


def _first_line(cell) -> str:
    return cell.source.lstrip().split("\n", 1)[0].strip()


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def parse_exercises(nb, where: str = "notebook") -> list[Exercise]:
    """Find the exercises of an instructor notebook; raise FormatError naming the faulty cell."""
    exercises: list[Exercise] = []
    current: Exercise | None = None
    closed: set[int] = set()

    def fail(i: int, message: str) -> None:
        raise FormatError(f"{where}, cell {i}: {message} (see docs/AUTHORING.md)")

    for i, cell in enumerate(nb.cells):
        first = _first_line(cell) if cell.source.strip() else ""
        question = QUESTION.match(cell.source) if cell.cell_type == "markdown" else None
        solution = SOLUTION_HEADER.match(first) if cell.cell_type == "code" else None
        check = CHECK_HEADER.match(first) if cell.cell_type == "code" else None
        tagged = SOLUTION_TAG in _tags(cell)

        if current is not None and current.checks and not check:
            closed.add(current.number)  # checks come last: the exercise ends here
            current = None
        if question:
            n = int(question["n"])
            if n != len(exercises) + 1:
                fail(i, f"exercise {n} follows exercise {len(exercises)}; number them 1, 2, 3 ...")
            if "<details>" in cell.source or len(ANY_QUESTION.findall(cell.source)) > 1:
                fail(
                    i,
                    "one question per cell; solution prose goes into its own cell tagged solution",
                )
            points = None if question["ungraded"] else float(question["points"])
            current = Exercise(n, points, i)
            exercises.append(current)
        elif cell.cell_type == "markdown" and ANY_QUESTION.search(cell.source):
            fail(i, "a question starts with '**Exercise N.** (P points)' or '(ungraded)'")
        elif solution or check:
            n = int((solution or check).group(1))
            kind = "solution" if solution else "check"
            if current is None or current.number != n:
                state = "ended: its checks come last" if n in closed else "not started"
                fail(i, f"{kind} of exercise {n} outside it (exercise {n} has {state} here)")
            if solution:
                if not {SOLUTION_TAG, HIDE_TAG} <= set(_tags(cell)):
                    fail(i, "a solution cell has the tags 'solution' and 'hide-cell'")
                if not MARKER.search(cell.source):
                    fail(i, "mark the lines to remove with '# SOLUTION' or '# BEGIN/END SOLUTION'")
                current.solutions.append(i)
            else:
                current.checks.append(i)
                if check.group(2):
                    current.hidden_checks.append(i)
        elif tagged:
            if cell.cell_type != "markdown":
                fail(i, "a code cell tagged solution starts with '# Solution N'")
            if current is None:
                fail(i, "solution prose outside an exercise (or after its checks, which come last)")
            current.solutions.append(i)
        elif cell.cell_type == "code" and re.match(r"#\s*Solution\b", first):
            fail(i, "a solution cell starts with '# Solution N' on a line of its own")

    for ex in exercises:
        where_q = f"exercise {ex.number} (cell {ex.question})"
        visible = [c for c in ex.checks if c not in ex.hidden_checks]
        if not ex.solutions:
            raise FormatError(f"{where}, {where_q}: no solution cell")
        if ex.points is not None and not visible:
            raise FormatError(f"{where}, {where_q}: a graded exercise has a visible '# Check N'")
        if ex.points is None and ex.checks:
            raise FormatError(f"{where}, {where_q}: an ungraded exercise has no checks")
    return exercises


# ---------------------------------------------------------------------------------------------
# Otter Assign


def _raw(text: str):
    return nbformat.v4.new_raw_cell(text)


def to_otter_master(nb, exercises: list[Exercise], name: str, generate: bool):
    """The instructor notebook with Otter's raw delimiter cells around each exercise."""
    config = {
        "name": name,
        "init_cell": True,
        "check_all_cell": False,
        "export_cell": False,
        "run_tests": False,  # the instructor notebooks are checked by nbval instead
        "suppress_no_tests_warning": True,
        "tests": {"files": False, "ok_format": True},
        "generate": {"pdf": False} if generate else False,
    }
    cells = [_raw("# ASSIGNMENT CONFIG\n" + json.dumps(config))]
    by_start = {ex.question: ex for ex in exercises}
    i = 0
    while i < len(nb.cells):
        ex = by_start.get(i)
        if ex is None:
            cells.append(nb.cells[i])
            i += 1
            continue
        points = 0 if ex.points is None else ex.points
        manual = "true" if ex.points is None else "false"  # ungraded: Otter adds an answer cell
        config = f"name: {ex.name}\npoints: {points:g}\nmanual: {manual}\nall_or_nothing: true"
        cells.append(_raw("# BEGIN QUESTION\n" + config))
        block = None
        for j in range(ex.question, ex.last + 1):
            kind = "SOLUTION" if j in ex.solutions else "TESTS" if j in ex.checks else None
            if kind != block:
                if block:
                    cells.append(_raw(f"# END {block}"))
                if kind:
                    cells.append(_raw(f"# BEGIN {kind}"))
                block = kind
            cells.append(nb.cells[j])
        if block:
            cells.append(_raw(f"# END {block}"))
        cells.append(_raw("# END QUESTION"))
        i = ex.last + 1
    master = copy.deepcopy(nb)
    master.cells = copy.deepcopy(cells)
    return master


@dataclass
class Assigned:
    """What ``otter assign`` produced for one notebook."""

    student: Path
    autograder_notebook: Path
    autograder_zip: Path | None
    exercises: list[Exercise]


def assign(instructor: Path, workdir: Path, generate: bool = False) -> Assigned:
    """Run Otter Assign on an instructor notebook (converted to Otter's format) in ``workdir``."""
    from otter.assign import main as otter_assign

    nb = nbformat.read(instructor, as_version=4)
    exercises = parse_exercises(nb, where=instructor.name)
    master = workdir / "master" / instructor.name
    master.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(to_otter_master(nb, exercises, instructor.stem, generate), master)
    result = workdir / "assigned"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        otter_assign(str(master), str(result), no_pdfs=True, no_run_tests=True)
    zips = sorted((result / "autograder").glob("*.zip"))
    return Assigned(
        student=result / "student" / instructor.name,
        autograder_notebook=result / "autograder" / instructor.name,
        autograder_zip=zips[0] if zips else None,
        exercises=exercises,
    )


# Otter marks manually graded questions for its PDF export, which the course does not use
PDF_FILTER_COMMENT = re.compile(r"^<!-- (BEGIN|END) QUESTION -->\n*", flags=re.MULTILINE)


def finish_student(nb):
    """Tidy Otter's student notebook: our tags off, stub headers, no outputs or widget state."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = PDF_FILTER_COMMENT.sub("", cell.source)
        meta = cell.get("metadata", {})
        for key in ("execution", "jupyter", "collapsed", "scrolled"):
            meta.pop(key, None)
        if "tags" in meta:
            meta["tags"] = [t for t in meta["tags"] if t not in (SOLUTION_TAG, HIDE_TAG)]
            if not meta["tags"]:
                del meta["tags"]
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            header = SOLUTION_HEADER.match(_first_line(cell)) if cell.source.strip() else None
            if header:
                rest = cell.source.lstrip().split("\n", 1)[1:]
                cell.source = "\n".join([STUDENT_HEADER.format(n=header.group(1)), *rest])
    nb.cells = [c for c in nb.cells if c.cell_type == "code" or c.source.strip()]
    # Otter puts its init cell first; the title and objectives read better above it
    if nb.cells and nb.cells[0].source.startswith("# Initialize Otter"):
        init = nb.cells.pop(0)
        first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), 0)
        nb.cells.insert(first_code, init)
    return nb


def check_stubs(nb, where: str = "notebook") -> None:
    """Every stub of a student notebook is valid Python (a marker can leave a bare block behind)."""
    for cell in nb.cells:
        if cell.cell_type != "code" or not cell.source.startswith(STUDENT_HEADER.split("{")[0]):
            continue
        # IPython magics and shell escapes are not Python; blank them out before parsing
        lines = [
            "" if line.lstrip()[:1] in ("%", "!") else line for line in cell.source.split("\n")
        ]
        try:
            ast.parse("\n".join(lines))
        except SyntaxError as err:
            raise FormatError(
                f"{where}: the student's stub {cell.source.splitlines()[0]!r} is not valid Python "
                f"({err.msg}, line {err.lineno}); a '# SOLUTION' on a line that opens a block "
                "(with, for, def) leaves the block empty: use '# BEGIN/END SOLUTION' around it"
            ) from None


def clear_notebook(nb):
    """A notebook without exercises, as the student edition ships it: outputs cleared."""
    return finish_student(copy.deepcopy(nb))


def student_notebook(path: Path, workdir: Path):
    """The student edition of one instructor notebook and its exercises; FormatError if invalid."""
    nb = nbformat.read(path, as_version=4)
    exercises = parse_exercises(nb, where=path.name)
    if not exercises:
        return clear_notebook(nb), exercises
    built = assign(path, workdir)
    student = finish_student(nbformat.read(built.student, as_version=4))
    check_stubs(student, where=path.name)
    return student, exercises


def build_student_edition(outdir: Path, notebooks: list[Path] | None = None) -> int:
    """Write the student edition of ``notebooks`` (default: all) and its companion files.

    A notebook that breaks the exercise format is left out (never copied with its solutions) and
    named; the return code is then 1, so a partial edition cannot pass unnoticed.
    """
    from notebook_tools import all_notebooks

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [Path(p).resolve() for p in (notebooks or all_notebooks())]
    left_out = []
    with tempfile.TemporaryDirectory(prefix="student-") as tmp:
        for path in paths:
            try:
                student, exercises = student_notebook(path, Path(tmp) / path.stem)
            except FormatError as err:
                print(f"LEFT OUT {err}", file=sys.stderr)
                left_out.append(path.name)
                continue
            nbformat.write(student, outdir / path.name)
            graded = [ex for ex in exercises if ex.points is not None]
            points = sum(ex.points for ex in graded)
            print(
                f"{path.name}: {len(exercises)} exercises ({len(graded)} graded, {points:g} points)"
            )
    for name in COMPANION_FILES:
        if (NOTEBOOKS / name).is_file():
            shutil.copy(NOTEBOOKS / name, outdir / name)
    print(f"student edition: {len(paths) - len(left_out)} notebooks in {outdir}")
    if left_out:
        print(f"left out (not in the format of docs/AUTHORING.md): {', '.join(left_out)}")
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# grading


@dataclass
class ExerciseScore:
    exercise: Exercise
    score: float
    failed: list[str]  # "visible check 1", "hidden check 2", or why nothing ran


def _is_instructor_edition(nb) -> bool:
    return "otter" not in nb.metadata and any(
        c.cell_type == "code" and CHECK_HEADER.match(_first_line(c)) for c in nb.cells if c.source
    )


def score_notebook(path: Path, instructor: Path | None = None) -> tuple[list[ExerciseScore], str]:
    """Grade one notebook with Otter Run; return the scores per exercise and Otter's error, if any.

    ``instructor`` is the instructor notebook that defines the checks (default: the notebook of the
    same name in ``notebooks/``). An instructor-edition notebook is graded as Otter's autograder
    version of it, whose checks run where the check cells stand.
    """
    from otter.api import grade_submission

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    name = nb.metadata.get("otter", {}).get("assignment_name") or path.stem
    instructor = Path(instructor) if instructor else NOTEBOOKS / f"{name}.ipynb"
    if not instructor.is_file():
        raise FileNotFoundError(
            f"no instructor notebook {instructor} for {path.name}; grade a notebook of the course "
            "(its file name or its Otter metadata names it)"
        )
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        built = assign(instructor, Path(tmp), generate=True)
        submission = path
        if _is_instructor_edition(nb):
            submission = Path(tmp) / "submission" / path.name
            submission.parent.mkdir()
            shutil.copy(built.autograder_notebook, submission)
        with contextlib.redirect_stderr(io.StringIO()):
            results = grade_submission(str(submission), str(built.autograder_zip), quiet=True)
    error = str(results.catastrophic_error or "")
    scores = []
    for ex in built.exercises:
        if ex.points is None:
            scores.append(ExerciseScore(ex, 0.0, []))
            continue
        result = results.results.get(ex.name)
        if result is None:
            scores.append(ExerciseScore(ex, 0.0, ["its checks did not run"]))
            continue
        failed = []
        counts = {"visible": 0, "hidden": 0}
        for case in result.test_case_results:
            kind = "hidden" if case.test_case.hidden else "visible"
            counts[kind] += 1
            if not case.passed:
                failed.append(f"{kind} check {counts[kind]}")
        scores.append(ExerciseScore(ex, float(result.score), failed))
    return scores, error


def grade_notebook(path: Path, instructor: Path | None = None) -> int:
    """Print one line per exercise and ``score: X/Y``; 0 when grading ran, 1 when it could not."""
    try:
        scores, error = score_notebook(path, instructor)
    except (FileNotFoundError, FormatError) as err:
        print(f"cannot grade: {err}", file=sys.stderr)
        return 1
    if error:
        print(f"grading stopped early: {error}")
    total = possible = 0.0
    for s in scores:
        ex = s.exercise
        if ex.points is None:
            print(f"exercise {ex.number}: ungraded")
            continue
        total, possible = total + s.score, possible + ex.points
        why = f"   failed: {', '.join(s.failed)}" if s.failed else ""
        print(f"exercise {ex.number}: {s.score:g}/{ex.points:g}{why}")
    print(f"score: {total:g}/{possible:g}")
    return 0


# ---------------------------------------------------------------------------------------------
# references


def references_markdown(bib: Path = NOTEBOOKS / "references.bib") -> str:
    """``references.md``: one ``### key`` heading per BibTeX entry (sorted), formatted by pybtex."""
    from pybtex.database import parse_file
    from pybtex.plugin import find_plugin

    data = parse_file(str(bib), bib_format="bibtex")
    style = find_plugin("pybtex.style.formatting", "plain")(label_style="alpha")
    backend = find_plugin("pybtex.backends", "markdown")()
    lines = [
        "# References",
        "",
        "<!-- generated from references.bib by `python scripts/course.py references`; "
        "edit the .bib file, not this one -->",
        "",
        "Every paper the notebooks cite. A notebook links here as "
        "`[Selvaraju et al. 2017, eq. 1](references.md#selvaraju2017)`; "
        "the anchor is the BibTeX key in `references.bib`.",
        "",
    ]
    # pybtex's plain style already turns doi, eprint and url into links
    for entry in sorted(style.format_entries(data.entries.values()), key=lambda e: e.key):
        lines += [f"### {entry.key}", "", entry.text.render(backend), ""]
    return "\n".join(lines)


def write_references(bib: Path = NOTEBOOKS / "references.bib") -> int:
    out = bib.with_suffix(".md")
    out.write_text(references_markdown(bib), encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0
