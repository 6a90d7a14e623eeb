"""The course site's explorers move without a kernel (tools/build_site.py and course_lib.widgets.views).

A tiny chapter with one explorer of each family (the welcome chapter's class menu, the schedule slider, the
guidance slider, the attention map, the trajectories, the joint attention; small stand-in models) is run and
rendered by the site builder as ``make site`` does, with at most two values per control (a quick build: the real
chapters precompute more). The pure checks read the saved views and the page; the browser check opens the page
from ``file://`` in headless Chromium (Debian's, driven by Playwright; skipped without them) and moves every control
of every explorer: the picture must change, and the page must load nothing but files (no kernel, no websocket, no
network). The page and a screenshot of it go to ``build/site-test/`` (git-ignored).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "site-test"
spec = importlib.util.spec_from_file_location("build_site", ROOT / "tools" / "build_site.py")
site = importlib.util.module_from_spec(spec)
spec.loader.exec_module(site)

pytestmark = pytest.mark.slow

CELLS = [
    """\
import torch
from IPython.display import display
from course_lib import widgets as W
from course_lib.schedules import NoiseSchedule
g = torch.Generator().manual_seed(0)
images = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
display(W.class_explorer(torch.rand(8, 3, 8, 8, generator=g) * 2 - 1, torch.arange(8) % 2, ["cat", "ship"]))""",
    """\
display(W.schedule_explorer(images, {"linear": NoiseSchedule.linear(200), "cosine": NoiseSchedule.cosine(200)}, t=20))""",
    """\
display(W.guidance_explorer(lambda w: (images[:2] * (1 + w)).clamp(-1, 1), [0, 1, 3, 7], titles=["first", "second"]))""",
    """\
from course_lib.capture import capture_attention
from course_lib.samplers import ddim_sample
from course_lib.text import TextEncoder, TextEncoderConfig, Tokenizer, encode_prompts
from course_lib.unet import UNet, UNetConfig
torch.manual_seed(0)
tokenizer = Tokenizer.for_cifar10()
encoder = TextEncoder(TextEncoderConfig.for_tokenizer(tokenizer, dim=32, depth=1)).eval()
unet = UNet(UNetConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16, 8),
                       image_size=16, num_groups=4, num_heads=2, dropout=0.0, context_dim=32)).eval()
for name, p in unet.named_parameters():  # wake the zero-initialised output layers: maps that differ by word
    if "proj_out" in name or "out." in name:
        torch.nn.init.normal_(p, std=0.2)
schedule = NoiseSchedule.linear(200)

def run(prompt):
    context = encode_prompts([prompt], tokenizer, encoder)
    batch = tokenizer.encode([prompt])
    with torch.no_grad(), capture_attention(unet) as record:
        image = ddim_sample(lambda x, t: unet(x, t, context.tokens, context.mask), schedule,
                            x_T=torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
                            num_steps=2, progress=False)[0]
    return image, record, [tokenizer.vocab[i] for i in batch.ids[0][batch.mask[0]].tolist()]

display(W.attention_explorer(run, ["a photo of a cat", "a ship"]))""",
    """\
def straight(y, t):
    return y / torch.as_tensor(t, dtype=y.dtype).reshape(-1, 1).clamp_min(1e-3)
def curl(y, t):
    return straight(y, t) + torch.stack([-y[:, 1], y[:, 0]], 1)
display(W.trajectory_explorer({"straight": straight, "curl": curl}, 0.05 * torch.randn(100, 2, generator=g),
                              num_points=40, steps=[1, 4], seeds=[0, 1]))""",
    """\
from course_lib.autoencoder import AutoencoderConfig, AutoencoderKL
from course_lib.generation import Pipeline
from course_lib.processes import RectifiedFlowProcess
from course_lib.text2image import Text2ImageConfig, TextToImageModel
torch.manual_seed(0)
mmdit = TextToImageModel(Text2ImageConfig.latent_mmdit_tiny()).eval()
for p in mmdit.mmdit.parameters():  # wake the zero-initialised gates: maps that differ by block and token
    if p.abs().max() == 0:
        torch.nn.init.normal_(p, std=0.1)
pipe = Pipeline(mmdit, RectifiedFlowProcess(), autoencoder=AutoencoderKL(AutoencoderConfig.tiny()).eval())
display(W.joint_attention_explorer(pipe, ["a photo of a cat", "a ship"], num_steps=2))""",
]
# the controls each explorer precomputes at one value only (its view_controls' limits)
ONE_VALUE_CONTROLS = {"ClassExplorer": [], "ScheduleExplorer": [], "GuidanceExplorer": [],
                      "AttentionExplorer": ["head"], "TrajectoryExplorer": ["seed"],
                      "JointAttentionExplorer": ["head", "step", "patch"]}
EXPLORERS = ["ClassExplorer", "ScheduleExplorer", "GuidanceExplorer", "AttentionExplorer", "TrajectoryExplorer",
             "JointAttentionExplorer"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny chapter run (views of at most 2 values per control) and rendered to ``build/site-test/``."""
    folder = tmp_path_factory.mktemp("chapter")
    source = folder / "09_explorers.ipynb"
    cells = [new_markdown_cell("# 9 · Every explorer, built small")] + [new_code_cell(src) for src in CELLS]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, source)
    shutil.rmtree(OUT, ignore_errors=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(site, "EXECUTED", folder / "executed")
        executed = site.execute(source, "fast", timeout=300, max_values=2)
        problems = site.render([source], "fast", OUT)
    print("views:", [(v["explorer"], v["frames"], v["seconds"]) for v in executed.metadata["course_run"]["views"]])
    return {"nb": executed, "problems": problems, "page": OUT / "09_explorers.html",
            "views": folder / "executed" / "fast" / "09_explorers_views"}


def test_the_kernel_saved_every_explorers_views(built):
    run = built["nb"].metadata["course_run"]
    assert run["error"] is None and run["views_error"] is None and built["problems"] == []
    assert [v["explorer"] for v in run["views"]] == EXPLORERS
    assert len(built["nb"].cells) == len(CELLS) + 1  # the views cell is not kept in the executed copy
    for summary in run["views"]:
        views = json.loads((built["views"] / f"{summary['model_id']}.json").read_text())
        assert len(views["frames"]) == summary["frames"] > 1
        for c, control in enumerate(views["controls"]):  # two values of each control (one where the explorer
            for frame in views["frames"]:                     # limits it to one: heads, steps), each with a frame
                offered = views["option_sets"][frame["options"][c]]["keys"]
                assert len(offered) == (1 if control["name"] in ONE_VALUE_CONTROLS[summary["explorer"]] else 2)
                for key in offered:
                    values = frame["values"][:c] + [key]
                    assert any(f["values"][:c + 1] == values for f in views["frames"]), (summary["explorer"], values)
        for frame in views["frames"]:
            assert (built["views"] / summary["model_id"] / frame["picture"]).read_bytes()[8:12] == b"WEBP"


def test_the_page_carries_the_views_and_nothing_for_a_kernel(built):
    page = built["page"].read_text()
    assert page.count('class="course-live course-live-') == len(EXPLORERS)
    assert "application/vnd.jupyter.widget" not in page and "require.js" not in page and "src=\"data:image/png" not in page
    assert "Moves without a kernel" in page and "Run the notebook for every value" in page  # what was left out
    assert "of 200 values" in page  # the schedule's t: 2 of 200 values
    assert len(list((OUT / "09_explorers").glob("*/*.webp"))) >= sum(v["pictures"] for v in
                                                                     built["nb"].metadata["course_run"]["views"]) - 1
    sizes = site.site_sizes(OUT, ["09_explorers"])
    assert 0 < sizes["09_explorers"] < 5e6


def _chromium() -> str | None:
    named = os.environ.get("COURSE_CHROMIUM", "").strip()
    if named:
        return named if Path(named).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


ONE_VALUE = """(element) => (element.tagName === 'SELECT' ? element.options.length
    : element.tagName === 'INPUT' ? Number(element.max) + 1 : element.querySelectorAll('button').length) < 2"""
MOVE = """(element) => {
    const before = element.closest('.course-live').getAttribute('data-frame');
    if (element.tagName === 'SELECT') {
        element.selectedIndex = (element.selectedIndex + 1) % element.options.length;
        element.dispatchEvent(new Event('change'));
    } else if (element.tagName === 'INPUT') {
        element.value = String(Number(element.value) >= Number(element.max) ? 0 : Number(element.value) + 1);
        element.dispatchEvent(new Event('input'));
    } else {
        element.querySelector("button[aria-pressed='false']").click();
    }
    return before;
}"""


@pytest.mark.skipif(importlib.util.find_spec("playwright") is None or _chromium() is None,
                    reason="needs Playwright and Chromium (apt-get install chromium; make setup installs Playwright)")
def test_every_control_changes_the_picture_in_chromium_without_a_kernel(built):
    from playwright.sync_api import sync_playwright

    requests, sockets, errors, moved, single = [], [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("request", lambda request: requests.append(request.url))
        page.on("websocket", lambda socket: sockets.append(socket.url))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(built["page"].as_uri())
        page.wait_for_load_state("load")
        explorers = page.locator(".course-live")
        assert explorers.count() == len(EXPLORERS)
        for e in range(explorers.count()):
            explorer = explorers.nth(e)
            name = explorer.get_attribute("class").split("course-live-")[-1]
            assert explorer.get_attribute("data-error") is None, explorer.get_attribute("data-error")
            picture = explorer.locator("img.course-live-picture")
            controls = explorer.locator("[data-control]")
            assert controls.count() >= 1
            for c in range(controls.count()):
                control = controls.nth(c)
                if control.evaluate(ONE_VALUE):  # a control precomputed at one value (the note says so)
                    single.append(f"{name}.{control.get_attribute('data-control')}")
                    continue
                src = picture.get_attribute("src")
                before = control.evaluate(MOVE)
                page.wait_for_function("([root, before]) => root.getAttribute('data-frame') !== before",
                                       arg=[explorer.element_handle(), before], timeout=5_000)
                page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                       arg=picture.element_handle(), timeout=5_000)
                if picture.get_attribute("src") != src:
                    moved.append(f"{name}.{control.get_attribute('data-control')}")
                else:
                    errors.append(f"{name}: moving {control.get_attribute('data-control')} kept the picture {src}")
        page.screenshot(path=str(OUT / "page.png"), full_page=True)
        browser.close()
    assert errors == []
    assert len(moved) + len(single) == sum(len(json.loads(p.read_text())["controls"])
                                           for p in built["views"].glob("*.json"))
    assert sorted(single) == sorted(f"{name}.{control}" for name, controls in ONE_VALUE_CONTROLS.items()
                                    for control in controls)
    assert sockets == [], "the page opened a websocket (a kernel?)"
    assert [url for url in requests if not url.startswith(("file://", "data:"))] == []
