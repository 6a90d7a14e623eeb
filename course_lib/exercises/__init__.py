"""Checks for the notebooks' exercises: is the learner's function right, and if not, why not?

Each ``check_*`` function calls the learner's function on a few random test batches, compares
the result with the library's own implementation, prints ``Correct!`` or a diagnosis, and
returns True or False. A diagnosis names the first problem found, in this order:

1. the function is not written yet (``NotImplementedError``) or raised an error (with a hint
   for the usual ones, e.g. a [B] tensor that does not broadcast against [B, C, H, W] images);
2. it returned something that is not a tensor, or a tensor of the wrong shape;
3. it changed its inputs in place, or gives a different answer when called twice (random);
4. its result equals what a *known mistake* would give (alpha_t for alpha_bar_t, a forgotten
   square root, swapped coefficients, ...): the message says which one;
5. otherwise, how far it is from the library's answer, and where.

Chapter 1: :func:`check_q_sample`, :func:`check_eps_to_x0`, :func:`check_simple_loss` (Ho et al.'s
Algorithm 1), :func:`check_ddpm_step` (Algorithm 2), :func:`check_ddim_step`.
Chapter 2: :func:`check_adagn_modulation`; stretch: :func:`check_online_softmax_attention`.
Chapter 3: :func:`check_cross_attention`, :func:`check_classifier_free_guidance` (one batched pass).
Chapter 4: :func:`check_gaussian_kl` (the reparameterisation and the KL of a diagonal Gaussian),
:func:`check_latent_path` (a training latent from cached moments, a generated one decoded).
Chapter 5: :func:`check_rf_loss` (the rectified-flow loss), :func:`check_euler_step` (one step of the ODE),
:func:`check_reflow` (a flow's own coupling, and the 2-rectified flow trained on it).
Chapter 6: :func:`check_gated_residual` (adaLN-Zero's modulate and gate), :func:`check_joint_attention`
(one attention over [text, image], split back), :func:`check_rope` (Flux's rotary embedding over the axes).

**Stuck?** Every check has hints, each saying a little more than the one before, and a worked solution:
``check_q_sample.hint()``, ``check_q_sample.hint(2)``, ..., then ``check_q_sample.solution()`` (read from the
cell tagged ``solution`` in the chapter's notebook, the one source of the solutions). A "Not yet" verdict
ends by saying so.

Checks of code that calls a network pass it a fixed stand-in (:class:`ProbeDenoiser`,
:class:`ProbeConditionalDenoiser`): no training needed, and it records how it was called.

Layout: ``harness`` holds what every check shares (:class:`Case`, running the cases and printing the verdict,
hints, worked solutions, :func:`solved`, the tolerance); one file per chapter holds that chapter's checks, their
cases, probe models and named mistakes: ``ch01_ddpm``, ``ch02_adagn_attention``, ``ch03_cross_attention``,
``ch04_latent_diffusion``, ``ch05_rectified_flow``, ``ch06_mmdit``. A new chapter's checks go in a new file,
re-exported here. Import the checks from here: ``from course_lib.exercises import check_q_sample, solved``.
"""

from .ch01_ddpm import (ProbeDenoiser, check_ddim_step, check_ddpm_step, check_eps_to_x0, check_q_sample,
                        check_simple_loss)
from .ch02_adagn_attention import check_adagn_modulation, check_online_softmax_attention
from .ch03_cross_attention import ProbeConditionalDenoiser, check_classifier_free_guidance, check_cross_attention
from .ch04_latent_diffusion import check_gaussian_kl, check_latent_path
from .ch05_rectified_flow import check_euler_step, check_reflow, check_rf_loss
from .ch06_mmdit import check_gated_residual, check_joint_attention, check_rope
from .harness import hint, solution, solved

__all__ = ["check_q_sample", "check_eps_to_x0", "check_simple_loss", "check_ddpm_step", "check_ddim_step",
           "check_adagn_modulation", "check_online_softmax_attention", "check_cross_attention",
           "check_classifier_free_guidance", "check_gaussian_kl", "check_latent_path", "check_rf_loss",
           "check_euler_step", "check_reflow",
           "check_gated_residual", "check_joint_attention", "check_rope",
           "solved", "hint", "solution", "ProbeDenoiser", "ProbeConditionalDenoiser"]
