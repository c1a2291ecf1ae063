"""Instructor tooling for the course, behind one entry point.

    python scripts/course.py execute [NOTEBOOK ...]   re-execute notebooks in place (all by default)
    python scripts/course.py timings [NOTEBOOK ...]   time each notebook under nbval; update README
    python scripts/course.py student OUTDIR           build the student edition
    python scripts/course.py grade NOTEBOOK           grade one filled-in student notebook
    python scripts/course.py references               write notebooks/references.md from the .bib
    python scripts/course.py book OUTDIR              build the course website

Each subcommand lives in a module of its own next to this file; this one only dispatches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="course.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("execute", help="re-execute notebooks in place, as JupyterLab stores them")
    p.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell")

    p = sub.add_parser("timings", help="time each notebook under nbval (wall time, peak memory)")
    p.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")

    p = sub.add_parser("student", help="build the student edition (solutions removed)")
    p.add_argument("outdir", type=Path)

    p = sub.add_parser("grade", help="grade one filled-in student notebook; prints score: X/Y")
    p.add_argument("notebook", type=Path)

    sub.add_parser("references", help="write notebooks/references.md from notebooks/references.bib")

    p = sub.add_parser("book", help="build the course website from the stored notebooks")
    p.add_argument("outdir", type=Path)

    args = parser.parse_args(argv)
    if args.command == "execute":
        from notebook_tools import execute_notebooks

        return execute_notebooks(args.notebooks, timeout=args.timeout)
    if args.command == "timings":
        from notebook_tools import time_notebooks

        return time_notebooks(args.notebooks, update_readme=not args.no_readme)
    if args.command == "student":
        from edition import build_student_edition

        return build_student_edition(args.outdir)
    if args.command == "grade":
        from edition import grade_notebook

        return grade_notebook(args.notebook)
    if args.command == "references":
        from edition import write_references

        return write_references()
    if args.command == "book":
        from book import build_book

        return build_book(args.outdir)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
