"""course_lib: the tested library behind the course "From DDPM to MM-DiT".

One module per concept; the notebooks in ``notebooks/`` explain, call and visualise them.

- ``config``: fast mode, device, seeding, where data and checkpoints live
- ``data``: CIFAR-10 as tensors in [-1, 1] (folder, torchvision, or the bundled sample)
- ``train``: the training loop (EMA, clipping, budgets, exact resume) and its command line
- ``checkpoint``: safetensors checkpoints with a JSON card, written atomically
- ``viz``: image grids
"""

__version__ = "0.1.0"
