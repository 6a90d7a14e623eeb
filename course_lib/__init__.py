"""course_lib: the tested library behind the course "From DDPM to MM-DiT".

One module per idea; the notebooks in ``notebooks/`` explain, call and visualise them. The map,
by role (find the code of any idea in one step):

Infrastructure
- ``config``: fast mode, device, seeding, where data and checkpoints live (the only global switches);
  the hardware description that cards and results record
- ``data``: CIFAR-10 as tensors in [-1, 1] and where it came from (its source and file tag);
  ``TensorSplit`` for any tensors (cached latents, reflow pairs); step-indexed batches with exact resume
- ``checkpoint``: safetensors checkpoints with a JSON card, written atomically
- ``trainer``: the one training loop (``fit``: AdamW, warm-up / cool-down, EMA, clipping, budgets, resume)
- ``train``: the command line ``python -m course_lib.train RECIPE`` (``torchrun ... -m course_lib.train``: data parallel)
- ``distributed``: torchrun's process group, each rank's device, shard and seed (DistributedDataParallel)
- ``recipes``: what the command line trains (model config + process + data + optimiser)
- ``models``: the model registry: a network from its config, and from a checkpoint's card
  (``model_from_checkpoint``)
- ``profiling``: parameter counts, peak tensor memory and interleaved timings
- ``exercises``: checks that tell a learner whether their implementation is right, with hints and solutions
  (a package: the harness, then one file per chapter)
- ``classroom``: the student and solution builds of the notebooks, and resetting an exercise

Process (how data becomes noise, and back)
- ``processes``: the ``Process`` interface (corrupt, target, loss, sample), ``DDPMProcess`` and
  ``RectifiedFlowProcess`` (chapter 5)
- ``schedules``: noise schedules (linear, cosine), alpha_bar, SNR, q_sample, the posterior
- ``parameterization``: epsilon / x0 / v, their conversions, the simple diffusion loss
- ``samplers``: ancestral DDPM and DDIM, trajectories on a continuous time axis
- ``flow``: Euler and Heun for velocity models; straightness and path/chord ratio of trajectories
- ``reflow``: a trained flow's (sample, noise) pairs and the loss that straightens it (k-rectified flow);
  for images, resumable cached pairs made from a reflow recipe (``python -m course_lib.reflow rf2-small``)

Blocks
- ``conditioning``: timestep embedding (with a time scale), ``modulate`` (scale and shift), zero init;
  shared by chapter 2's AdaGN ResBlock and chapter 6's AdaLN-Zero blocks
- ``attention``: attention three ways (einsum, SDPA, chunked); the hookable attention layers
- ``spatial_transformer``: self-attention, cross-attention to text and GEGLU feed-forward on feature maps
- ``guidance``: classifier-free guidance and caption dropout

Models
- ``unet``: the DDPM UNet (additive ResBlock or AdaGNResBlock; SpatialTransformers for text)
- ``text2image``: the text-to-image model (text encoder + a registered denoiser: UNet, MM-DiT, ...) and its loss
- ``mmdit``: SD3's and Flux's transformer (patches, RoPE, QK-norm, adaLN-Zero modulation, double- and
  single-stream blocks, the MMDiT with the UNet's interface; chapter 6, trained as ``mmdit-small``)
- ``guidance_distillation``: one pass per step at any guidance weight: a student with a guidance input learns
  its teacher's classifier-free-guided velocity (Meng et al. 2023; Flux-dev's ``guidance_in``; chapter 7)
- ``meanflow``: one-step generation by the average velocity (Geng et al. 2025): the exact target on Gaussian data,
  the MeanFlow identity's target by a Jacobian-vector product, the loss and the few-step sampler; chapter 7
- ``dit``: DiT's conditioning ablation with a caption (in-context tokens, PixArt's cross-attention, adaLN-Zero),
  the MM-DiT's interface and size; chapter 6, the ``dit-*`` recipes
- ``classifier``: a small CIFAR-10 ResNet that checks which class generated images show
- ``autoencoder``: the KL autoencoder of latent diffusion (images <-> 4x8x8 latents; chapter 4)
- ``latents``: a data set's latents encoded once and cached (keyed by the autoencoder's hash), sampled per batch
- ``adversarial``: a sharper decoder for a trained autoencoder, its encoder frozen (L1, a PatchGAN with hinge
  loss, feature matching, LDM's adaptive weight; chapter 4, ``python -m course_lib.adversarial``)

Text
- ``captions``: captions and prompts for CIFAR-10 from class labels (data, not encoding)
- ``text``: a word tokenizer, a small text encoder, the frozen pretrained MiniLM

Pipeline
- ``generation``: ``Pipeline``, the one generation path: prompts -> guidance -> sampler -> decoder, and
  the count of its network evaluations (NFE)

Looking
- ``viz``: image grids with labels, loss curves, checkpoint cards, attention heatmaps
- ``capture``: recording attention maps while a model runs, without changing its output; what they show
  (the four quadrants of joint attention)
- ``widgets``: the interactive explorers of the notebooks (a package: the base, then one file per family)
- ``diagnostics``: held-out loss and how strongly the timestep steers each block (chapter 2)
- ``toy``: low-dimensional data with exact answers (Gaussian mixtures: scores, eps, velocities), 2-D data
  sets and a small MLP denoiser

Measuring
- ``features``: image features for the distances: TF Inception-v3 (FID) and the course classifier (FD_clf);
  reference statistics of CIFAR-10, computed once
- ``metrics``: Fréchet distance, KID, precision/recall, Wasserstein-2 (POT), energy distance
- ``evaluation``: samples judged by the course's classifier (prompt accuracy, classifier score) and
  against real images (``--num-samples``: FID, KID, precision/recall, FD_clf), over ``--seeds K``, with
  the NFE counted; one line per seed in ``data/results.jsonl``
- ``results``: ``data/results.jsonl`` read, merged over seeds (mean ± std), and rendered as
  ``docs/results.md`` and the README's headline table
"""

__version__ = "0.1.0"
