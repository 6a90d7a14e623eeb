"""Classroom builds: the student copy has no solutions, the solution copy passes every check, a reset
restores a stub, and a learner's work never touches the tracked sources."""

import contextlib
import hashlib
import io

import nbformat
import pytest

from course_lib import classroom
from course_lib.classroom import EXERCISE, SOLUTION, build, exercises, reset, solution_version, student_version

SOURCES = classroom.sources()
WITH_EXERCISES = [s for s in SOURCES if exercises(nbformat.read(s, as_version=4))]


def read(path):
    return nbformat.read(path, as_version=4)


def tagged(nb, tag):
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def digest(paths):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_every_chapter_with_exercises_is_tagged():
    assert len(WITH_EXERCISES) >= 6  # chapters 1-6 each have at least one exercise
    for source in WITH_EXERCISES:
        nb = read(source)
        stubs, solutions = tagged(nb, EXERCISE), [c for c in tagged(nb, SOLUTION) if c.cell_type == "code"]
        assert stubs and len(solutions) == len(stubs), source.name
        for stub in stubs:
            assert "raise NotImplementedError" in stub.source and "check_" in stub.source, source.name
        for solution in solutions:
            assert "NotImplementedError" not in solution.source and "assert check_" in solution.source, source.name


@pytest.mark.parametrize("source", WITH_EXERCISES, ids=lambda p: p.stem)
def test_student_version_has_the_stubs_and_no_solution_code(source):
    nb = read(source)
    student = student_version(nb)
    text = "\n".join(c.source for c in student.cells)
    assert not tagged(student, SOLUTION)
    stub_lines = {line.strip() for c in tagged(nb, EXERCISE) for line in c.source.splitlines()}
    student_lines = {line.strip() for line in text.splitlines()}
    for solution in tagged(nb, SOLUTION):
        if solution.cell_type == "code":
            answer = {line.strip() for line in solution.source.splitlines() if len(line.strip()) > 12} - stub_lines
            assert answer and not answer & student_lines, f"solution code of {source.name} in the student build"
    assert [c.source for c in tagged(student, EXERCISE)] == [c.source for c in tagged(nb, EXERCISE)]
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")
    assert "jupytext" not in student.metadata  # a plain notebook, not paired with a .py
    assert len(student.cells) == len(nb.cells) - len(tagged(nb, SOLUTION))


@pytest.mark.parametrize("source", WITH_EXERCISES, ids=lambda p: p.stem)
def test_solution_build_passes_every_check(source):
    """The imports cell, then every solution cell in order: each ends with ``assert check_...(...)``."""
    nb = solution_version(read(source))
    solutions = [c for c in tagged(nb, SOLUTION) if c.cell_type == "code"]
    assert all(not c.metadata.get("jupyter", {}).get("source_hidden") for c in solutions)  # shown, not collapsed
    namespace, printed = {}, io.StringIO()
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    with contextlib.redirect_stdout(printed):
        exec(compile(first_code.source, f"{source.name}: imports", "exec"), namespace)
        for cell in solutions:
            exec(compile(cell.source, f"{source.name}: solution", "exec"), namespace)
    assert printed.getvalue().count("Correct!") >= len(solutions)
    assert "Not yet" not in printed.getvalue()


def test_build_writes_every_chapter_and_keeps_a_learners_copy(tmp_path):
    before = digest(SOURCES)
    done = build("student", tmp_path)
    assert [p.name for p in done["written"]] == [s.name for s in SOURCES] and not done["kept"]
    assert 'formats = "ipynb"' in (tmp_path / "jupytext.toml").read_text()  # no .py pairing in the copies
    copy = tmp_path / WITH_EXERCISES[0].name
    nb = read(copy)
    stub = tagged(nb, EXERCISE)[0]
    stub.source = stub.source.replace("raise NotImplementedError", "return 42")  # the learner's attempt
    nbformat.write(nb, copy)
    again = build("student", tmp_path)
    assert copy in again["kept"] and "return 42" in read(copy).cells[nb.cells.index(stub)].source
    assert digest(SOURCES) == before  # the tracked sources are never touched
    build("student", tmp_path, force=True)
    assert "return 42" not in "\n".join(c.source for c in read(copy).cells)
    with pytest.raises(ValueError, match="unknown build"):
        build("teacher", tmp_path)


def test_reset_restores_one_stub_and_keeps_the_other_work(tmp_path):
    source = next(s for s in WITH_EXERCISES if len(tagged(read(s), EXERCISE)) >= 2)
    build("student", tmp_path, notebooks=[source])
    copy = tmp_path / source.name
    nb = read(copy)
    first, second = tagged(nb, EXERCISE)[:2]
    original = {c.id: c.source for c in (first, second)}
    names = classroom.exercise_names(first)
    for cell in (first, second):
        cell.source += "\n# my attempt"
    other = next(c for c in nb.cells if c.cell_type == "markdown")
    other.source += "\n\nmy note"
    nbformat.write(nb, copy)

    assert reset(copy, names[0]) == [first.id]
    after = {c.id: c for c in read(copy).cells}
    assert after[first.id].source == original[first.id]  # the stub is back
    assert after[second.id].source.endswith("# my attempt")  # the other exercise is kept
    assert after[other.id].source.endswith("my note")
    assert set(reset(copy)) == {c.id for c in tagged(nb, EXERCISE)}  # all of them
    assert read(copy).cells[[c.id for c in read(copy).cells].index(second.id)].source == original[second.id]


def test_reset_explains_bad_requests(tmp_path):
    source = WITH_EXERCISES[0]
    build("student", tmp_path, notebooks=[source])
    copy = tmp_path / source.name
    with pytest.raises(ValueError, match="has no exercise 'nope'; its exercises: .*"):
        reset(copy, "nope")
    nb = read(copy)
    stub = tagged(nb, EXERCISE)[0]
    nb.cells.remove(stub)
    nbformat.write(nb, copy)
    with pytest.raises(ValueError, match="no longer in .*--force"):
        reset(copy, classroom.exercise_names(stub)[0])
    stranger = tmp_path / "99_mine.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), stranger)
    with pytest.raises(FileNotFoundError, match="not one of the course's notebooks"):
        reset(stranger)


def test_command_line_builds_lists_and_resets(tmp_path, capsys):
    source = WITH_EXERCISES[0]
    chapter = source.stem.split("_")[0]
    assert classroom.main(["student", chapter, "--out", str(tmp_path)]) == 0
    assert f"wrote {tmp_path / source.name}" in capsys.readouterr().out
    assert classroom.main(["list", str(tmp_path / source.name)]) == 0
    listed = capsys.readouterr().out
    name = classroom.exercise_names(tagged(read(source), EXERCISE)[0])[0]
    assert name in listed
    assert classroom.main(["reset", str(tmp_path / source.name), "--exercise", name]) == 0
    assert "reset 1 exercise cell" in capsys.readouterr().out
    assert classroom.main(["reset", str(tmp_path / source.name), "--exercise", "nope"]) == 2
    assert "has no exercise 'nope'" in capsys.readouterr().err
