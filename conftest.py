"""How one test session runs the unit tests (``tests/``) and the notebooks (``build/student/*.ipynb``, nbval).

Two rules, for ``make test`` (``pytest tests build/student --nbval-lax -n 2 --dist loadgroup``):

- **Each chapter runs once.** ``tests/test_browser.py`` runs the learner's copies of the chapters that hold
  explorers in JupyterLab, in Chromium, and fails on any error a cell shows, as nbval would; when its test for a
  chapter is in the session, that chapter's nbval cells are deselected (the summary counts them). Without a
  browser those tests skip at collection, and nbval runs every chapter as before.
- **A file stays on one worker.** Every test gets an ``xdist_group`` named after its file unless it names its own:
  a notebook's cells share one kernel, and a module's fixtures are built once. The browser's chapter tests name
  their groups (two), so that their chapters spread over both workers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

BROWSER_TEST = "test_the_chapters_explorers_are_live_and_redraw"


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what they will
def pytest_collection_modifyitems(config, items):
    in_browser = {m.group(1) for item in items if (m := re.fullmatch(rf"{BROWSER_TEST}\[(\w+)\]", item.name))}
    run_twice = [item for item in items if item.path.suffix == ".ipynb" and item.path.stem in in_browser]
    if run_twice:
        config.hook.pytest_deselected(items=run_twice)
        items[:] = [item for item in items if item.path.stem not in in_browser or item.path.suffix != ".ipynb"]
    root = Path(config.rootpath)
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            try:
                name = str(item.path.relative_to(root))
            except ValueError:
                name = str(item.path)
            item.add_marker(pytest.mark.xdist_group(name))
