"""The notebook pipeline: each notebooks/NN_name.py is the source of a committed NN_name.ipynb.

The .ipynb must hold the same cells as its .py (regenerate with `make notebooks`) and no outputs.
nbval executes the student build of each .ipynb (``course_lib.classroom``: the solution cells removed; see
the Makefile's test target); tests/test_classroom.py runs the solutions against their checks.
"""

import re
from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def cells(nb) -> list[tuple[str, str, list]]:
    """Each cell's type, source and tags (the classroom builds read the exercise / solution tags)."""
    return [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in nb.cells]


def test_there_are_notebooks():
    assert (NOTEBOOKS / "00_welcome.py") in SOURCES


def test_every_ipynb_has_a_source():
    for ipynb in NOTEBOOKS.glob("*.ipynb"):
        assert ipynb.with_suffix(".py").exists(), f"{ipynb.name} has no jupytext source {ipynb.stem}.py"


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_pair_is_in_sync_and_stripped(source):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `make notebooks`"
    committed = nbformat.read(ipynb, as_version=4)
    assert cells(committed) == cells(jupytext.read(source)), (
        f"{ipynb.name} differs from {source.name}: edit the .py, then run `make notebooks`")
    for c in committed.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, (
                f"{ipynb.name} is committed with outputs: run `make notebooks` (it strips them)")
    assert committed.metadata.kernelspec.name == "course-diffusion"


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_every_notebook_source_is_valid_python(source):
    """A percent-format source is a Python file: a markdown line that lost its "# " breaks it (and jupytext
    then reads the rest of the cell as code)."""
    compile(source.read_text(), str(source), "exec")


def _tagged(nb, tag: str) -> list[str]:
    return [c.source for c in nb.cells if tag in c.metadata.get("tags", [])]


def _items(markdown: str) -> list[str]:
    """The items of a markdown list (numbered or bulleted), each joined onto one line."""
    items: list[str] = []
    for line in markdown.splitlines():
        if re.match(r"^(\d+\.|\*) ", line):
            items.append(line.split(" ", 1)[1].strip())
        elif items and line.startswith("  ") and line.strip():
            items[-1] += " " + line.strip()
    return items


@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_every_notebook_opens_with_objectives_prerequisites_and_measured_times(source):
    """After the title: what the learner can do afterwards (the same list as the instructor guide's), what the
    chapter assumes, and a table of the seconds each section ran in fast and in full mode."""
    nb = jupytext.read(source)
    (objectives,) = _tagged(nb, "objectives")
    assert objectives.startswith("**After this chapter you can**") and "**Before it you need**" in objectives
    ours = _items(objectives.split("**Before it you need**")[0])
    guide = (NOTEBOOKS.parent / "docs" / "instructor_guide.md").read_text()
    chapter = guide.split(f"(`{source.stem}`)", 1)[1]
    theirs = _items(chapter.split("**Objectives.** Learners can", 1)[1].split("**Prepare.**", 1)[0])
    assert ours and ours == theirs, "the notebook's objectives and the instructor guide's must be the same list"
    (times,) = _tagged(nb, "section-times")
    assert "| section | fast mode (`COURSE_FAST=1`) | full mode |" in times and "**the whole notebook**" in times
    headings = re.findall(r"^## (.+)$", "\n".join(c.source for c in nb.cells if c.cell_type == "markdown"), re.M)
    for heading in headings:
        if not heading.lower().startswith(("summary", "what next")):
            assert f"| {heading} |" in times, f"no time measured for section {heading!r}: rerun the site builds"
