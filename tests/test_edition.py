"""The student edition and grading (scripts/edition.py over Otter-Grader), glossary and citations.

Grading executes notebooks, so the expensive tests use a tiny instructor notebook
(tests/fixtures/edition_exercises.ipynb) and notebook 00; each grading is one real Otter run.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import edition  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
FIXTURE = ROOT / "tests" / "fixtures" / "edition_exercises.ipynb"
NB00 = NOTEBOOKS / "00_getting_started.ipynb"
MARKED_LINE = re.compile(r"^(?P<code>.*?)\s*#\s?SOLUTION( NO PROMPT)?\s*$")


def read(path: Path):
    return nbformat.read(path, as_version=4)


def is_old_format(nb) -> bool:
    """Exercises as before docs/AUTHORING.md: '# Solution N' cells without the solution tag."""
    return any(
        c.cell_type == "code"
        and c.source.startswith("# Solution")
        and "solution" not in c.metadata.get("tags", [])
        for c in nb.cells
    )


def solution_strings(nb) -> set[str]:
    """Every piece of text the student edition must not contain, found independently of edition.py.

    Marked lines (their code; for an assignment, the right-hand side), lines inside BEGIN/END
    SOLUTION blocks, solution prose, hidden checks, and the outputs of solution cells.
    """
    found: set[str] = set()
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        first = cell.source.split("\n", 1)[0]
        if cell.cell_type == "markdown" and "solution" in tags:
            found |= {line.strip() for line in cell.source.splitlines()}
        elif cell.cell_type == "code" and "solution" in tags:
            in_block = False
            for line in cell.source.splitlines():
                if "# END SOLUTION" in line:
                    in_block = False
                elif "# BEGIN SOLUTION" in line:
                    in_block = True
                elif in_block:
                    found.add(line.strip())
                elif m := MARKED_LINE.match(line):
                    code = m["code"].strip()
                    found.add(
                        code.split("=", 1)[1].strip()
                        if re.match(r"^[\w.]+\s*=[^=]", code)
                        else code
                    )
            for out in cell.get("outputs", []):
                found |= {line.strip() for line in "".join(out.get("text", "")).splitlines()}
                for mime, data in out.get("data", {}).items():
                    text = data if isinstance(data, str) else "".join(data)
                    if mime.startswith("image/"):
                        found.add(text.strip()[:200])  # base64 of the figure
                    else:
                        found |= {line.strip() for line in text.splitlines()}
        elif cell.cell_type == "code" and re.match(r"#\s*Check \d+ \(hidden\)", first):
            found |= {line.strip() for line in cell.source.splitlines()[1:]}
    # what the instructor edition shows outside solutions (question, given code, visible checks)
    # is public; short fragments ("...", "return kept") say nothing about the answer
    public = "\n".join(
        c.source
        for c in nb.cells
        if "solution" not in c.metadata.get("tags", []) and "(hidden)" not in c.source[:40]
    )
    return {s for s in found if len(s) >= 12 and s not in public and "details>" not in s}


def fill_in(student, instructor, answers: dict[int, str] | None = None):
    """A filled-in student notebook: each stub replaced by the solution or by ``answers[N]``."""
    solutions: dict[int, list[str]] = {}
    for cell in instructor.cells:
        m = re.match(r"# Solution (\d+)\n", cell.source)
        if cell.cell_type == "code" and m:
            solutions.setdefault(int(m[1]), []).append(cell.source)
    filled = nbformat.reads(nbformat.writes(student), as_version=4)
    for cell in filled.cells:
        m = re.match(r"# Exercise (\d+): your answer", cell.source)
        if cell.cell_type == "code" and m:
            n = int(m[1])
            cell.source = (answers or {}).get(n) or solutions[n].pop(0)
    return filled


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    assert edition.build_student_edition(out, [FIXTURE, NB00]) == 0
    return out


# --- the format ------------------------------------------------------------------------------


def cells(*specs):
    """A notebook from (cell type, source, tags) triples."""
    made = []
    for kind, source, tags in specs:
        factory = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        made.append(factory(source, metadata={"tags": list(tags)} if tags else {}))
    return nbformat.v4.new_notebook(cells=made)


GOOD = [
    ("md", "**Exercise 1.** (2 points) Define `x`.", ()),
    ("code", "# Solution 1\nx = 2  # SOLUTION", ("solution", "hide-cell")),
    ("code", "# Check 1\nassert x > 1", ()),
]


def test_the_fixture_follows_the_format():
    exercises = edition.parse_exercises(read(FIXTURE))
    assert [(e.number, e.points) for e in exercises] == [(1, 2), (2, 1), (3, None), (4, 1)]
    assert [len(e.hidden_checks) for e in exercises] == [1, 1, 0, 1]


@pytest.mark.parametrize(
    "bad, message",
    [
        ([("md", "**Exercise 1.** Define `x`.", ())] + GOOD[1:], "(P points)"),
        ([GOOD[0], ("code", "# Solution 1\nx = 2  # SOLUTION", ()), GOOD[2]], "tags"),
        ([GOOD[0], ("code", "# Solution 1\nx = 2", ("solution", "hide-cell")), GOOD[2]], "mark"),
        ([GOOD[0], GOOD[1], ("code", "# Check 1 (hidden)\nassert x == 2", ())], "visible"),
        ([GOOD[0], GOOD[2], GOOD[1]], "solution of exercise 1 outside it (exercise 1 has ended"),
        (GOOD + [("md", "text", ()), ("code", "# Check 1\nassert x", ())], "has ended"),
        ([("md", "**Exercise 2.** (1 point) Define `x`.", ())] + GOOD[1:], "number them"),
        (
            [("md", "**Exercise 1.** (1 point) Q\n\n<details>A</details>", ())] + GOOD[1:],
            "own cell",
        ),
    ],
)
def test_format_errors_name_the_problem(bad, message):
    with pytest.raises(edition.FormatError, match=re.escape(message)):
        edition.parse_exercises(cells(*bad))


def test_a_notebook_in_the_old_form_is_left_out_and_fails_the_build(tmp_path, capsys):
    old = tmp_path / "old_form.ipynb"
    nbformat.write(
        cells(
            ("md", "**Exercise 1.** Define `x`.", ()),
            ("code", "# Solution 1\nx = 2  # the answer", ()),
        ),
        old,
    )
    out = tmp_path / "student"
    assert edition.build_student_edition(out, [old, FIXTURE]) == 1
    assert "LEFT OUT old_form.ipynb" in capsys.readouterr().err
    assert not (out / old.name).exists() and (out / FIXTURE.name).exists()


def test_a_stub_that_is_not_python_is_refused():
    student = cells(
        ("code", "# Exercise 1: your answer (replace each ... with your code)\n...\n    ...", ()),
    )
    with pytest.raises(edition.FormatError, match="BEGIN/END SOLUTION"):
        edition.check_stubs(student)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("[0-9]*.ipynb")), ids=lambda p: p.stem)
def test_course_notebooks_follow_the_format(path):
    nb = read(path)
    assert not is_old_format(nb), f"{path.name} has exercises in the old form (docs/AUTHORING.md)"
    exercises = edition.parse_exercises(nb, where=path.name)
    assert exercises, f"{path.name} has no exercises: every notebook has some"
    assert any(e.points for e in exercises), f"{path.name} has no graded exercise"


# --- the student edition ---------------------------------------------------------------------


def test_student_edition_builds_with_stubs_and_checks(student_dir):
    nb = read(student_dir / FIXTURE.name)
    sources = [c.source for c in nb.cells]
    assert sources[0].startswith("# Fixture") and sources[1].startswith("# Initialize Otter")
    assert sources.count('grader.check("exercise_1")') == 1
    stub1 = next(s for s in sources if s.startswith("# Exercise 1: your answer"))
    assert "total = ..." in stub1  # the name the check needs survives, its value does not
    stub4 = next(s for s in sources if s.startswith("# Exercise 4: your answer"))
    assert "def evens_of(values):\n    ...\n" in stub4 and "evens = evens_of(numbers)" in stub4
    assert not any("# Check" in s or "# Solution" in s for s in sources)
    assert "exercise_3" not in nb.metadata["otter"]["tests"]  # ungraded: no checks
    public = json.dumps(nb.metadata["otter"]["tests"])
    assert "math.fsum" not in public and '"hidden": true' not in public
    for name in ("glossary.md", "references.md", "references.bib"):
        assert (student_dir / name).is_file()


@pytest.mark.parametrize("instructor", [FIXTURE, NB00], ids=lambda p: p.stem)
def test_nothing_of_a_solution_reaches_the_student_edition(student_dir, instructor):
    secrets = solution_strings(read(instructor))
    assert len(secrets) >= 5, secrets  # the fixture and notebook 00 have real solutions
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(student_dir.iterdir()))
    # notebooks store sources as JSON strings: compare with the decoded text too
    decoded = "\n".join(
        c.source for p in sorted(student_dir.glob("*.ipynb")) for c in read(p).cells
    )
    leaked = [s for s in secrets if s in text or s in decoded]
    assert not leaked, leaked
    nb = read(student_dir / instructor.name)
    assert "widgets" not in nb.metadata
    for cell in nb.cells:
        assert not {"solution", "hide-cell", "hide-input"} & set(cell.metadata.get("tags", []))
        assert "attachments" not in cell or cell.cell_type == "markdown"
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_solution_outputs_are_really_in_the_instructor_notebook():
    # the leak test above is only meaningful if the instructor edition has outputs to leak
    nb = read(FIXTURE)
    assert any(
        "the total is 14" in "".join(o.get("text", ""))
        for c in nb.cells
        for o in c.get("outputs", [])
    )
    pictures = [
        o
        for c in read(NB00).cells
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert pictures and base64.b64decode(pictures[0]["data"]["image/png"])[:4] == b"\x89PNG"


# --- grading ---------------------------------------------------------------------------------


def points(scores) -> dict[int, float]:
    return {s.exercise.number: s.score for s in scores if s.exercise.points is not None}


def test_grading_the_fixture(student_dir, tmp_path, capsys):
    blank = student_dir / FIXTURE.name
    scores, error = edition.score_notebook(FIXTURE, instructor=FIXTURE)
    assert not error and points(scores) == {1: 2, 2: 1, 4: 1}

    scores, error = edition.score_notebook(blank, instructor=FIXTURE)
    assert not error and points(scores) == {1: 0, 2: 0, 4: 0}

    wrong_mean = "# Solution 2\ndef mean_of(values):\n    return sum(values) / (len(values) - 1)"
    planted = tmp_path / FIXTURE.name
    nbformat.write(fill_in(read(blank), read(FIXTURE), {2: wrong_mean}), planted)
    assert edition.grade_notebook(planted, instructor=FIXTURE) == 0
    out = capsys.readouterr().out
    assert "exercise 2: 0/1   failed: visible check 1, hidden check 1" in out
    assert "exercise 3: ungraded" in out
    assert out.strip().splitlines()[-1] == "score: 3/4"


def test_hidden_checks_catch_an_answer_tailored_to_the_visible_one(student_dir, tmp_path):
    # mean_of passes the visible check mean_of([2, 4]) == 3 by returning 3 always
    tailored = "# Solution 2\ndef mean_of(values):\n    return 3.0"
    planted = tmp_path / FIXTURE.name
    nbformat.write(fill_in(read(student_dir / FIXTURE.name), read(FIXTURE), {2: tailored}), planted)
    scores, _ = edition.score_notebook(planted, instructor=FIXTURE)
    assert points(scores) == {1: 2, 2: 0, 4: 1}
    failed = next(s.failed for s in scores if s.exercise.number == 2)
    assert failed == ["hidden check 1"]


def test_grading_notebook_00(student_dir, capsys):
    exercises = edition.parse_exercises(read(NB00))
    graded = {e.number: e.points for e in exercises if e.points is not None}
    assert len(graded) >= 3
    assert edition.grade_notebook(NB00) == 0
    full = capsys.readouterr().out.strip().splitlines()
    assert full[-1] == f"score: {sum(graded.values()):g}/{sum(graded.values()):g}", full

    assert edition.grade_notebook(student_dir / NB00.name) == 0
    blank = capsys.readouterr().out.strip().splitlines()
    assert blank[-1] == f"score: 0/{sum(graded.values()):g}", blank


def test_grading_a_notebook_without_an_instructor_edition_fails_clearly(tmp_path, capsys):
    stray = tmp_path / "99_unknown.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), stray)
    assert edition.grade_notebook(stray) == 1
    assert "no instructor notebook" in capsys.readouterr().err


# --- glossary and citations ------------------------------------------------------------------


def heading_anchors(markdown: str) -> set[str]:
    return {m[1].replace(" ", "-") for m in re.finditer(r"^#{1,6} (.+?)\s*$", markdown, re.M)}


def links(target: str) -> list[tuple[str, str]]:
    """(notebook, anchor) for every Markdown link to ``target#anchor`` in the notebooks."""
    found = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for cell in read(path).cells:
            if cell.cell_type == "markdown":
                found += [
                    (path.name, a)
                    for a in re.findall(rf"\]\({re.escape(target)}#([^)\s]+)\)", cell.source)
                ]
    return found


def test_glossary_headings_are_anchors_everywhere_and_links_resolve():
    text = (NOTEBOOKS / "glossary.md").read_text(encoding="utf-8")
    terms = re.findall(r"^### (.+?)\s*$", text, re.M)
    assert len(terms) >= 30
    bad = [t for t in terms if not re.fullmatch(r"[a-z0-9]+( [a-z0-9]+)*", t)]
    assert not bad, f"glossary headings must be lowercase words (one anchor everywhere): {bad}"
    assert terms == sorted(terms), "glossary terms in alphabetical order"
    anchors = heading_anchors(text)
    used = links("glossary.md")
    assert used, "the notebooks link the glossary"
    assert not [u for u in used if u[1] not in anchors]


def test_references_md_is_generated_from_the_bib_and_citations_resolve():
    bib = NOTEBOOKS / "references.bib"
    assert (NOTEBOOKS / "references.md").read_text(encoding="utf-8") == edition.references_markdown(
        bib
    ), "references.md is stale: run python scripts/course.py references"
    keys = set(re.findall(r"^@\w+\{(\w+),", bib.read_text(encoding="utf-8"), re.M))
    assert all(re.fullmatch(r"[a-z]+\d{4}[a-z]?", k) for k in keys), keys
    used = links("references.md")
    assert used, "the notebooks cite references.md"
    assert not [u for u in used if u[1] not in keys]
