"""course_lib: the tested library behind the course "From DDPM to MM-DiT".

One module per concept; the notebooks in ``notebooks/`` explain, call and visualise them.

- ``config``: fast mode, device, seeding, where data and checkpoints live
- ``data``: CIFAR-10 as tensors in [-1, 1] (folder, torchvision, or the bundled sample)
- ``train``: the training loop (EMA, clipping, budgets, exact resume) and its command line
- ``checkpoint``: safetensors checkpoints with a JSON card, written atomically
- ``viz``: image grids
- ``schedules``: noise schedules (linear, cosine), alpha_bar, SNR, q_sample, the posterior
- ``parameterization``: epsilon / x0 / v and the simple diffusion loss
- ``unet``: the DDPM UNet (additive ResBlock or AdaGNResBlock)
- ``attention``: attention three ways (einsum, SDPA, chunked) behind one interface
- ``profiling``: peak tensor memory and interleaved timings, as the benchmarks measure them
- ``diagnostics``: held-out loss and how strongly the timestep steers each block (chapter 2)
- ``text``: captions for CIFAR-10, a word tokenizer, a small text encoder, a frozen pretrained one
- ``spatial_transformer``: self-attention, cross-attention to text and GEGLU feed-forward on feature maps
- ``guidance``: classifier-free guidance and caption dropout
- ``capture``: recording attention maps during sampling without changing the result
- ``text2image``: the text-to-image model (text encoder + conditional UNet), its loss and sampling
- ``classifier``: a small CIFAR-10 ResNet that checks which class generated images show
- ``samplers``: ancestral DDPM and DDIM
- ``recipes``: what ``python -m course_lib.train`` can train; building a model from a checkpoint
- ``widgets``: the interactive explorers of the notebooks
- ``exercises``: checks that tell a learner whether their implementation is right
"""

__version__ = "0.1.0"
