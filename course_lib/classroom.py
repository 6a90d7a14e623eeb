"""Classroom copies of the notebooks: one source, two builds, and a reset for one exercise.

The chapters' sources (``notebooks/NN_name.py``, paired with ``NN_name.ipynb``) hold each exercise as
cells with tags: the stub the learner completes (``exercise``: the function with ``raise
NotImplementedError`` and the call of its check) and the solution (``solution``: the "A solution"
note and the hidden cell with the worked answer and ``assert check_...``). From them:

* the **student build** drops the ``solution`` cells and every output: the checks then say "Not yet"
  until the learner's code is right, and the cells after an exercise that use the learner's function
  fall back on the library's until then (``course_lib.exercises.solved``), so the notebook runs from
  top to bottom;
* the **solution build** keeps every cell and shows the solutions (no longer collapsed).

Each build goes to its own git-ignored folder (``work/`` and ``solutions/``); a notebook already there
is never overwritten unless asked (``--force``), so a learner's work survives a rebuild, and the
tracked sources are never the files a learner edits. :func:`reset` puts one exercise's stub (or every
stub) back into a learner's copy and leaves the other cells as they are.

    python -m course_lib.classroom student              # work/NN_name.ipynb for every chapter
    python -m course_lib.classroom solutions            # solutions/NN_name.ipynb
    python -m course_lib.classroom list work/01_ddpm_unet.ipynb
    python -m course_lib.classroom reset work/01_ddpm_unet.ipynb --exercise q_sample   # or --all
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

from .checkpoint import atomic_write
from .config import REPO_ROOT

EXERCISE, SOLUTION = "exercise", "solution"
SOURCES = REPO_ROOT / "notebooks"
FOLDERS = {"student": REPO_ROOT / "work", "solutions": REPO_ROOT / "solutions"}

__all__ = ["EXERCISE", "SOLUTION", "sources", "select", "student_version", "solution_version", "exercises", "build", "reset"]


def sources(folder: Path = SOURCES) -> list[Path]:
    """The chapters' paired notebooks, in order: ``notebooks/NN_name.ipynb``."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def select(chapters: list[str]) -> list[Path]:
    """The chapters' sources named by number or name (``01``, ``01_ddpm_unet``); all of them for none.
    An unknown name raises a ValueError that lists the chapters."""
    chosen = [s for s in sources() if not chapters or any(s.stem == c or s.stem.startswith(f"{c}_") for c in chapters)]
    if not chosen:
        raise ValueError(f"no chapter matches {chapters}; chapters: {', '.join(s.stem for s in sources())}")
    return chosen


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _clean_cell(cell):
    """A copy of the cell without outputs or execution count."""
    cell = copy.deepcopy(cell)
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None
    return cell


def _clean(nb):
    """A copy without outputs, execution counts or jupytext pairing (a classroom copy is a plain notebook)."""
    nb = copy.deepcopy(nb)
    nb.cells = [_clean_cell(cell) for cell in nb.cells]
    nb.metadata.pop("jupytext", None)
    return nb


def student_version(nb):
    """The notebook without its ``solution`` cells and without outputs."""
    nb = _clean(nb)
    nb.cells = [cell for cell in nb.cells if SOLUTION not in _tags(cell)]
    return nb


def solution_version(nb):
    """The notebook with every cell, the solutions shown (not collapsed), without outputs."""
    nb = _clean(nb)
    for cell in nb.cells:
        if SOLUTION in _tags(cell) and "jupyter" in cell.metadata:
            cell.metadata.jupyter.pop("source_hidden", None)
            if not cell.metadata.jupyter:
                del cell.metadata["jupyter"]
    return nb


def exercise_names(cell) -> list[str]:
    """The names of an exercise cell: the checks it calls without ``check_`` (``check_q_sample(...)``
    -> ``q_sample``), and the functions it defines (``my_q_sample``)."""
    return re.findall(r"\bcheck_(\w+)\(", cell.source) + re.findall(r"^def (\w+)\(", cell.source, re.M)


def exercises(nb) -> dict[str, list[str]]:
    """``{cell id: names}`` of the notebook's exercise cells, in order."""
    return {cell.id: exercise_names(cell) for cell in nb.cells if EXERCISE in _tags(cell)}


def _write(nb, path: Path) -> None:
    """Write atomically (``checkpoint.atomic_write``: a temporary file, then a rename), folders made as needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, nbformat.writes(nb).encode("utf-8"))


def build(kind: str, out: Path | None = None, *, force: bool = False,
          notebooks: list[Path] | None = None) -> dict[str, list[Path]]:
    """Write the ``student`` or ``solutions`` build of every chapter to ``out`` (default ``work/`` or
    ``solutions/``). A notebook that exists there already is kept (a learner's work) unless ``force``.
    Returns ``{"written": [...], "kept": [...]}``."""
    if kind not in FOLDERS:
        raise ValueError(f"unknown build {kind!r}; choose one of {', '.join(FOLDERS)}")
    out = Path(out) if out is not None else FOLDERS[kind]
    version = student_version if kind == "student" else solution_version
    done: dict[str, list[Path]] = {"written": [], "kept": []}
    for source in notebooks if notebooks is not None else sources():
        target = out / source.name
        if target.exists() and not force:
            done["kept"].append(target)
            continue
        _write(version(nbformat.read(source, as_version=4)), target)
        done["written"].append(target)
    config = out / "jupytext.toml"  # the copies are plain notebooks: no .py written next to them on save
    if not config.exists():
        config.write_text("# classroom copies are not paired with .py files (see course_lib.classroom)\n"
                          'formats = "ipynb"\n')
    return done


def reset(path: Path, exercise: str | None = None, *, source: Path | None = None) -> list[str]:
    """Put the stub of ``exercise`` (a check's or a function's name, e.g. ``q_sample``), or of every
    exercise when ``exercise`` is None, back into the learner's notebook ``path``; other cells are kept.
    The stub comes from the chapter's source (``notebooks/<same name>``); cells are matched by cell id.
    Returns the ids of the cells reset."""
    path = Path(path)
    source = Path(source) if source is not None else SOURCES / path.name
    if not source.exists():
        raise FileNotFoundError(f"{path.name} is not one of the course's notebooks (no {source}); reset works on "
                                "the copies that `python -m course_lib.classroom student` made")
    stubs = {cell.id: cell for cell in nbformat.read(source, as_version=4).cells if EXERCISE in _tags(cell)}
    wanted = [cid for cid, cell in stubs.items() if exercise is None or exercise in exercise_names(cell)]
    if not wanted:
        known = sorted({name for cell in stubs.values() for name in exercise_names(cell)})
        raise ValueError(f"{path.name} has no exercise {exercise!r}; its exercises: {', '.join(known) or 'none'}")
    nb = nbformat.read(path, as_version=4)
    index = {cell.id: i for i, cell in enumerate(nb.cells)}
    missing = [cid for cid in wanted if cid not in index]
    if missing:
        raise ValueError(f"the exercise cell(s) {missing} are no longer in {path} (deleted?): rebuild that "
                         f"notebook with `python -m course_lib.classroom student --force {path.stem}` (this "
                         "replaces the whole notebook)")
    for cid in wanted:
        nb.cells[index[cid]] = _clean_cell(stubs[cid])
    _write(nb, path)
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.classroom", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for kind in FOLDERS:
        p = sub.add_parser(kind, help=f"write the {kind} build (default folder {FOLDERS[kind].name}/)")
        p.add_argument("chapters", nargs="*", help="notebook names or numbers (default: all), e.g. 01 or 01_ddpm_unet")
        p.add_argument("--out", type=Path, help=f"folder to write to (default {FOLDERS[kind].name}/)")
        p.add_argument("--force", action="store_true", help="overwrite notebooks that exist there (a learner's "
                                                            "edits in them are lost)")
    p = sub.add_parser("list", help="the exercises of a notebook")
    p.add_argument("notebook", type=Path)
    p = sub.add_parser("reset", help="put an exercise's stub back into a learner's notebook")
    p.add_argument("notebook", type=Path)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--exercise", help="the exercise's name (see `list`), e.g. q_sample")
    which.add_argument("--all", action="store_true", help="every exercise of the notebook")
    args = parser.parse_args(argv)

    if args.command in FOLDERS:
        try:
            chosen = select(args.chapters)
        except ValueError as err:
            parser.error(str(err))
        done = build(args.command, args.out, force=args.force, notebooks=chosen)
        for path in done["written"]:
            print(f"wrote {path}")
        for path in done["kept"]:
            print(f"kept {path} (exists: your work; --force overwrites it)")
        return 0
    if not args.notebook.exists():
        parser.error(f"{args.notebook} does not exist")
    if args.command == "list":
        for cid, names in exercises(nbformat.read(args.notebook, as_version=4)).items():
            print(f"{', '.join(names)}  (cell {cid})")
        return 0
    try:
        reset_ids = reset(args.notebook, None if args.all else args.exercise)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"reset {len(reset_ids)} exercise cell(s) of {args.notebook} to the stub")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
