"""The course site: execute every chapter and render it, with its outputs, to static HTML for reading.

    python tools/build_site.py                  # fast mode (COURSE_FAST=1): site/ in about 10 minutes on 2 cores
    python tools/build_site.py --mode full      # full mode: the real runs, as a learner gets them
    python tools/build_site.py --render-only    # render site/ again from the last executed copies
    python tools/build_site.py --update-times   # write the measured section times into the notebooks' sources

(``make site`` and ``make site MODE=full`` run the first two.) What it writes, all git-ignored:

* ``build/executed/<mode>/NN_name.ipynb``: each chapter's source (solutions included) executed top to
  bottom by ``nbclient``, which stores every cell's start and end time in its metadata; the notebook's
  ``course_run`` metadata says where and how it ran (mode, CPU, threads, seconds, an error if one stopped it);
* ``site/NN_name.html``: the page of each chapter (nbconvert's ``lab`` template, the solutions folded
  in "Show the solution", a line at the top that says how the outputs were made), ``site/index.html``
  (the chapters with their learning objectives), the glossary and the instructor guide as pages, and
  MathJax next to them when ``jupyter-server-mathjax`` is installed (the pages then read offline).

Explorers move on the pages, with no kernel. After a chapter's last cell, the builder runs one more cell in
its kernel, ``course_lib.widgets.save_views``: every explorer the chapter displayed draws its figure over a grid
of its controls' values (each explorer chooses how many values of each control, within a budget of pictures), saved
as WebP pictures and an index in ``build/executed/<mode>/NN_name_views/``. The page carries the explorer's controls
(plain HTML sliders, menus and buttons) and a few lines of JavaScript (``site_templates/explorers.js``, inlined)
that show the precomputed picture for the values chosen; the pictures lie in ``site/NN_name/<n>/``. Why a grid of
frames and not an anywidget module: ``course_lib.widgets.views``. The pages load nothing from the network (no
require.js, MathJax next to them) and work from ``file://``. An explorer without views (``--no-views``, or a chapter
that stopped before the end) shows the static picture of its current state (its ``image/png``); a widget output with
neither is reported as an error, and so is a chapter that failed to run (its page is still written, with the error
in it). The builder prints the site's size per chapter (the page and its pictures) and in all; ``--record`` also
appends each chapter's size to ``data/results.jsonl`` (kind ``site_size``), for the results page.

``--update-times`` reads the executed copies of both modes and replaces the cell tagged ``section-times`` in each
``notebooks/NN_name.py`` with a table of seconds per section.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import html
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import markdown2html_mistune
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from course_lib import config  # noqa: E402 - the repository's package, found via ROOT
from course_lib.checkpoint import atomic_write  # noqa: E402
from course_lib.classroom import select  # noqa: E402
from course_lib.config import cpu_name  # noqa: E402
from course_lib.results import append_result  # noqa: E402

EXECUTED = ROOT / "build" / "executed"
SITE = ROOT / "site"
TEMPLATES = Path(__file__).resolve().parent / "site_templates"
EXPLORERS_JS = TEMPLATES / "course" / "explorers.js"  # inlined into every chapter page
DOCS = {"glossary": ROOT / "docs" / "glossary.md", "instructor_guide": ROOT / "docs" / "instructor_guide.md"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
MATHJAX_CDN = "https://cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/MathJax.js?config=TeX-AMS_CHTML-full,Safe"
MATHJAX_LOCAL = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
OBJECTIVES, TIMES = "objectives", "section-times"
# the cell run after a chapter's last one: every shown explorer's pictures over its controls (course_lib.widgets.views)
VIEWS_CELL = """\
import json as _json
from course_lib.widgets import save_views as _save_views
print(_json.dumps(_save_views({folder!r}, max_values={max_values!r})))"""
# MathJax 2's HTML-CSS output looks for its TeX web fonts by default; jupyter-server-mathjax ships only the
# STIX-Web ones, and without them accents float above their letters and primes fail: name the fonts there are
MATHJAX_FONTS = '"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null}'


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _cpu_name() -> str:
    """The CPU's model name (``config.cpu_name``) with the vector unit and whether bf16 is native: what decides
    how fast the notebooks run here."""
    native = ", native bf16" if config.native_bf16("cpu") else ""
    return f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}{native})"


# ----------------------------------------------------------------------------- execute


def views_folder(stem: str, mode: str) -> Path:
    """Where a chapter's kernel saves its explorers' views: ``build/executed/<mode>/NN_name_views/``."""
    return EXECUTED / mode / f"{stem}_views"


def execute(source: Path, mode: str, timeout: int, *, views: bool = True,
            max_values: int | None = None) -> nbformat.NotebookNode:
    """Run ``source`` top to bottom in a fresh kernel (cwd: its folder) in fast or full mode, and save the
    executed copy to ``build/executed/<mode>/``. A failing cell stops the run; the copy keeps what ran.

    ``views``: then, in the same kernel, save every shown explorer's views (:data:`VIEWS_CELL`, at most
    ``max_values`` values per control when given) to :func:`views_folder`; the cell is not kept in the copy, its
    summary is (``course_run["views"]``: explorer, frames, pictures, bytes, seconds per explorer)."""
    nb = nbformat.read(source, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_FAST", "COURSE_LONG")}
    if mode == "fast":
        env["COURSE_FAST"] = "1"
    folder = views_folder(source.stem, mode)
    shutil.rmtree(folder, ignore_errors=True)  # no stale pictures from an earlier run
    if views:
        nb.cells.append(nbformat.v4.new_code_cell(VIEWS_CELL.format(folder=str(folder), max_values=max_values)))
    client = NotebookClient(nb, timeout=timeout, kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
                            resources={"metadata": {"path": str(source.parent)}}, record_timing=True)
    start, error, views_error = time.perf_counter(), None, None
    try:
        client.execute(env=env)  # the kernel's environment (jupyter_client's start_kernel)
    except CellExecutionError as err:
        message = f"{err.ename}: {err.evalue}" if getattr(err, "ename", None) else type(err).__name__
        if views and nb.cells[-1].get("outputs"):  # the chapter ran; saving the views failed
            views_error = message
        else:
            error = message
    seconds, summary = time.perf_counter() - start, None
    if views:
        cell = nb.cells.pop()
        seconds -= _seconds(cell)  # the chapter's own time, without the views
        streams = [o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout"]
        try:
            summary = json.loads("".join(streams).strip().splitlines()[-1])
        except (IndexError, ValueError):
            summary = None
    nb.metadata["course_run"] = {
        "mode": mode, "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "seconds": round(seconds, 1),
        "error": error, "views": summary, "views_error": views_error,
    }
    target = EXECUTED / mode / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, nbformat.writes(nb).encode("utf-8"))
    return nb


# ----------------------------------------------------------------------------- times


def _seconds(cell) -> float:
    """How long a code cell ran, from the timestamps nbclient stored (0 for a cell that did not run)."""
    timing = cell.get("metadata", {}).get("execution", {})
    try:
        begin = datetime.datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return 0.0
    return (end - begin).total_seconds()


def section_times(nb) -> list[tuple[str, float]]:
    """``[(section, seconds)]``: the run time of the code cells under each ``## `` heading, in order;
    the cells before the first heading are "setup (imports, data)"."""
    sections: list[list] = [["setup (imports, data)", 0.0]]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            heading = re.search(r"^## (.+)$", cell.source, re.M)
            if heading:
                sections.append([heading.group(1).strip(), 0.0])
        elif cell.cell_type == "code":
            sections[-1][1] += _seconds(cell)
    return [(name, seconds) for name, seconds in sections if not name.lower().startswith(("summary", "what next"))
            or seconds > 0.5]


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "< 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def times_markdown(fast, full) -> str:
    """The ``section-times`` cell: a table of each section's seconds in fast and full mode."""
    fast_t, full_t = dict(section_times(fast)), dict(section_times(full))  # dicts keep the sections' order
    names = list(full_t) + [name for name in fast_t if name not in full_t]
    rows = [f"| {name} | {_duration(fast_t.get(name, 0.0))} | {_duration(full_t.get(name, 0.0))} |" for name in names]
    total = f"| **the whole notebook** | **{_duration(sum(fast_t.values()))}** | **{_duration(sum(full_t.values()))}** |"
    slowest = max((c for c in full.cells if c.cell_type == "code"), key=_seconds, default=None)
    run_fast, run_full = fast.metadata["course_run"], full.metadata["course_run"]
    lines = [
        "**Time.** Measured by running the notebook top to bottom (`make site`, then `make site MODE=full`) on "
        f"{run_full['cpu_count']} CPU cores ({run_full['cpu']}), {run_full['date'][:10]}; the code cells' seconds "
        "per section, without the kernel's start. Your machine may take longer; reading and the exercises take "
        "longer still.",
        "",
        "| section | fast mode (`COURSE_FAST=1`) | full mode |",
        "| --- | --- | --- |",
        *rows,
        total,
    ]
    if slowest is not None and _seconds(slowest) >= 10:
        lines += ["", f"The longest cell in full mode takes {_duration(_seconds(slowest))}."]
    for run in (run_fast, run_full):
        if run.get("error"):
            lines += ["", f"(The {run['mode']}-mode run stopped early: {run['error']}.)"]
    return "\n".join(lines)


def update_times(names: list[Path]) -> list[Path]:
    """Replace the ``section-times`` cell of each chapter's ``.py`` source with the measured table, then bring
    its ``.ipynb`` up to date (jupytext, nbstripout). Needs the executed copies of both modes."""
    changed = []
    for source in names:
        copies = {mode: EXECUTED / mode / source.name for mode in ("fast", "full")}
        missing = [_shown(p) for p in copies.values() if not p.exists()]
        if missing:
            raise FileNotFoundError(f"no executed copy {', '.join(missing)}: run `make site` and `make site MODE=full` "
                                    "first")
        fast, full = (nbformat.read(p, as_version=4) for p in copies.values())
        py = source.with_suffix(".py")
        text = py.read_text()
        marker = f'# %% [markdown] tags=["{TIMES}"]\n'
        if marker not in text:
            raise ValueError(f"{py.name} has no cell tagged {TIMES!r} to write the times into")
        begin = text.index(marker) + len(marker)
        end = text.index("\n# %%", begin) + 1
        lines = [wrapped for line in times_markdown(fast, full).split("\n")
                 for wrapped in (textwrap.wrap(line, 108) if line and not line.startswith("|") else [line])]
        body = "\n".join(f"# {line}" if line else "#" for line in lines)
        py.write_text(text[:begin] + body + "\n\n" + text[end:])
        subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--to", "ipynb", "--update", str(py)], check=True)
        subprocess.run([sys.executable, "-m", "nbstripout", "--keep-id", str(source)], check=True)
        changed.append(py)
    return changed


# ----------------------------------------------------------------------------- render


def _title(nb) -> str:
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    match = re.search(r"^# (.+)$", first, re.M)
    return match.group(1).strip() if match else "untitled"


def _progress_bar(model_id: str, state: dict) -> dict | None:
    """A finished tqdm bar (``tqdm.auto``'s HBox of HTML, progress, HTML) as the page should show it, from the
    widget state nbclient saved: its last text and a ``<progress>``. None for any other widget."""
    model = state.get(model_id, {})
    children = [state.get(c.removeprefix("IPY_MODEL_"), {}) for c in model.get("state", {}).get("children", [])]
    names = [c.get("model_name") for c in children]
    if model.get("model_name") != "HBoxModel" or len(children) != 3 or names[1] not in ("FloatProgressModel",
                                                                                          "IntProgressModel"):
        return None
    left, bar, right = (c.get("state", {}) for c in children)
    text = [html.unescape(str(s.get("value", ""))).replace("\u2007", " ").strip() for s in (left, right)]
    return {"text/plain": f"{text[0]} {text[1]}",
            "text/html": f"<div class='course-progress'>{html.escape(text[0])} <progress value='{bar.get('value', 0)}' "
                         f"max='{bar.get('max', 1)}'></progress> {html.escape(text[1])}</div>"}


def static_outputs(nb, live: dict[str, str] | None = None) -> list[str]:
    """Replace each widget's live view (it needs a kernel) by what can be shown without one: an explorer's
    precomputed views (``live``: {widget id: HTML}, :func:`live_explorers`), else its static picture; a progress
    bar's last state. Return the problems: a widget with none of these would show nothing on the page."""
    problems = []
    state = nb.metadata.pop("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            view = data.pop(WIDGET_VIEW)
            if view.get("model_id") in (live or {}):
                text = data.get("text/plain", "")
                data.clear()  # the start picture is the first of the views: the PNG would be a second copy
                data.update({"text/html": live[view["model_id"]], "text/plain": text})
                continue
            if "image/png" in data:
                continue
            progress = _progress_bar(view.get("model_id", ""), state)
            if progress is not None:
                data.clear()
                data.update(progress)
            else:
                problems.append(f"cell {index} ({cell.get('id')}): a widget without a static picture "
                                f"({data.get('text/plain', '')[:60]!r})")
    return problems


def _banner(nb, chapters: list[tuple[str, str]], position: int) -> str:
    run = nb.metadata.get("course_run", {})
    links = ["[Course index](index.html)"]
    if position > 0:
        links.append(f"previous: [{chapters[position - 1][1]}]({chapters[position - 1][0]}.html)")
    if position + 1 < len(chapters):
        links.append(f"next: [{chapters[position + 1][1]}]({chapters[position + 1][0]}.html)")
    how = ("fast mode (`COURSE_FAST=1`: small models, few steps, pictures from the shipped checkpoints)"
           if run.get("mode") == "fast" else "full mode")
    said = (f"*The outputs below were made by running this notebook top to bottom in {how} on {run.get('cpu_count')} "
            f"CPU cores ({run.get('cpu')}), {run.get('date')}, in {_duration(run.get('seconds', 0))}. To run it "
            "yourself: `make student` (see the README).*")
    if run.get("error"):
        said += f"\n\n**This run stopped early with an error:** `{run['error']}`"
    return " · ".join(links) + "\n\n" + said


def _views_note(views: dict) -> str:
    """What the page says under a live explorer: no kernel, how many pictures, which values were left out."""
    limited = []
    for c, control in enumerate(views["controls"]):
        sets = [views["option_sets"][i] for i in {frame["options"][c] for frame in views["frames"]}]
        shown, total = max(len(s["keys"]) for s in sets), max(s["total"] for s in sets)
        if shown < total:
            limited.append(f"{html.escape(control['name'])}: {shown} of {total} values")
    note = (f"Moves without a kernel: {len(views['frames'])} pictures drawn by the notebook when this page was "
            "built.")
    if limited:
        note += " Precomputed here: " + "; ".join(limited) + ". Run the notebook for every value."
    return note


def live_html(views: dict, base: str, alt: str) -> str:
    """A live explorer on a page: its controls (made by explorers.js from the views), its start picture from
    ``base`` (the pictures' folder, relative to the page), readouts, a note, and the views as JSON."""
    start = views["frames"][views["start"]]
    width, height = views["size"] or (None, None)
    size = f" width='{width}' height='{height}'" if width else ""
    readouts = "".join(f"<div class='course-live-readout'>{html.escape(text)}</div>" for text in start["texts"])
    page_views = {key: views[key] for key in ("explorer", "controls", "readouts", "option_sets", "frames", "start")}
    data = json.dumps(page_views, ensure_ascii=False).replace("</", "<\\/")  # no "</script>" inside the script
    return (f"<div class='course-live course-live-{html.escape(views['explorer'])}' data-base='{html.escape(base)}'>"
            "<div class='course-live-controls'></div>"
            f"<img class='course-live-picture' src='{html.escape(base)}/{start['picture']}' alt='{html.escape(alt)}'"
            f"{size}>{readouts}<p class='course-live-note'>{_views_note(views)}</p>"
            f"<script type='application/json' class='course-views'>{data}</script></div>")


def live_explorers(nb, stem: str, mode: str, out: Path) -> dict[str, str]:
    """{widget id: HTML} for the explorers of ``nb`` whose views the chapter's kernel saved; their pictures are
    copied to ``out/<stem>/<n>/`` (n: 1, 2, ... in the order the explorers appear on the page)."""
    folder, target = views_folder(stem, mode), out / stem
    shutil.rmtree(target, ignore_errors=True)
    live = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            model_id = data.get(WIDGET_VIEW, {}).get("model_id")
            index = folder / f"{model_id}.json"
            if not model_id or model_id in live or not index.exists():
                continue
            views = json.loads(index.read_text())
            base = f"{stem}/{len(live) + 1}"
            (out / base).mkdir(parents=True, exist_ok=True)
            for name in {frame["picture"] for frame in views["frames"]}:
                shutil.copyfile(folder / model_id / name, out / base / name)
            live[model_id] = live_html(views, base, data.get("text/plain", "an explorer"))
    return live


def render_chapter(nb, chapters: list[tuple[str, str]], position: int, mathjax: str,
                   live: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """The chapter's HTML page and the problems found in its outputs; ``live``: its explorers' views
    (:func:`live_explorers`)."""
    nb = copy.deepcopy(nb)
    problems = static_outputs(nb, live)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(_banner(nb, chapters, position)))
    exporter = HTMLExporter(template_name="course", extra_template_basedirs=[str(TEMPLATES)], mathjax_url=mathjax)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": _title(nb)}, "mathjax_fonts": MATHJAX_FONTS,
                                                         "explorers_js": EXPLORERS_JS.read_text()})
    return body, problems


def _page(title: str, body_html: str, mathjax: str) -> str:
    """A plain page in the site's style (index, glossary, guide)."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<script type="text/x-mathjax-config">MathJax.Hub.Config({{tex2jax: {{inlineMath: [['$','$'], ['\\\\(','\\\\)']],
 processEscapes: true}}, {MATHJAX_FONTS}}});</script>
<script src="{mathjax}"></script>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.55; color: #222;
       max-width: 60rem; margin: 2rem auto; padding: 0 1.2rem; }}
h1 {{ font-size: 1.9rem; margin-bottom: .2rem; }} h2 {{ margin-top: 2.2rem; }}
a {{ color: #1f5fa8; }} code {{ background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} th, td {{ border: 1px solid #ccc; padding: .3rem .6rem;
       vertical-align: top; }} th {{ background: #f3f3f3; }}
.chapter {{ border: 1px solid #ddd; border-radius: 8px; padding: .6rem 1.2rem; margin: 1.2rem 0; }}
.chapter h2 {{ margin-top: .4rem; }} .meta {{ color: #666; font-size: .92rem; }}
.error {{ color: #a00; font-weight: bold; }}
</style></head><body>
{body_html}
</body></html>
"""


def _markdown(text: str) -> str:
    text = re.sub(r"\]\((?:docs/)?(glossary|instructor_guide)\.md(#[^)]*)?\)", r"](\1.html\2)", text)
    return markdown2html_mistune(text)


def render_index(chapters: list[tuple[str, nbformat.NotebookNode]], mode: str, mathjax: str) -> str:
    how = ("fast mode (<code>COURSE_FAST=1</code>: small models, few steps, pictures from the shipped checkpoints)"
           if mode == "fast" else "full mode")
    parts = ["<h1>Diffusion models, from DDPM to MM-DiT</h1>",
             "<p class='meta'>The course's notebooks with their outputs, for reading without running them. Made by "
             f"<code>make site{' MODE=full' if mode == 'full' else ''}</code>: every notebook was run top to bottom in "
             f"{how}. To run them yourself, see the README (<code>make student</code>). Also here: the "
             "<a href='glossary.html'>glossary and notation</a> and the <a href='instructor_guide.html'>instructor "
             "guide</a>.</p>"]
    for stem, nb in chapters:
        run = nb.metadata.get("course_run", {})
        objectives = next((c.source for c in nb.cells if OBJECTIVES in _tags(c)), "")
        status = (f"<span class='error'>stopped early: {html.escape(run['error'])}</span>" if run.get("error") else
                  f"ran in {_duration(run.get('seconds', 0))} on {run.get('cpu_count')} CPU cores, {run.get('date')}")
        parts.append(f"<div class='chapter'><h2><a href='{stem}.html'>{html.escape(_title(nb))}</a></h2>"
                     f"{_markdown(objectives)}<p class='meta'>{mode} mode: {status}</p></div>")
    return _page("Diffusion models, from DDPM to MM-DiT", "\n".join(parts), mathjax)


def _mathjax(out: Path) -> str:
    """Copy MathJax next to the pages when ``jupyter-server-mathjax`` is installed (offline reading);
    else point at the CDN, as nbconvert does by default."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        return MATHJAX_CDN
    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (out / "mathjax" / "MathJax.js").exists():
        shutil.copytree(static, out / "mathjax", dirs_exist_ok=True)
    return MATHJAX_LOCAL


def render(names: list[Path], mode: str, out: Path) -> list[str]:
    """Write the site from the executed copies of ``mode``; return the problems found."""
    out.mkdir(parents=True, exist_ok=True)
    mathjax = _mathjax(out)
    chapters = []
    for source in names:
        executed = EXECUTED / mode / source.name
        if not executed.exists():
            raise FileNotFoundError(f"no executed copy {_shown(executed)}: run without --render-only first")
        chapters.append((source.stem, nbformat.read(executed, as_version=4)))
    titles = [(stem, _title(nb)) for stem, nb in chapters]
    problems = []
    for position, (stem, nb) in enumerate(chapters):
        page, found = render_chapter(nb, titles, position, mathjax, live_explorers(nb, stem, mode, out))
        problems += [f"{stem}: {p}" for p in found]
        run = nb.metadata.get("course_run", {})
        if run.get("error"):
            problems.append(f"{stem}: the run stopped early: {run['error']}")
        if run.get("views_error"):
            problems.append(f"{stem}: saving the explorers' views failed: {run['views_error']}")
        atomic_write(out / f"{stem}.html", page.encode("utf-8"))
    atomic_write(out / "index.html", render_index(chapters, mode, mathjax).encode("utf-8"))
    for name, path in DOCS.items():
        atomic_write(out / f"{name}.html", _page(name.replace("_", " ").capitalize(),
                                                 "<p><a href='index.html'>Course index</a></p>" + _markdown(path.read_text()),
                                                 mathjax).encode("utf-8"))
    return problems


def site_sizes(out: Path, stems: list[str]) -> dict[str, int]:
    """Bytes of each chapter (its page and its explorers' pictures) and ``"total"`` (everything in ``out``)."""
    def size(path: Path) -> int:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0

    sizes = {stem: size(out / f"{stem}.html") + size(out / stem) for stem in stems}
    sizes["total"] = size(out)
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", help="notebook names or numbers (default: all), e.g. 01 or 01_ddpm_unet")
    parser.add_argument("--mode", choices=("fast", "full"), default="fast", help="fast (COURSE_FAST=1, default) or full")
    parser.add_argument("--out", type=Path, default=SITE, help="the site's folder (default site/)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run (default 1800)")
    parser.add_argument("--render-only", action="store_true", help="do not execute; render the last executed copies")
    parser.add_argument("--no-views", action="store_true",
                        help="do not precompute the explorers' views (their pages show static pictures)")
    parser.add_argument("--max-values", type=int, default=None,
                        help="precompute at most this many values of any explorer control (a quick build)")
    parser.add_argument("--record", action="store_true",
                        help="append each chapter's size to data/results.jsonl (for docs/results.md)")
    parser.add_argument("--update-times", action="store_true",
                        help="write the section times of the executed copies (both modes) into the sources; no site")
    args = parser.parse_args(argv)

    try:
        names = select(args.chapters)
    except ValueError as err:
        parser.error(str(err))
    if args.update_times:
        try:
            for py in update_times(names):
                print(f"wrote the section times into {_shown(py)}")
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if not args.render_only:
        for source in names:
            print(f"running {source.name} in {args.mode} mode ...", flush=True)
            run = execute(source, args.mode, args.timeout, views=not args.no_views,
                          max_values=args.max_values).metadata["course_run"]
            print(f"  {_duration(run['seconds'])}" + (f", stopped: {run['error']}" if run["error"] else ""), flush=True)
            for view in run.get("views") or []:
                print(f"  {view['explorer']}: {view['frames']} views, {view['pictures']} pictures, "
                      f"{view['bytes'] / 1e6:.1f} MB, {_duration(view['seconds'])}", flush=True)
    try:
        problems = render(names, args.mode, args.out)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'index.html'} and {len(names)} chapter page(s)")
    sizes = site_sizes(args.out, [source.stem for source in names])
    print("size: " + ", ".join(f"{stem} {size / 1e6:.1f} MB" for stem, size in sizes.items()))
    if args.record and problems:
        print("not recorded: the site has problems (below)", file=sys.stderr)
    elif args.record:
        for source in names:
            views = nbformat.read(EXECUTED / args.mode / source.name, as_version=4).metadata.get(
                "course_run", {}).get("views") or []
            append_result({"date": time.strftime("%Y-%m-%d"), "kind": "site_size",
                           "settings": {"chapter": source.stem, "mode": args.mode},
                           "metrics": {"bytes": sizes[source.stem], "explorers": len(views),
                                       "views": sum(v["frames"] for v in views)}})
        print(f"recorded {len(names)} line(s); python -m course_lib.results shows them")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
