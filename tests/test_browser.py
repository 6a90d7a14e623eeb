"""The explorers in a real browser: JupyterLab and headless Chromium, driven by Playwright.

The other widget tests set a control in Python and check what was drawn; they would pass with a broken
widget frontend (a missing JupyterLab extension, an ipywidgets/JupyterLab mismatch). Here a JupyterLab
server from this environment opens notebooks in Chromium, runs them (fast mode), and the page is checked
as a learner would look at it: no cell error, every explorer drawn as a live widget (not "Error displaying
widget", not the static picture or the text that stand in for it where widgets cannot run), and moving
a slider or choosing a menu entry changes the picture (its pixels, before and after).

Covered: a learner's copy of the welcome notebook (``course_lib.classroom``'s student build: its class
menu; saved from the browser, it writes no paired ``.py`` and leaves the tracked sources alone), and the real
chapters below, which hold every other family of explorers (schedule, guidance, attention map, trajectory,
joint attention). A last test starts JupyterLab with the widget manager extension disabled and checks that the
same checks then fail. MathJax is off in these JupyterLabs (the equations show as their TeX): typesetting is not
what the tests check, and it cost a third of Chromium's time. The notebooks and a screenshot of
each explorer before and after its control moved go to ``build/browser/`` (git-ignored).

The real chapters: the student builds of the chapters that hold explorers (1, 3, 4, 5 and 6) run in the same
JupyterLab, in fast mode with the shipped checkpoints, each opened once. Every explorer must be drawn live, and
each of a few moves of its controls (:data:`CHAPTER_MOVES`) must bring a new picture; the time from the control's
event in the page to the new picture decoded (the kernel's redraw, the comm and the image) is measured for each
move. The median per explorer is reported as a warning (``ExplorerLatency``, so that it shows in the summary of
``make test``, which runs the tests in worker processes) and written, as results lines of kind
``explorer_latency`` (``course_lib.results``), to ``build/browser/latency/<chapter>.json``::

    [{"date": "2026-12-07", "kind": "explorer_latency",
      "settings": {"chapter": "05_rectified_flow", "explorer": "TrajectoryExplorer", "index": 0, "mode": "fast"},
      "metrics": {"median_seconds": 0.3, "target_seconds": 1.0, "moves": [{"control": "t", "seconds": 0.28}, ...]},
      "hardware": "CPU AMD EPYC, 2 cores, kernel threads torch's choice", "load_average": [1m, 5m, 15m]}, ...]

(one line per explorer; ``target_seconds`` is the issue's aim, 1 s, for the trajectory and joint-attention
explorers, else null). ``python -m course_lib.results --add build/browser/latency/*.json`` puts them on the
results page. The test fails if a move brings no picture within 60 s, not if a median misses its aim:
times depend on the machine's load, which the file records.

The browser is Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it when it is
missing) or the one ``COURSE_CHROMIUM`` names; Playwright's own browser download is not used. Without a
browser or Playwright the tests skip and say why.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import nbformat
import pytest
from conftest import free_port
from nbformat.v4 import new_code_cell

from course_lib.classroom import build
from course_lib.config import cpu_name

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "browser"
DONE = "ALL CELLS RAN"  # printed by the last cell of every notebook the tests open
TRACEBACK = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']:has-text('Traceback')"
WIDGET_MANAGER = "@jupyter-widgets/jupyterlab-manager"
# switched off in every JupyterLab these tests start: the equations of the Markdown cells are not what they check,
# and typesetting them cost Chromium a third of its CPU time (chapter 4 alone: 20 -> 13 CPU-seconds)
MATHJAX = "@jupyterlab/mathjax-extension"

pytestmark = pytest.mark.slow


def _chromium() -> str | None:
    named = os.environ.get("COURSE_CHROMIUM", "").strip()
    if named:
        return named if Path(named).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _skip_reason() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed: pip install -e '.[dev]' (make setup does)"
    if _chromium() is None:
        return ("no Chromium found: install Debian's package (sudo apt-get install -y chromium; .ci/run does) or set "
                "COURSE_CHROMIUM to a Chromium executable")
    return None


SKIP = _skip_reason()
if SKIP:
    pytest.skip(f"browser tests skipped: {SKIP}", allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402


# --------------------------------------------------------------------------- the notebooks the browser runs

# (explorer class, how to move it): ("slider", None) presses End on the slider's handle (then ArrowLeft
# if End moved nothing); ("menu", label) chooses that entry of the first menu whose options include it
INTERACTIONS = {
    "00_welcome": [("ClassExplorer", ("menu", "horse"))],
}


def _python3(nb):
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(new_code_cell(f"print({DONE!r})"))
    return nb


def write_notebooks(folder: Path) -> None:
    """In ``folder``: the learner's copy of chapter 0 (``course_lib.classroom``'s student build, with the
    build's jupytext.toml)."""
    build("student", folder, notebooks=[ROOT / "notebooks" / "00_welcome.ipynb"])
    welcome = folder / "00_welcome.ipynb"
    nbformat.write(_python3(nbformat.read(welcome, as_version=4)), welcome)


def lab_folder(name: str) -> Path:
    """A fresh folder under build/browser/ (inside the repository, so that its jupytext.toml applies as the
    repository's own does: what a learner's work/ folder gets)."""
    folder = SHOTS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


# --------------------------------------------------------------------------- a JupyterLab server


class Lab:
    """``jupyter lab`` from this environment on a free localhost port, in ``root``, fast mode, with its own
    settings (a notebook starts its kernel without asking) and config folder (``disable`` lists extensions
    to switch off, as `jupyter labextension disable` would; MathJax always is)."""

    def __init__(self, root: Path, disable: tuple[str, ...] = ()):
        disable = (MATHJAX, *disable)
        self.root, self.port, self.token = root, free_port(), secrets.token_hex(16)
        settings = root / ".settings" / "@jupyterlab" / "notebook-extension"
        settings.mkdir(parents=True)
        (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"autoStartDefaultKernel": True}))
        news = root / ".settings" / "@jupyterlab" / "apputils-extension"  # no "get notified about news?" toast
        news.mkdir(parents=True)
        (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                             "checkForUpdates": False}))
        config = root / ".config"
        (config / "labconfig").mkdir(parents=True)
        (config / "labconfig" / "page_config.json").write_text(
            json.dumps({"disabledExtensions": {name: True for name in disable}}))
        env = {**os.environ, "COURSE_FAST": "1", "JUPYTERLAB_SETTINGS_DIR": str(root / ".settings"),
               "JUPYTER_CONFIG_DIR": str(config), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
        self.log = open(root / ".lab.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={self.port}", "--ServerApp.ip=127.0.0.1",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}", "--ServerApp.allow_root=True",
             "--ServerApp.port_retries=0"], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {(root / '.lab.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError("jupyter lab did not answer within 90 s")

    def wait_for_kernel(self, name: str, timeout: float = 60) -> None:
        """Until the server has a session for notebook ``name`` whose kernel is started and idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{self.url}/api/sessions?token={self.token}", timeout=5) as answer:
                sessions = json.load(answer)
            if any(s.get("path") == name and (s.get("kernel") or {}).get("execution_state") == "idle" for s in sessions):
                return
            time.sleep(0.5)
        raise RuntimeError(f"no idle kernel for {name} within {timeout:.0f} s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


# --------------------------------------------------------------------------- what a learner would look at


def run_notebook(browser, lab: Lab, name: str, timeout: float = 240) -> tuple:
    """Open ``name`` in JupyterLab, run all cells, wait for the last one; return (page, problems)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")  # reset: only this notebook open
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    lab.wait_for_kernel(name)  # the toolbar says idle before the kernel exists; the server knows
    started = ".jp-InputPrompt:text-matches('\\[(\\*|\\d+)\\]')"  # a cell queued or run: [*] or [1]
    for _ in range(2):  # a click before the page is connected to the kernel can be lost: once more
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click("li[data-command='runmenu:run-all']")  # Run > Run All Cells
        try:
            page.wait_for_selector(started, timeout=30_000)
            break
        except Exception:  # noqa: BLE001 - nothing started: try again, then let the wait below report it
            continue
    problems = []
    try:
        # the last cell's line, or an error (Run All stops at the first: the last cell would never run)
        page.wait_for_selector(f".jp-OutputArea-output:has-text({DONE!r}), {TRACEBACK}", timeout=timeout * 1000)
    except Exception:  # noqa: BLE001 - a run that never ends is reported with what the page shows
        problems.append(f"{name}: the last cell did not run within {timeout:.0f} s")
    errors = page.locator(TRACEBACK)
    errors = errors.all_inner_texts() + page.locator(".jp-OutputArea-output:has-text('Error displaying widget')"
                                                    ).all_inner_texts()
    problems += [f"{name}: an error in the page: {text.strip()[:300]}" for text in errors]
    return page, problems


def _moved(page, explorer, how) -> None:
    kind, value = how
    if kind == "menu":
        for select in explorer.locator("select").all():
            labels = [text.replace("\xa0", " ").strip() for text in select.locator("option").all_text_contents()]
            if value in labels:  # ipywidgets writes the labels with non-breaking spaces
                select.select_option(index=labels.index(value))
                return
        menus = [select.locator("option").all_text_contents() for select in explorer.locator("select").all()]
        raise AssertionError(f"no menu with the entry {value!r}; the menus: {menus}")
    handle = explorer.locator(".noUi-handle, .slider-handle, [role='slider']").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    before = handle.get_attribute("aria-valuenow")
    handle.press("End")
    if handle.get_attribute("aria-valuenow") == before:
        handle.press("ArrowLeft")


def loaded_picture(page, explorer):
    """The explorer's picture once the browser has decoded it (scrolled into view), or None after 30 s."""
    image = explorer.locator("img").first
    try:
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(),
                               timeout=30_000)
    except Exception:  # noqa: BLE001 - any failure means the same: no picture to look at
        return None
    explorer.scroll_into_view_if_needed()
    return image


def check_explorers(page, name: str, interactions, shots: Path) -> list[str]:
    """Each explorer drawn live, and its picture changed by moving one control; screenshots in ``shots``."""
    problems = []
    fallback = page.locator(".jp-OutputArea-output:has-text('a static picture of its figure')")
    if fallback.count():
        problems.append(f"{name}: {fallback.count()} explorer(s) shown as the static fallback, not as live widgets")
    for cls, how in interactions:
        explorer = page.locator(f".course-{cls}")
        if explorer.count() != 1:
            problems.append(f"{name}: {cls} was not drawn as a widget ({explorer.count()} found)")
            continue
        image = loaded_picture(page, explorer)
        if image is None:
            problems.append(f"{name}: {cls}'s picture did not load")
            continue
        before = image.screenshot()
        explorer.screenshot(path=str(shots / f"{name}-{cls}-before.png"))
        _moved(page, explorer, how)
        deadline, after = time.monotonic() + 60, before
        while after == before and time.monotonic() < deadline:
            page.wait_for_timeout(300)
            after = image.screenshot()
        explorer.screenshot(path=str(shots / f"{name}-{cls}-after.png"))
        if after == before:
            problems.append(f"{name}: moving {cls}'s {how[0]} did not change its picture")
    return problems


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab():
    # one folder per test worker: make test's workers run this module's groups side by side, each its own lab
    root = lab_folder(f"lab-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}")
    write_notebooks(root)
    server = Lab(root)
    yield server
    server.close()


def wait_for_saved_notebook(path: Path, marker: str, page, timeout: float = 60) -> dict | None:
    """The notebook at ``path`` once JupyterLab has written it completely with ``marker`` in an output: a file
    that parses as a whole notebook (JSON with its cells) and holds the marker. A file read while the server is
    writing it (empty, or cut off) does not parse and is read again. None if none such appears in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            notebook = json.loads(path.read_text())
        except (OSError, ValueError):  # missing, empty or half-written: not saved yet
            notebook = None
        if isinstance(notebook, dict) and any(marker in json.dumps(cell.get("outputs", []))
                                              for cell in notebook.get("cells", [])):
            return notebook
        page.wait_for_timeout(300)
    return None


def _digest(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(INTERACTIONS))
def test_explorers_render_and_respond_in_jupyterlab(browser, lab, name):
    shots = SHOTS / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    sources = _digest(ROOT / "notebooks")
    page, problems = run_notebook(browser, lab, f"{name}.ipynb")
    problems += check_explorers(page, name, INTERACTIONS[name], shots)
    page.screenshot(path=str(shots / f"{name}-page.png"))
    page.keyboard.press("Control+s")  # a learner saves: the copy alone is written, never a paired .py
    saved = wait_for_saved_notebook(lab.root / f"{name}.ipynb", DONE, page)
    page.close()
    assert problems == []
    assert saved is not None, "the notebook was not saved with its outputs within 60 s"
    assert not list(lab.root.glob("*.py")) and _digest(ROOT / "notebooks") == sources


def test_the_checks_fail_when_the_widget_frontend_is_missing(browser):
    """JupyterLab without the widget manager extension: the welcome notebook runs, but its explorer cannot be
    drawn live; the checks of the test above must say so (else they would not catch a broken frontend)."""
    root = lab_folder("lab-without-widgets")
    write_notebooks(root)
    server = Lab(root, disable=(WIDGET_MANAGER,))
    shots = SHOTS / "screenshots-without-widgets"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        page, problems = run_notebook(browser, server, "00_welcome.ipynb")
        problems += check_explorers(page, "00_welcome", INTERACTIONS["00_welcome"], shots)
        page.screenshot(path=str(shots / "00_welcome-page.png"))
        page.close()
    finally:
        server.close()
    # the notebook itself ran (no error; the page shows the explorer's static picture instead, the graceful
    # fallback), and the one problem found is the one a learner would see: no menu to choose from
    assert problems == ["00_welcome: ClassExplorer was not drawn as a widget (0 found)"]


# --------------------------------------------------------------------------- the real chapters

# for each chapter with explorers: (explorer class, which of that class on the page, the moves timed). A move is
# ("menu", n): the explorer's n-th menu to its next entry; ("slider", n, key): its n-th slider's handle gets the
# key (ArrowLeft/ArrowRight: one step); ("toggle", n): its n-th row of toggle buttons to the next button. Moves
# stay among settings the explorer has computed before (cached scales, precomputed paths) or that cost a redraw
# only (a token, a block, a time t), except where noted: what a learner moving back and forth waits for.
CHAPTER_MOVES = {
    "01_ddpm_unet": [("ScheduleExplorer", 0, [("slider", 0, "ArrowLeft"), ("slider", 0, "ArrowLeft"),
                                              ("slider", 0, "ArrowRight"), ("slider", 0, "ArrowRight")])],
    "03_cross_attention": [("GuidanceExplorer", 0, [("slider", 0, "ArrowLeft"), ("slider", 0, "ArrowRight")] * 2),
                           ("AttentionExplorer", 0, [("menu", 3), ("menu", 3), ("menu", 2), ("menu", 1)])],
    "04_latent_diffusion": [("GuidanceExplorer", 0, [("slider", 0, "ArrowLeft"), ("slider", 0, "ArrowRight")] * 2)],
    # the image explorer's steps slider samples and decodes a new image the first time a setting is shown
    "05_rectified_flow": [("TrajectoryExplorer", 0, [("menu", 0), ("slider", 1, "ArrowLeft"), ("toggle", 0),
                                                     ("slider", 0, "ArrowRight"), ("menu", 0)]),
                          ("TrajectoryExplorer", 1, [("slider", 1, "ArrowLeft"), ("slider", 1, "ArrowLeft"),
                                                     ("menu", 0), ("slider", 0, "ArrowRight")])],
    "06_mmdit": [("JointAttentionExplorer", 0, [("menu", 3), ("menu", 1), ("menu", 4), ("menu", 2), ("menu", 3)])],
}
LATENCY_TARGET = {"TrajectoryExplorer": 1.0, "JointAttentionExplorer": 1.0}  # seconds, median (issue 38)
LATENCY = SHOTS / "latency"  # <chapter>.json: results lines (course_lib.results)


class ExplorerLatency(UserWarning):
    """How long an explorer of a real chapter took to redraw in the browser (reported, not a failure)."""


# before a move: a promise, kept in the page, of the milliseconds from the explorer's first input event (change,
# key, click) to its picture's next source decoded; null after 60 s
WATCH = """([root, img]) => {
    const start = {t: null};
    const mark = () => { if (start.t === null) start.t = performance.now(); };
    for (const type of ['keydown', 'change', 'click', 'input']) root.addEventListener(type, mark, {capture: true, once: true});
    window.__courseRedraw = new Promise((resolve) => {
        const observer = new MutationObserver(() => {
            observer.disconnect();
            const done = () => resolve(performance.now() - (start.t === null ? performance.now() : start.t));
            img.decode().then(done, done);
        });
        observer.observe(img, {attributes: true, attributeFilter: ['src']});
        setTimeout(() => { observer.disconnect(); resolve(null); }, 60000);
    });
}"""


def _move(explorer, move) -> str:
    """Do ``move`` (see :data:`CHAPTER_MOVES`) on ``explorer``; return the moved control's name."""
    kind, n = move[0], move[1]
    if kind == "menu":
        control = explorer.locator("select").nth(n)
        count = control.locator("option").count()
        current = control.evaluate("s => s.selectedIndex")
        control.select_option(index=(current + 1) % count)
    elif kind == "slider":
        control = explorer.locator(".noUi-handle").nth(n)
        control.scroll_into_view_if_needed()
        control.focus()
        control.press(move[2])
    else:
        buttons = explorer.locator(".widget-toggle-buttons").nth(n).locator("button")
        current = next(i for i in range(buttons.count()) if "mod-active" in (buttons.nth(i).get_attribute("class") or ""))
        buttons.nth((current + 1) % buttons.count()).click()
        control = buttons.nth(0)
    label = control.locator("xpath=ancestor::div[contains(@class, 'widget-inline-hbox')][1]//label").first
    return (label.inner_text() if label.count() else "").strip() or f"{kind} {n}"


def drive_chapter(page, chapter: str, shots: Path) -> tuple[list[str], list[dict]]:
    """Each explorer of ``chapter`` drawn live and redrawn by every move of :data:`CHAPTER_MOVES`: the problems
    and, per explorer, each move's seconds from input to new picture and their median."""
    problems, results = [], []
    fallback = page.locator(".jp-OutputArea-output:has-text('a static picture of its figure')")
    if fallback.count():
        problems.append(f"{chapter}: {fallback.count()} explorer(s) shown as the static fallback, not as live widgets")
    for cls, index, moves in CHAPTER_MOVES[chapter]:
        found = page.locator(f".course-{cls}")
        if found.count() <= index:
            problems.append(f"{chapter}: {cls} #{index} was not drawn as a widget ({found.count()} found)")
            continue
        explorer = found.nth(index)
        image = loaded_picture(page, explorer)
        if image is None:
            problems.append(f"{chapter}: {cls} #{index}'s picture did not load")
            continue
        first = image.get_attribute("src")
        explorer.screenshot(path=str(shots / f"{chapter}-{cls}-{index}-before.png"))
        timed = []
        for move in moves:
            page.evaluate(WATCH, [explorer.element_handle(), image.element_handle()])
            control = _move(explorer, move)
            milliseconds = page.evaluate("() => window.__courseRedraw")
            if milliseconds is None:
                problems.append(f"{chapter}: moving {cls} #{index}'s {control} brought no new picture within 60 s")
                break
            timed.append({"control": control, "seconds": round(milliseconds / 1000, 3)})
        explorer.screenshot(path=str(shots / f"{chapter}-{cls}-{index}-after.png"))
        if image.get_attribute("src") == first:
            problems.append(f"{chapter}: {cls} #{index}'s picture did not change")
        if timed:
            median = statistics.median(m["seconds"] for m in timed)
            results.append({"chapter": chapter, "explorer": cls, "index": index, "moves": timed,
                            "median_seconds": round(median, 3), "target_seconds": LATENCY_TARGET.get(cls)})
    return problems, results


def record_latency(chapter: str, results: list[dict]) -> None:
    """Write ``results`` as results lines to build/browser/latency/<chapter>.json (a file per chapter, so that the
    two test workers never write one file) and report them."""
    load = [round(v, 2) for v in os.getloadavg()]
    threads = os.environ.get("OMP_NUM_THREADS", "torch's choice")
    lines = [{"date": datetime.date.today().isoformat(), "kind": "explorer_latency",
              "settings": {"chapter": r["chapter"], "explorer": r["explorer"], "index": r["index"], "mode": "fast"},
              "metrics": {"median_seconds": r["median_seconds"], "target_seconds": r["target_seconds"],
                          "moves": r["moves"]},
              "hardware": f"CPU {cpu_name()}, {os.cpu_count()} cores, kernel threads {threads}", "load_average": load}
             for r in results]
    LATENCY.mkdir(parents=True, exist_ok=True)
    (LATENCY / f"{chapter}.json").write_text(json.dumps(lines, indent=1))
    for r in results:
        target = f", aim {r['target_seconds']:g} s" if r["target_seconds"] else ""
        moves = ", ".join(f"{m['control']} {m['seconds']:.2f}" for m in r["moves"])
        message = (f"{r['chapter']} {r['explorer']} #{r['index']}: median {r['median_seconds']:.2f} s from control to "
                   f"new picture over {len(r['moves'])} moves ({moves}{target}; load average {load[0]:.1f})")
        print(message)
        warnings.warn(message, ExplorerLatency, stacklevel=1)


def run_chapter(browser, lab, chapter: str) -> None:
    """A learner's copy of ``chapter`` runs in JupyterLab (fast mode, shipped checkpoints); its explorers are live,
    every timed move redraws them, and the redraw times go to build/browser/latency/<chapter>.json."""
    build("student", lab.root, notebooks=[ROOT / "notebooks" / f"{chapter}.ipynb"])
    notebook = lab.root / f"{chapter}.ipynb"
    nbformat.write(_python3(nbformat.read(notebook, as_version=4)), notebook)
    shots = SHOTS / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page, problems = run_notebook(browser, lab, notebook.name, timeout=600)
    found, results = drive_chapter(page, chapter, shots) if not problems else ([], [])
    problems += found
    page.screenshot(path=str(shots / f"{chapter}-page.png"))
    page.close()
    record_latency(chapter, results)
    assert problems == []


# The chapters in two classes: `make test` runs with --dist loadscope, where a class is one unit of work, so that
# its two workers take a class each (a JupyterLab and a Chromium each) and the five chapters take about half the
# time. tests/conftest.py deselects nbval's run of every chapter tested here.
FIRST_HALF = ("01_ddpm_unet", "04_latent_diffusion", "06_mmdit")


class TestChaptersOneFourSix:
    @pytest.mark.parametrize("chapter", FIRST_HALF)
    def test_the_chapters_explorers_are_live_and_redraw(self, browser, lab, chapter):
        run_chapter(browser, lab, chapter)


class TestChaptersThreeFive:
    @pytest.mark.parametrize("chapter", [chapter for chapter in CHAPTER_MOVES if chapter not in FIRST_HALF])
    def test_the_chapters_explorers_are_live_and_redraw(self, browser, lab, chapter):
        run_chapter(browser, lab, chapter)
