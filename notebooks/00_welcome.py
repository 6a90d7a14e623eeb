# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (diffusion course)
#     language: python
#     name: course-diffusion
# ---

# %% [markdown]
# # 0 · Welcome: from DDPM to MM-DiT
#
# This course builds, one idea per chapter, the path from the first denoising diffusion model
# to the transformers behind today's image generators:
#
# | chapter | idea |
# | --- | --- |
# | 1 · DDPM with the classic UNet | the forward process $q(x_t \mid x_0)$, noise schedules, $\epsilon$-prediction, DDPM and DDIM sampling |
# | 2 · AdaGN and modern attention | scale-and-shift conditioning $h = \mathrm{norm}(h)(1+s)+b$; attention three ways |
# | 3 · Cross-attention and guidance | text captions, a text encoder, classifier-free guidance, attention maps |
# | 4 · Latent diffusion | a KL autoencoder; the same denoiser in a small latent space |
# | 5 · Rectified flow | straight paths $x_t = (1-t)\,x_0 + t\,z$, reflow, few-step sampling |
# | 6 · MM-DiT | the transformer of SD3 and Flux: joint text-image attention, AdaLN-Zero, RoPE |
#
# Every model and sampler lives in the tested library `course_lib`; the notebooks explain,
# call it, and draw. You can read the library as the book's appendix.
#
# **Two commands** (from the repository root):
#
# * `make lab` creates `.venv`, installs everything, registers the kernel
#   *Python (diffusion course)* and opens JupyterLab on this folder;
# * `make test` runs the unit tests and every notebook in fast mode.
#
# **Fast mode.** With `COURSE_FAST=1` in the environment (the tests set it), every chapter
# uses tiny models and few steps so that a notebook runs in a couple of minutes on a laptop
# CPU. Without it, the notebooks do the real thing, loading the checkpoints the course's own
# training command produced when training would take hours.
#
# This notebook checks that your environment works and takes a first look at the data.

# %% [markdown] tags=["objectives"]
# **After this chapter you can**
#
# * run the setup cell and read from it the device, the number of CPU threads, whether fast mode is on, and
#   where data and checkpoints are read from;
# * say which CIFAR-10 source they have (folder, torchvision, or the bundled sample) and in what range the
#   images are stored ($[-1, 1]$);
# * confirm that widgets respond (the class menu redraws the images).
#
# **Before it you need**
#
# * Python 3.10+ and a terminal; `make setup` (or `make student`) has run once.
# * No machine learning yet: this chapter only checks that everything works.

# %% [markdown] tags=["section-times"]
# **Time.** Measured by running the notebook top to bottom (`make site`, then `make site MODE=full`) on 2 CPU
# cores (Intel(R) Xeon(R) Processor with AVX-512 and AMX), 2026-12-03; the code cells' seconds per section,
# without the kernel's start. Your machine may take longer; reading and the exercises take longer still.
#
# | section | fast mode (`COURSE_FAST=1`) | full mode |
# | --- | --- | --- |
# | setup (imports, data) | 3 s | 2 s |
# | The device | < 1 s | < 1 s |
# | The data: CIFAR-10 | < 1 s | < 1 s |
# | A first look | < 1 s | < 1 s |
# | Pixel statistics | < 1 s | < 1 s |
# | Widgets | < 1 s | < 1 s |
# | **the whole notebook** | **3 s** | **3 s** |

# %%
import platform
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import display

import course_lib
from course_lib import config, data
from course_lib.viz import show_images
from course_lib.widgets import class_explorer

config.setup_cpu_speedups()
device = config.get_device()
print(f"course_lib {course_lib.__version__} · torch {torch.__version__} · Python {platform.python_version()}")
print(f"device: {device} · CPU threads: {torch.get_num_threads()} · fast mode: {config.fast_mode()}")
print(f"data root: {config.data_dir()}")
print(f"checkpoints: {config.checkpoint_dir()}")

# %% [markdown]
# ## The device
#
# The course picks the device itself: CUDA if there is an NVIDIA GPU, then Apple's MPS, then
# the CPU. Set `COURSE_DEVICE=cpu` (or `cuda:1`, ...) before starting Jupyter to choose.
# A small matrix product on that device checks that it computes correctly:

# %%
a = torch.randn(256, 256, device=device)
t0 = time.perf_counter()
for _ in range(10):
    b = a @ a
if device.type == "cuda":
    torch.cuda.synchronize()
seconds = (time.perf_counter() - t0) / 10
assert torch.allclose((a @ torch.eye(256, device=device)).cpu(), a.cpu())
print(f"256x256 matmul on {device}: {seconds * 1e3:.2f} ms ({2 * 256**3 / seconds / 1e9:.1f} GFLOP/s)")

# %% [markdown]
# ## The data: CIFAR-10
#
# CIFAR-10 (Krizhevsky, 2009) has 60,000 colour images of 32×32 pixels in ten classes.
# `load_cifar10` returns them as tensors in $[-1, 1]$ (pixel $/\,127.5 - 1$, DDPM's
# convention), from the first source it finds:
#
# 1. a folder in ImageFolder layout named by `COURSE_CIFAR10_DIR` (`train/<class>/*.jpg`);
# 2. torchvision's copy under the data root, downloaded only if you ask: `load_cifar10(download=True)`;
# 3. the small sample shipped with the course (300 training and 50 test images per class),
#    used automatically, with one line saying so.

# %%
print("source:", data.describe_source())
train = data.load_cifar10("train")
test = data.load_cifar10("test", verbose=False)
print(train)
print(test)
assert train.images.shape[1:] == (3, 32, 32) and -1 <= train.images.min() and train.images.max() <= 1
counts = torch.bincount(train.labels, minlength=10)
assert (counts > 0).all(), "every class should be present"

# %% [markdown]
# ## A first look
#
# Ten random training images of each class, one class per row. At 32×32 pixels the objects
# are recognisable but coarse: this is the resolution our first models generate.

# %%
g = torch.Generator().manual_seed(0)
rows = []
for c in range(10):
    idx = torch.nonzero(train.labels == c).squeeze(1)
    rows.append(train.images[idx[torch.randperm(len(idx), generator=g)[:10]]])
show_images(torch.cat(rows), nrow=10, row_labels=list(data.CIFAR10_CLASSES),
            title="CIFAR-10: ten training images of each class")
plt.show()

# %% [markdown]
# ## Pixel statistics
#
# Diffusion models add Gaussian noise of unit variance to the data, so the scale of the data
# matters: in $[-1, 1]$ the per-channel mean and standard deviation below are what the noise
# is compared against. (Measured on the training images that were loaded above.)

# %%
mean = train.images.mean(dim=(0, 2, 3))
std = train.images.std(dim=(0, 2, 3))
for name, m, s in zip("RGB", mean, std):
    print(f"channel {name}: mean {m:+.3f}, std {s:.3f}")
fig, ax = plt.subplots(figsize=(6, 2.6))
for ch, colour in enumerate(("tab:red", "tab:green", "tab:blue")):
    ax.hist(train.images[:, ch].flatten().numpy(), bins=64, histtype="step", color=colour,
            label="RGB"[ch], density=True)
ax.set_xlabel("pixel value in [-1, 1]")
ax.set_ylabel("density")
ax.set_title(f"pixel values of {len(train)} training images")
ax.legend()
plt.show()

# %% [markdown]
# ## Widgets
#
# Later chapters use sliders and menus to explore noise schedules, guidance and attention.
# If you see a menu below and changing it changes the images, widgets work in your Jupyter.
# (The check after it sets the menu from code and asserts that the images changed.) Where widgets
# cannot run (GitHub's viewer, an HTML export), the explorer shows a picture of its current state.

# %%
# NBVAL_IGNORE_OUTPUT
explorer = class_explorer(train.images, train.labels, data.CIFAR10_CLASSES, value="cat")
display(explorer)

# %%
before = explorer.state["images"]
explorer.menu.value = "ship"  # what choosing "ship" in the menu does
assert explorer.state["class"] == "ship" and not torch.equal(before, explorer.state["images"]), \
    "changing the menu should redraw"
print("widgets respond to their controls")

# %% [markdown]
# ## What next
#
# Open `01_ddpm_unet` for the first chapter. If the source line above said *bundled sample*,
# everything runs, but models trained on 3,000 images overfit: for real training, download
# the full set (`data.load_cifar10(download=True)`) or point `COURSE_CIFAR10_DIR` at a copy.
