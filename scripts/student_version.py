#!/usr/bin/env python
"""Write the chapter notebooks without the exercises' solutions, for handing out to students.

    python scripts/student_version.py                    # every chapter into student/
    python scripts/student_version.py --out handout notebooks/02_mixed_sparsity.ipynb

Every cell from a ``{solution-start}`` to its ``{solution-end}`` (the solution's text and code) is
replaced by one empty code cell for the student's answer; all outputs are cleared. The exercises,
the chapters' own cells and their metadata stay as they are, so the notebooks open in Colab and run
with papermill like the originals.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
ANSWER = "# Your answer here\n"


class SolutionMarkersError(ValueError):
    """A notebook whose solution-start and solution-end markers do not pair up."""


def strip_solutions(nb: nbformat.NotebookNode, name: str = "notebook", *, handout: bool = True) -> int:
    """Remove every solution from ``nb`` in place; returns how many.

    ``handout``: clear all outputs and leave an empty code cell for each answer (the notebooks for
    students); without it the executed outputs stay and nothing is added (the student book's build).
    """
    cells, inside, removed = [], False, 0
    for i, cell in enumerate(nb.cells):
        text = cell.source if cell.cell_type == "markdown" else ""
        starts, ends = "{solution-start}" in text, "{solution-end}" in text
        if starts:
            if inside:
                raise SolutionMarkersError(f"{name}: cell {i} starts a solution inside another one")
            inside = True
        if not inside:
            if cell.cell_type == "code" and handout:
                cell.outputs, cell.execution_count = [], None
            cells.append(cell)
        if ends:
            if not inside:
                raise SolutionMarkersError(f"{name}: cell {i} ends a solution that never started")
            inside = False
            removed += 1
            if handout:
                cells.append(nbformat.v4.new_code_cell(ANSWER))
    if inside:
        raise SolutionMarkersError(f"{name}: the last solution has no solution-end")
    nb.cells = cells
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to convert (default: every chapter in notebooks/)")
    parser.add_argument("--out", type=Path, default=Path("student"), help="folder for the student notebooks")
    args = parser.parse_args(argv)

    sources = args.notebooks or sorted((ROOT / "notebooks").glob("0*.ipynb"))
    if not sources:
        print("no notebooks to convert", file=sys.stderr)
        return 2
    out = args.out.resolve()
    if any(out == src.resolve().parent for src in sources):
        print(f"refusing to write into {args.out}: it holds the source notebooks; choose another --out",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for source in sources:
        nb = nbformat.read(source, as_version=4)
        try:
            removed = strip_solutions(nb, source.name)
        except SolutionMarkersError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        nbformat.write(nb, out / source.name)
        print(f"{source.name}: {removed} solutions removed -> {args.out / source.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
