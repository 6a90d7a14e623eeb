"""The course site's builder (tools/build_site.py): section times, static widget pictures, pages, the index."""

import importlib.util
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_site", ROOT / "tools" / "build_site.py")
site = importlib.util.module_from_spec(spec)
spec.loader.exec_module(site)

PNG = "iVBORw0KGgo="  # the first bytes of a PNG, base64: enough for the page
WIDGET = {"application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0}}


def timed(source: str, seconds: float, **cell):
    """A code cell as nbclient leaves it: its start and end time in the metadata."""
    c = new_code_cell(source, **cell)
    c.metadata["execution"] = {"iopub.execute_input": "2026-12-03T10:00:00.000000Z",
                               "shell.execute_reply": f"2026-12-03T10:{int(seconds // 60):02d}:{seconds % 60:09.6f}Z"}
    return c


def executed(mode: str, scale: float = 1.0, error: str | None = None):
    nb = new_notebook(cells=[
        new_markdown_cell("# 9 · A chapter\n\nIntro."),
        new_markdown_cell("**After this chapter you can**\n\n1. do $x_t$ things;\n\n**Before it you need**\n\n* tea",
                          metadata={"tags": ["objectives"]}),
        timed("import torch", 2.0 * scale),
        new_markdown_cell("## 1. First"),
        timed("a = 1", 1.5 * scale),
        timed("b = 2", 10.0 * scale),
        new_markdown_cell("## 2. Second"),
        timed("def f(): pass", 0.2 * scale, metadata={"tags": ["solution"]}),
        new_markdown_cell("## Summary"),
    ])
    nb.cells[5].outputs = [new_output("display_data", data={**WIDGET, "image/png": PNG,
                                                            "text/plain": "ScheduleExplorer (t = 3)"})]
    nb.metadata["course_run"] = {"mode": mode, "cpu": "Test CPU", "cpu_count": 2, "python": "3.11",
                                 "date": "2026-12-03 10:00", "seconds": 14.0 * scale, "error": error}
    return nb


def test_section_times_add_up_the_cells_under_each_heading():
    times = site.section_times(executed("fast"))
    assert times == [("setup (imports, data)", pytest.approx(2.0)), ("1. First", pytest.approx(11.5)),
                     ("2. Second", pytest.approx(0.2))]  # an empty Summary is left out


def test_times_table_has_both_modes_and_the_total():
    table = site.times_markdown(executed("fast"), executed("full", scale=10))
    assert "| 1. First | 12 s | 1 min 55 s |" in table and "| 2. Second | < 1 s | 2 s |" in table
    assert "| **the whole notebook** | **14 s** | **2 min 17 s** |" in table
    assert "2 CPU cores (Test CPU), 2026-12-03" in table and "The longest cell in full mode takes 1 min 40 s." in table


def test_static_outputs_keep_the_picture_and_report_a_widget_without_one():
    nb = executed("fast")
    nb.metadata["widgets"] = {"state": {}}
    assert site.static_outputs(nb) == [] and "widgets" not in nb.metadata
    data = nb.cells[5].outputs[0]["data"]
    assert set(data) == {"image/png", "text/plain"}
    bare = executed("fast")
    del bare.cells[5].outputs[0]["data"]["image/png"]
    (problem,) = site.static_outputs(bare)
    assert "a widget without a static picture" in problem and "ScheduleExplorer" in problem


def test_a_finished_progress_bar_shows_its_last_state():
    """tqdm.auto's bar is a widget (HBox: HTML, FloatProgress, HTML) whose text/plain is its first state, '0%';
    the page shows the state nbclient saved at the end instead."""
    nb = executed("fast")
    nb.cells[4].outputs = [new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "bar", "version_major": 2, "version_minor": 0},
        "text/plain": "training:   0%|          | 0/60"})]
    model = {"bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]}},
             "l": {"model_name": "HTMLModel", "state": {"value": "training:\u2007100%"}},
             "p": {"model_name": "FloatProgressModel", "state": {"value": 60.0, "max": 60.0}},
             "r": {"model_name": "HTMLModel", "state": {"value": "\u200760/60\u2007[00:16&lt;00:00]"}}}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": model}}
    assert site.static_outputs(nb) == []
    data = nb.cells[4].outputs[0]["data"]
    assert data["text/plain"] == "training: 100% 60/60 [00:16<00:00]"
    assert "<progress value='60.0' max='60.0'></progress> 60/60 [00:16&lt;00:00]" in data["text/html"]


def test_chapter_page_and_index(tmp_path, monkeypatch):
    monkeypatch.setattr(site, "EXECUTED", tmp_path / "executed")
    sources = [tmp_path / "09_a.ipynb", tmp_path / "10_b.ipynb"]
    for source, error in zip(sources, [None, "ValueError: boom"]):
        (tmp_path / "executed" / "fast").mkdir(parents=True, exist_ok=True)
        nbformat.write(executed("fast", error=error), tmp_path / "executed" / "fast" / source.name)
    problems = site.render(sources, "fast", tmp_path / "site")
    assert problems == ["10_b: the run stopped early: ValueError: boom"]
    page = (tmp_path / "site" / "09_a.html").read_text()
    assert "<summary>Show the solution</summary>" in page and "def" in page.split("Show the solution")[1][:2000]
    assert "fast mode" in page and "next: <a href=\"10_b.html\">9 · A chapter</a>" in page
    assert 'src="data:image/png;base64,' + PNG in page  # the picture, not the widget
    assert "widget-view" not in page and 'alt="ScheduleExplorer (t = 3)"' in page
    index = (tmp_path / "site" / "index.html").read_text()
    assert "09_a.html" in index and "do <span class=\"math" not in index and "do $x_t$ things" in index
    assert "stopped early: ValueError: boom" in index
    assert (tmp_path / "site" / "glossary.html").exists() and (tmp_path / "site" / "instructor_guide.html").exists()
    assert "instructor_guide.html" in index


def test_update_times_rewrites_the_tagged_cell_of_the_source(tmp_path, monkeypatch):
    monkeypatch.setattr(site, "EXECUTED", tmp_path / "executed")
    for name in ("00_welcome.py", "00_welcome.ipynb"):
        shutil.copy(ROOT / "notebooks" / name, tmp_path / name)
    source = tmp_path / "00_welcome.ipynb"
    with pytest.raises(FileNotFoundError, match="make site"):
        site.update_times([source])
    for mode, scale in (("fast", 1), ("full", 3)):
        (tmp_path / "executed" / mode).mkdir(parents=True)
        nbformat.write(executed(mode, scale), tmp_path / "executed" / mode / source.name)
    site.update_times([source])
    text = (tmp_path / "00_welcome.py").read_text()
    assert '# %% [markdown] tags=["section-times"]\n# **Time.** Measured' in text
    assert "# | 1. First | 12 s | 34 s |" in text
    nb = nbformat.read(source, as_version=4)
    (cell,) = [c for c in nb.cells if "section-times" in c.metadata.get("tags", [])]
    assert "| 1. First | 12 s | 34 s |" in cell.source  # the .ipynb follows its source
    assert text.count("# %%") == (ROOT / "notebooks" / "00_welcome.py").read_text().count("# %%")


@pytest.mark.slow
def test_execute_records_times_and_where_it_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(site, "EXECUTED", tmp_path / "executed")
    source = tmp_path / "01_tiny.ipynb"
    nb = new_notebook(cells=[new_markdown_cell("# Tiny"), new_code_cell("import os\nprint(os.environ.get('COURSE_FAST'))"),
                             new_code_cell("raise ValueError('stop here')"), new_code_cell("print('never')")])
    nbformat.write(nb, source)
    run = site.execute(source, "fast", timeout=60)
    saved = nbformat.read(tmp_path / "executed" / "fast" / source.name, as_version=4)
    assert saved.cells[1].outputs[0]["text"].strip() == "1"  # fast mode reached the kernel
    assert "ValueError: stop here" in saved.metadata["course_run"]["error"] and run.metadata["course_run"]["mode"] == "fast"
    assert site._seconds(saved.cells[1]) > 0 and saved.cells[3].outputs == []
    full = site.execute(source, "full", timeout=60)
    assert full.cells[1].outputs[0]["text"].strip() == "None"  # full mode: COURSE_FAST unset
