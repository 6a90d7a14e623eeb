"""The exercise checks accept right answers (however they are written) and explain typical wrong ones."""

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.exercises import check_adagn_modulation, check_ddim_step, check_eps_to_x0, check_q_sample
from course_lib.schedules import gather


def verdict(check, fn, capsys):
    ok = check(fn)
    return ok, capsys.readouterr().out


# --------------------------------------------------------------------------- q_sample


def q_sample_view(schedule, x0, t, eps):
    ab = schedule.alpha_bar[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def q_sample_gather(schedule, x0, t, eps):
    return gather(schedule.sqrt_alpha_bar, t) * x0 + gather(schedule.sqrt_one_minus_alpha_bar, t) * eps


def q_sample_library(schedule, x0, t, eps):
    return schedule.q_sample(x0, t, eps)


@pytest.mark.parametrize("fn", [q_sample_view, q_sample_gather, q_sample_library])
def test_q_sample_accepts_correct_versions(fn, capsys):
    ok, out = verdict(check_q_sample, fn, capsys)
    assert ok and out.startswith("Correct!")


def _with_coefs(make):
    """q_sample built from make(alpha_bar, alpha, beta, x0, eps), each coefficient [B, 1, 1, 1]."""
    def fn(schedule, x0, t, eps):
        c = lambda v: v[t].view(-1, 1, 1, 1)  # noqa: E731
        return make(c(schedule.alpha_bar), c(schedule.alphas), c(schedule.betas), x0, eps)
    return fn


def _draws_noise(schedule, x0, t, eps):
    return q_sample_view(schedule, x0, t, torch.randn_like(x0))


def _no_reshape(schedule, x0, t, eps):
    ab = schedule.alpha_bar[t]  # [B]: does not broadcast against [B, C, H, W]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def _in_place(schedule, x0, t, eps):
    x0.mul_(schedule.alpha_bar[t].sqrt().view(-1, 1, 1, 1))
    return x0 + (1 - schedule.alpha_bar[t]).sqrt().view(-1, 1, 1, 1) * eps


def _math_sqrt(schedule, x0, t, eps):
    ab = schedule.alpha_bar[t].view(-1, 1, 1, 1)
    return math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps


def _not_written(schedule, x0, t, eps):
    raise NotImplementedError


def _no_return(schedule, x0, t, eps):
    q_sample_view(schedule, x0, t, eps)


@pytest.mark.parametrize("fn, expected_words", [
    (_with_coefs(lambda ab, a, b, x0, eps: a.sqrt() * x0 + (1 - a).sqrt() * eps), "alpha_bar_t = alpha_0"),
    (_with_coefs(lambda ab, a, b, x0, eps: ab * x0 + (1 - ab) * eps), "forgot both square roots"),
    (_with_coefs(lambda ab, a, b, x0, eps: ab.sqrt() * x0 + (1 - ab) * eps), "noise coefficient needs a square root"),
    (_with_coefs(lambda ab, a, b, x0, eps: (1 - ab).sqrt() * x0 + ab.sqrt() * eps), "swapped"),
    (_with_coefs(lambda ab, a, b, x0, eps: ab.sqrt() * x0 + b.sqrt() * eps), "beta_t"),
    (_with_coefs(lambda ab, a, b, x0, eps: ab.sqrt() * x0 - (1 - ab).sqrt() * eps), "not subtracted"),
    (lambda schedule, x0, t, eps: x0, "no noise was added"),
    (_draws_noise, "draws random numbers"),
    (_no_reshape, "[B, 1, 1, 1]"),
    (_in_place, "in place"),
    (_math_sqrt, "torch.sqrt"),
    (_not_written, "not written yet"),
    (_no_return, "forget the `return`"),
    (lambda schedule, x0, t, eps: q_sample_view(schedule, x0, t, eps)[:, :1], "shape"),
    (lambda schedule, x0, t, eps: q_sample_view(schedule, x0, t, eps) + 0.01, "differs from the library"),
])
def test_q_sample_rejects_typical_mistakes_and_says_why(fn, expected_words, capsys):
    ok, out = verdict(check_q_sample, fn, capsys)
    assert not ok
    assert out.startswith("Not yet:")
    assert expected_words in out, out


def test_broadcast_along_the_width_is_caught_when_it_runs_silently(capsys):
    """With B equal to the image width, a [B] coefficient broadcasts without an error: the check names it."""
    from course_lib.exercises.ch01_ddpm import q_sample_cases as _q_sample_cases

    case = next(c for c in _q_sample_cases(0) if c.args[1].shape[0] == c.args[1].shape[-1])
    assert any("broadcast along the image width" in m for m in case.mistakes)

    calls = {"n": 0}

    def sometimes_flat(schedule, x0, t, eps):  # right when it fails loudly, wrong when it runs
        calls["n"] += 1
        if x0.shape[0] != x0.shape[-1]:
            return q_sample_view(schedule, x0, t, eps)
        return _no_reshape(schedule, x0, t, eps)

    ok, out = verdict(check_q_sample, sometimes_flat, capsys)
    assert not ok and "broadcast along the image width" in out


# --------------------------------------------------------------------------- eps -> x0


@pytest.mark.parametrize("fn", [
    lambda eps, x_t, ab: (x_t - (1 - ab).sqrt() * eps) / ab.sqrt(),
    lambda eps, x_t, ab: x_t / ab**0.5 - ((1 - ab) / ab) ** 0.5 * eps,   # the same, rearranged
    lambda eps, x_t, ab: torch.rsqrt(ab) * x_t - torch.sqrt(1 / ab - 1) * eps,
])
def test_eps_to_x0_accepts_correct_versions(fn, capsys):
    ok, out = verdict(check_eps_to_x0, fn, capsys)
    assert ok and out.startswith("Correct!")


@pytest.mark.parametrize("fn, expected_words", [
    (lambda eps, x_t, ab: (x_t - (1 - ab) * eps) / ab, "forgot the square roots"),
    (lambda eps, x_t, ab: x_t - (1 - ab).sqrt() * eps / ab.sqrt(), "put brackets"),
    (lambda eps, x_t, ab: (x_t + (1 - ab).sqrt() * eps) / ab.sqrt(), "subtracted"),
    (lambda eps, x_t, ab: x_t - (1 - ab).sqrt() * eps, "forgot to divide"),
    (lambda eps, x_t, ab: (x_t - ab.sqrt() * eps) / (1 - ab).sqrt(), "swapped"),
    (lambda eps, x_t, ab: x_t - eps, "forgets both coefficients"),
    (lambda eps, x_t, ab: (x_t - (1 - ab).sqrt() * eps) / ab.sqrt().mean(), "differs"),
])
def test_eps_to_x0_rejects_typical_mistakes(fn, expected_words, capsys):
    ok, out = verdict(check_eps_to_x0, fn, capsys)
    assert not ok and expected_words in out, out


# --------------------------------------------------------------------------- one DDIM step


def ddim_step(x_t, eps_hat, ab, ab_prev):
    x0 = (x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
    return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps_hat


def ddim_step_floats(x_t, eps_hat, ab, ab_prev):
    ab, ab_prev = float(ab), float(ab_prev)
    x0 = (x_t - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)
    return math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps_hat


@pytest.mark.parametrize("fn", [ddim_step, ddim_step_floats])
def test_ddim_step_accepts_correct_versions(fn, capsys):
    ok, out = verdict(check_ddim_step, fn, capsys)
    assert ok and out.startswith("Correct!")


def _ddim_variant(last_line):
    def fn(x_t, eps_hat, ab, ab_prev):
        x0 = (x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
        return last_line(x0, x_t, eps_hat, ab, ab_prev)
    return fn


@pytest.mark.parametrize("fn, expected_words", [
    (_ddim_variant(lambda x0, x_t, e, ab, abp: abp.sqrt() * x0), "direction"),
    (_ddim_variant(lambda x0, x_t, e, ab, abp: abp.sqrt() * x0 + (1 - ab).sqrt() * e), "noise level you step *to*"),
    (_ddim_variant(lambda x0, x_t, e, ab, abp: abp * x0 + (1 - abp) * e), "square roots"),
    (_ddim_variant(lambda x0, x_t, e, ab, abp: x0), "returned the predicted x_0"),
    (lambda x_t, e, ab, abp: ddim_step(x_t, e, abp, ab), "swapped"),
    (lambda x_t, e, ab, abp: ddim_step(x_t, e, ab, abp) + 0.1 * torch.randn_like(x_t), "random"),
])
def test_ddim_step_rejects_typical_mistakes(fn, expected_words, capsys):
    ok, out = verdict(check_ddim_step, fn, capsys)
    assert not ok and expected_words in out, out


def test_a_non_function_is_refused(capsys):
    assert not check_q_sample(42)
    assert "expected a function" in capsys.readouterr().out


# --------------------------------------------------------------------------- chapter 2: AdaGN modulation


def _adagn_right(h, emb_out, norm):
    scale, shift = emb_out.chunk(2, dim=1)
    return norm(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


def test_adagn_check_matches_the_library_block():
    """The check's answer is what AdaGNResBlock feeds (through SiLU) into its second convolution."""
    from course_lib.unet import AdaGNResBlock

    torch.manual_seed(0)
    block = AdaGNResBlock(8, 8, emb_dim=12, num_groups=4).eval()
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 12)
    seen = {}
    block.conv2.register_forward_pre_hook(lambda _m, args: seen.setdefault("in", args[0]))
    with torch.no_grad():
        block(x, emb)
        h = block.conv1(F.silu(block.norm1(x)))
        ours = F.silu(_adagn_right(h, block.emb_proj(F.silu(emb)), block.norm2))
    assert torch.allclose(seen["in"], ours, atol=1e-6)


def test_adagn_check_accepts_the_right_answer(capsys):
    assert check_adagn_modulation(_adagn_right)
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (lambda h, e, n: n(h) * (1 + e.chunk(2, 1)[1][:, :, None, None]) + e.chunk(2, 1)[0][:, :, None, None],
     "swapped"),
    (lambda h, e, n: n(h) * e.chunk(2, 1)[0][:, :, None, None] + e.chunk(2, 1)[1][:, :, None, None], "(1 + scale)"),
    (lambda h, e, n: n(h * (1 + e.chunk(2, 1)[0][:, :, None, None]) + e.chunk(2, 1)[1][:, :, None, None]),
     "after* the norm"),
    (lambda h, e, n: n(h) + e.chunk(2, 1)[1][:, :, None, None], "forgot the scale"),
    (lambda h, e, n: h * (1 + e.chunk(2, 1)[0][:, :, None, None]) + e.chunk(2, 1)[1][:, :, None, None],
     "apply the norm"),
    (lambda h, e, n: n(h) * (1 + e.chunk(2, 1)[0]) + e.chunk(2, 1)[1], "[B, C, 1, 1]"),
])
def test_adagn_check_names_the_mistake(wrong, words, capsys):
    assert not check_adagn_modulation(wrong)
    out = capsys.readouterr().out
    assert "Not yet" in out and words in out, out


def test_adagn_check_not_written(capsys):
    def stub(h, emb_out, norm):
        raise NotImplementedError

    assert not check_adagn_modulation(stub)
    assert "not written yet" in capsys.readouterr().out


# --------------------------------------------------------------------------- chapter 3: cross-attention


def _cross_right(x, context, mask, w_q, w_k, w_v):
    q, k, v = x @ w_q, context @ w_k, context @ w_v
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1) @ v


def test_cross_attention_check_agrees_with_the_library_attention():
    """The check's answer is course_lib.attention's softmax(QK^T/sqrt(d))V with a key-padding mask."""
    from course_lib.attention import attention
    from course_lib.exercises.ch03_cross_attention import cross_attention_cases as _cross_attention_cases

    for case in _cross_attention_cases(0):
        x, context, mask, w_q, w_k, w_v = case.args
        ours = attention((x @ w_q)[:, None], (context @ w_k)[:, None], (context @ w_v)[:, None],
                         mask[:, None, None, :], impl="einsum")[:, 0]
        assert torch.allclose(ours, case.expected, atol=1e-5)


def test_cross_attention_check_accepts_the_right_answer(capsys):
    from course_lib.exercises import check_cross_attention

    assert check_cross_attention(_cross_right)
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (lambda x, c, m, wq, wk, wv: ((x @ wq) @ (c @ wk).transpose(-2, -1) / wq.shape[1] ** 0.5).softmax(-1) @ (c @ wv),
     "mask is ignored"),
    (lambda x, c, m, wq, wk, wv: ((x @ wq) @ (c @ wk).transpose(-2, -1)).masked_fill(~m[:, None, :], float("-inf"))
     .softmax(-1) @ (c @ wv), "sqrt(d)"),
    (lambda x, c, m, wq, wk, wv: ((x @ wq) @ (c @ wk).transpose(-2, -1) / wq.shape[1] ** 0.5)
     .masked_fill(m[:, None, :], float("-inf")).softmax(-1) @ (c @ wv), "inverted"),
    (lambda x, c, m, wq, wk, wv: ((x @ wq) @ (c @ wk).transpose(-2, -1) / wq.shape[1] ** 0.5)
     .masked_fill(~m[:, None, :], float("-inf")).softmax(-1) @ (c @ wk), "values come from"),
    (lambda x, c, m, wq, wk, wv: (x @ wk) @ wq.T, "Hint"),
])
def test_cross_attention_check_names_the_mistake(wrong, words, capsys):
    from course_lib.exercises import check_cross_attention

    assert not check_cross_attention(wrong)
    out = capsys.readouterr().out
    assert "Not yet" in out and words in out, out


def test_a_nan_answer_is_named(capsys):
    from course_lib.exercises import check_cross_attention

    assert not check_cross_attention(lambda x, c, m, wq, wk, wv: _cross_right(x, c, m, wq, wk, wv) * float("nan"))
    assert "NaN" in capsys.readouterr().out


# --------------------------------------------------------------------------- chapter 1: the simple loss (Algorithm 1)


def simple_loss(model, schedule, x0, t, noise):
    ab = schedule.alpha_bar[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    return F.mse_loss(model(x_t, t), noise)


def simple_loss_library(model, schedule, x0, t, noise):
    from course_lib.parameterization import diffusion_loss

    return diffusion_loss(model, schedule, x0, t=t, noise=noise)


def test_simple_loss_check_uses_the_library_loss_on_a_real_unet():
    """The check's reference is diffusion_loss; the solution agrees with it on a real (tiny) UNet too."""
    from course_lib.parameterization import diffusion_loss
    from course_lib.schedules import NoiseSchedule
    from course_lib.unet import UNet, UNetConfig

    torch.manual_seed(0)
    model = UNet(UNetConfig.tiny()).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.05)  # not the zero output of a fresh UNet
    schedule = NoiseSchedule.linear(1000)
    x0, noise, t = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 3, 32, 32), torch.tensor([5, 700])
    with torch.no_grad():
        assert torch.allclose(simple_loss(model, schedule, x0, t, noise),
                              diffusion_loss(model, schedule, x0, t=t, noise=noise), rtol=1e-5)


@pytest.mark.parametrize("fn", [simple_loss, simple_loss_library])
def test_simple_loss_check_accepts_correct_versions(fn, capsys):
    from course_lib.exercises import check_simple_loss

    ok, out = verdict(check_simple_loss, fn, capsys)
    assert ok and out.startswith("Correct!")


def _loss_variant(make_xt=None, target="noise", t_shift=0, reduce=lambda e: e.square().mean()):
    def fn(model, schedule, x0, t, noise):
        ab = schedule.alpha_bar[t].view(-1, 1, 1, 1)
        x_t = (make_xt or (lambda ab: ab.sqrt() * x0 + (1 - ab).sqrt() * noise))(ab)
        goal = {"noise": noise, "x0": x0}[target]
        return reduce(goal - model(x_t, t + t_shift))
    return fn


def _loss_alpha_bar_prev(model, schedule, x0, t, noise):
    ab = schedule.alpha_bar_prev[t].view(-1, 1, 1, 1)
    return F.mse_loss(model(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t), noise)


def _loss_one_indexed(model, schedule, x0, t, noise):  # the paper's t = 1..T read as indices
    ab = schedule.alpha_bar[t + 1].view(-1, 1, 1, 1)
    return F.mse_loss(model(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t + 1), noise)


@pytest.mark.parametrize("fn_name, words", [
    ("no_sqrt", "forgot both square roots"),
    ("no_sqrt_noise", "noise coefficient of x_t needs a square root"),
    ("predicts_x0", "not the clean image x_0"),
    ("sum", "not their sum"),
    ("per_image_sum", "not a sum over the pixels of each image"),
    ("l1", "*squared* error"),
    ("model_t_plus_1", "call model(x_t, t)"),
    ("alpha_bar_prev", "alpha_bar_prev"),
    ("one_indexed", "0-indexed"),
    ("per_example", "0-d tensor"),
    ("draws_t", "draws random numbers"),
])
def test_simple_loss_check_names_the_mistake(fn_name, words, capsys):
    from course_lib.exercises import check_simple_loss

    def draws_t(model, schedule, x0, t, noise):
        return simple_loss(model, schedule, x0, torch.randint(0, 1000, t.shape), noise)

    fns = {
        "no_sqrt": lambda m, s, x0, t, n: _loss_variant(
            make_xt=lambda ab: ab * x0 + (1 - ab) * n)(m, s, x0, t, n),
        "no_sqrt_noise": lambda m, s, x0, t, n: _loss_variant(
            make_xt=lambda ab: ab.sqrt() * x0 + (1 - ab) * n)(m, s, x0, t, n),
        "predicts_x0": _loss_variant(target="x0"),
        "sum": _loss_variant(reduce=lambda e: e.square().sum()),
        "per_image_sum": _loss_variant(reduce=lambda e: e.square().flatten(1).sum(1).mean()),
        "l1": _loss_variant(reduce=lambda e: e.abs().mean()),
        "model_t_plus_1": _loss_variant(t_shift=1),
        "alpha_bar_prev": _loss_alpha_bar_prev,
        "one_indexed": _loss_one_indexed,
        "per_example": _loss_variant(reduce=lambda e: e.square().flatten(1).mean(1)),
        "draws_t": draws_t,
    }
    ok, out = verdict(check_simple_loss, fns[fn_name], capsys)
    assert not ok and out.startswith("Not yet:") and words in out, out


# --------------------------------------------------------------------------- chapter 1: one ancestral step (Algorithm 2)


def ddpm_step(schedule, x_t, eps_hat, t, z):
    alpha, alpha_bar, beta = schedule.alphas[t], schedule.alpha_bar[t], schedule.betas[t]
    mean = (x_t - beta / (1 - alpha_bar).sqrt() * eps_hat) / alpha.sqrt()
    return mean + schedule.posterior_variance[t].sqrt() * z if t > 0 else mean


def ddpm_step_posterior(schedule, x_t, eps_hat, t, z):  # the x0_hat form, without clipping
    t_batch = torch.full((len(x_t),), t)
    x0_hat = (x_t - (1 - schedule.alpha_bar[t]).sqrt() * eps_hat) / schedule.alpha_bar[t].sqrt()
    mean, var, _ = schedule.q_posterior(x0_hat, x_t, t_batch)
    return mean + var.sqrt() * z  # var = 0 at t = 0: no noise there


@pytest.mark.parametrize("fn", [ddpm_step, ddpm_step_posterior])
def test_ddpm_step_check_accepts_correct_versions(fn, capsys):
    from course_lib.exercises import check_ddpm_step

    ok, out = verdict(check_ddpm_step, fn, capsys)
    assert ok and out.startswith("Correct!")


def test_the_ddpm_step_loop_is_the_library_sampler():
    """Looping the solution over every t with the sampler's own noise draws reproduces ddpm_sample."""
    from course_lib.samplers import ddpm_sample
    from course_lib.schedules import NoiseSchedule
    from course_lib.toy import gaussian_eps_model

    schedule = NoiseSchedule.linear(50)
    model = gaussian_eps_model(0.3, 0.5, schedule)
    x_T = torch.randn(64, 1, generator=torch.Generator().manual_seed(0))
    library = ddpm_sample(model, schedule, x_T=x_T, clip_x0=False, progress=False,
                          generator=torch.Generator().manual_seed(1))
    g, x = torch.Generator().manual_seed(1), x_T.clone()
    for t in range(schedule.T - 1, -1, -1):
        eps_hat = model(x, torch.full((64,), t))
        z = torch.randn(x.shape, generator=g) if t > 0 else torch.zeros_like(x)  # the sampler draws none at t = 0
        x = ddpm_step(schedule, x[:, :, None, None], eps_hat[:, :, None, None], t, z[:, :, None, None])[:, :, 0, 0]
    assert torch.allclose(x, library, atol=1e-4)


def _step_variant(mean_fn, sigma_fn=lambda s, t: s.posterior_variance[t].sqrt(), noise_at_zero=False):
    def fn(schedule, x_t, eps_hat, t, z):
        a, ab, b = schedule.alphas[t], schedule.alpha_bar[t], schedule.betas[t]
        mean = mean_fn(x_t, eps_hat, a, ab, b)
        return mean + sigma_fn(schedule, t) * z if (t > 0 or noise_at_zero) else mean
    return fn


_eq11 = lambda x, e, a, ab, b: (x - b / (1 - ab).sqrt() * e) / a.sqrt()  # noqa: E731


@pytest.mark.parametrize("fn, words", [
    (_step_variant(lambda x, e, a, ab, b: x - b / (1 - ab).sqrt() * e), "1/sqrt(alpha_t) factor is missing"),
    (_step_variant(lambda x, e, a, ab, b: (x - b / (1 - ab).sqrt() * e) / ab.sqrt()), "not by sqrt(alpha_bar_t)"),
    (_step_variant(lambda x, e, a, ab, b: (x - b / (1 - ab) * e) / a.sqrt()), "a square root is missing"),
    (_step_variant(lambda x, e, a, ab, b: (x + b / (1 - ab).sqrt() * e) / a.sqrt()), "subtracted"),
    (_step_variant(_eq11, sigma_fn=lambda s, t: s.betas[t].sqrt()), "sigma_t^2 = beta_t"),
    (_step_variant(_eq11, sigma_fn=lambda s, t: s.posterior_variance[t]), "standard deviation"),
    (_step_variant(_eq11, sigma_fn=lambda s, t: s.betas[t].sqrt() * (t > 0)), "sigma_t^2 = beta_t"),
    (_step_variant(_eq11, sigma_fn=lambda s, t: 0.0), "no noise was added"),
    (_step_variant(_eq11, sigma_fn=lambda s, t: s.posterior_variance[t].sqrt() * (t > 1)), "0-indexed"),
    (_step_variant(_eq11, sigma_fn=lambda s, t: (0.5 * s.posterior_log_variance_clipped[t]).exp(),
                   noise_at_zero=True), "no noise at t = 0"),
    (lambda s, x, e, t, z: (x - (1 - s.alpha_bar[t]).sqrt() * e) / s.alpha_bar[t].sqrt(), "returned the predicted x_0"),
    (lambda s, x, e, t, z: ddpm_step(s, x, e, t, torch.randn_like(z)), "draws random numbers"),
])
def test_ddpm_step_check_names_the_mistake(fn, words, capsys):
    from course_lib.exercises import check_ddpm_step

    ok, out = verdict(check_ddpm_step, fn, capsys)
    assert not ok and out.startswith("Not yet:") and words in out, out


def test_ddpm_step_check_names_clipping(capsys):
    from course_lib.exercises import check_ddpm_step

    def clipped(schedule, x_t, eps_hat, t, z):
        ab = schedule.alpha_bar[t]
        x0_hat = ((x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()).clamp(-1, 1)
        mean, var, _ = schedule.q_posterior(x0_hat, x_t, torch.full((len(x_t),), t))
        return mean + var.sqrt() * z

    ok, out = verdict(check_ddpm_step, clipped, capsys)
    assert not ok and "clipped x0_hat" in out, out


# --------------------------------------------------------------------------- chapter 3: guidance in one batched pass


def cfg_batched(model, x, t, cond, uncond, w):
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond]))  # [2B, C, H, W]
    eps_cond, eps_uncond = out.chunk(2)
    return eps_uncond + w * (eps_cond - eps_uncond)


def test_cfg_check_accepts_the_batched_pass(capsys):
    from course_lib.exercises import check_classifier_free_guidance

    ok, out = verdict(check_classifier_free_guidance, cfg_batched, capsys)
    assert ok and out.startswith("Correct!") and "one forward pass" in out


def test_cfg_check_agrees_with_the_library_on_a_text_unet():
    """The solution gives ClassifierFreeGuidance's answer on a real text-conditional UNet (with masks off)."""
    from course_lib.guidance import ClassifierFreeGuidance
    from course_lib.unet import UNet, UNetConfig

    torch.manual_seed(0)
    model = UNet(dataclasses_replace(UNetConfig.tiny(), context_dim=8)).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.05)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([100, 800])
    cond, uncond = torch.randn(2, 4, 8), torch.randn(1, 4, 8).expand(2, 4, 8)
    with torch.no_grad():
        ours = cfg_batched(lambda x_, t_, c_: model(x_, t_, c_), x, t, cond, uncond, 3.0)
        library = ClassifierFreeGuidance(model, cond, uncond_context=uncond, guidance=3.0)(x, t)
    assert torch.allclose(ours, library, atol=1e-5)


def dataclasses_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def _two_calls(model, x, t, cond, uncond, w):
    eps_cond, eps_uncond = model(x, t, cond), model(x, t, uncond)
    return eps_uncond + w * (eps_cond - eps_uncond)


def _with_outputs(combine, order="cu"):
    def fn(model, x, t, cond, uncond, w):
        contexts = [cond, uncond] if order == "cu" else [uncond, cond]
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat(contexts))
        c, u = out.chunk(2)
        return combine(c, u, w)
    return fn


@pytest.mark.parametrize("fn, words", [
    (_two_calls, "calls the model twice"),
    (_with_outputs(lambda c, u, w: u + w * (c - u), order="uc"), "halves are swapped"),
    (_with_outputs(lambda c, u, w: c + w * (c - u)), "Ho & Salimans' form"),
    (_with_outputs(lambda c, u, w: u + w * c - u), "w multiplies the difference"),
    (_with_outputs(lambda c, u, w: c), "conditional prediction alone"),
    (_with_outputs(lambda c, u, w: u), "unconditional prediction alone"),
    (lambda m, x, t, c, u, w: m(torch.cat([x, x]), t, torch.cat([c, u])), "torch.cat([t, t])"),
    (lambda m, x, t, c, u, w: cfg_batched(m, x, t, c, u, w).repeat(2, 1, 1, 1), "shape"),
])
def test_cfg_check_names_the_mistake(fn, words, capsys):
    from course_lib.exercises import check_classifier_free_guidance

    ok, out = verdict(check_classifier_free_guidance, fn, capsys)
    assert not ok and out.startswith("Not yet:") and words in out, out


# --------------------------------------------------------------------------- chapter 2 (stretch): online softmax


def online_softmax_attention(q, k, v, mask, chunk_size):
    q = q * q.shape[-1] ** -0.5
    m = torch.full((*q.shape[:-1], 1), float("-inf"))
    l = torch.zeros(*q.shape[:-1], 1)
    o = torch.zeros(*q.shape[:-1], v.shape[-1])
    for start in range(0, k.shape[-2], chunk_size):
        cols = slice(start, start + chunk_size)
        s = q @ k[:, :, cols].transpose(-2, -1)
        if mask is not None:
            s = s.masked_fill(~mask[..., cols], float("-inf"))
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
        safe = torch.where(m_new == float("-inf"), 0.0, m_new)
        p, c = torch.exp(s - safe), torch.exp(m - safe)
        l, o, m = l * c + p.sum(-1, keepdim=True), o * c + p @ v[:, :, cols], m_new
    return o / torch.where(l == 0, 1.0, l)


def test_online_softmax_check_accepts_the_right_answer(capsys):
    from course_lib.attention import chunked_attention
    from course_lib.exercises import check_online_softmax_attention

    ok, out = verdict(check_online_softmax_attention, online_softmax_attention, capsys)
    assert ok and out.startswith("Correct!")
    # the library's chunked attention (queries and keys in blocks) passes as well
    assert check_online_softmax_attention(lambda q, k, v, m, c: chunked_attention(q, k, v, m, chunk_size=2,
                                                                                 key_chunk_size=c))


def _osa_variant(**kw):
    from course_lib.exercises.ch02_adagn_attention import online_softmax_variant as _online_softmax_variant

    return lambda q, k, v, mask, c: _online_softmax_variant(q, k, v, mask, c, **kw)


def _osa_large_negative(q, k, v, mask, chunk_size):  # -1e9 instead of -inf: an all-masked row averages v
    return online_softmax_attention(q, k, v, None, chunk_size) if mask is None else _osa_fill(q, k, v, mask, chunk_size)


def _osa_fill(q, k, v, mask, chunk_size):
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return scores.masked_fill(~mask, -1e9).softmax(-1) @ v


@pytest.mark.parametrize("fn, words", [
    (_osa_variant(rescale_o=False), "running output must be rescaled"),
    (_osa_variant(rescale_l=False), "running sum must be rescaled"),
    (_osa_variant(rescale_o=False, rescale_l=False), "neither the running sum nor the running output"),
    (_osa_variant(scale=False), "sqrt(d)"),
    (lambda q, k, v, mask, c: online_softmax_attention(q, k, v, None, c), "mask is ignored"),
    (_osa_variant(guard_empty_rows=False), "shift by 0 where m is -inf"),  # -inf - (-inf) = NaN
    (_osa_large_negative, "attends to nothing"),
    (lambda q, k, v, mask, c: online_softmax_attention(q, k, v, mask, c)[..., :1, :], "one row per query"),
])
def test_online_softmax_check_names_the_mistake(fn, words, capsys):
    from course_lib.exercises import check_online_softmax_attention

    ok, out = verdict(check_online_softmax_attention, fn, capsys)
    assert not ok and out.startswith("Not yet:") and words in out, out


# --------------------------------------------------------------------------- chapter 4: reparameterisation and KL


def reparameterize(mean, logvar, eps):
    return mean + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mean, logvar):
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))


def test_gaussian_kl_check_accepts_right_answers_however_written(capsys):
    from course_lib.exercises import check_gaussian_kl

    ok, out = verdict(lambda f: check_gaussian_kl(*f), (reparameterize, gaussian_kl), capsys)
    assert ok and out.startswith("Correct!") and "gradients flow" in out
    # the same functions written another way: sqrt of the variance, torch.distributions' closed form
    sqrt_form = lambda m, lv, e: m + lv.exp().sqrt() * e  # noqa: E731

    def distributions_form(m, lv):
        q = torch.distributions.Normal(m, torch.exp(0.5 * lv))
        p = torch.distributions.Normal(torch.zeros_like(m), torch.ones_like(m))
        return torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3))

    assert check_gaussian_kl(sqrt_form, distributions_form)


def test_gaussian_kl_check_agrees_with_the_autoencoder():
    """The solution is what AutoencoderKL's posterior does: the same z for the same eps, and the same KL."""
    from course_lib.autoencoder import AutoencoderConfig, AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(AutoencoderConfig.tiny()).eval()
    with torch.no_grad():
        posterior = model.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
        z = posterior.sample(torch.Generator().manual_seed(3))
        eps = torch.randn(posterior.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(reparameterize(posterior.mean, posterior.logvar, eps), z, atol=1e-6)
    assert torch.allclose(gaussian_kl(posterior.mean, posterior.logvar), posterior.kl(), rtol=1e-5)


def _detached_z(mean, logvar, eps):
    return reparameterize(mean, logvar, eps).detach()


def _detached_std(mean, logvar, eps):
    return mean + torch.exp(0.5 * logvar).detach() * eps


def _fresh_noise(mean, logvar, eps):
    return reparameterize(mean, logvar, torch.randn_like(eps))


def _via_math(mean, logvar, eps):
    return mean + math.exp(0.5 * logvar) * eps


def _via_numpy(mean, logvar, eps):  # right numbers, but not through autograd
    return torch.from_numpy(reparameterize(mean, logvar, eps).numpy())


@pytest.mark.parametrize("rep, words", [
    (lambda m, lv, e: m + lv.exp() * e, "you used the variance"),
    (lambda m, lv, e: m + lv * e, "not logvar itself"),
    (lambda m, lv, e: m + torch.exp(-0.5 * lv) * e, "1 / std"),
    (lambda m, lv, e: m.clone(), "mode()"),
    (lambda m, lv, e: torch.exp(0.5 * lv) * e, "the mean is missing"),
    (lambda m, lv, e: torch.exp(0.5 * lv) + m * e, "mean and std are swapped"),
    (lambda m, lv, e: lv + torch.exp(0.5 * m) * e, "mean and logvar are swapped"),
    (lambda m, lv, e: (m + torch.exp(0.5 * lv)) * e, "(mean + std) * eps"),
    (lambda m, lv, e: m - torch.exp(0.5 * lv) * e, "add the noise"),
    (_fresh_noise, "draws random numbers"),
    (_via_math, "torch.exp"),
    (lambda m, lv, e: reparameterize(m, lv, e).mean(dim=1), "shape"),
    (lambda m, lv, e: e.mul_(torch.exp(0.5 * lv)).add_(m), "in place"),
    (_detached_z, "no gradient"),
    (_detached_std, "dz/dlogvar"),
    (_via_numpy, "require gradients"),
])
def test_gaussian_kl_check_names_the_reparameterisation_mistake(rep, words, capsys):
    from course_lib.exercises import check_gaussian_kl

    ok = check_gaussian_kl(rep, gaussian_kl)
    out = capsys.readouterr().out
    assert not ok and out.startswith("Not yet:") and words in out, out


def _kl_terms(make):
    return lambda m, lv: make(m, lv, lv.exp()).sum(dim=(1, 2, 3))


@pytest.mark.parametrize("kl, words", [
    (_kl_terms(lambda m, lv, v: m ** 2 + v - 1 - lv), "factor 1/2 is missing"),
    (lambda m, lv: 0.5 * (m ** 2 + lv.exp() - 1 - lv).mean(dim=(1, 2, 3)), "*sum* of their KLs"),
    (_kl_terms(lambda m, lv, v: 0.5 * (m ** 2 + v - 1 + lv)), "log-variance is subtracted"),
    (_kl_terms(lambda m, lv, v: 0.5 * (m ** 2 + v - lv)), "the -1 is missing"),
    (_kl_terms(lambda m, lv, v: 0.5 * (v - 1 - lv)), "mean^2 term is missing"),
    (_kl_terms(lambda m, lv, v: 0.5 * (m + v - 1 - lv)), "must be squared"),
    (_kl_terms(lambda m, lv, v: 0.5 * (m ** 2 + v.sqrt() - 1 - lv)), "not the standard deviation"),
    (_kl_terms(lambda m, lv, v: 0.5 * (m ** 2 + v ** 2 - 1 - 2 * lv)), "not log(sigma)"),
    (_kl_terms(lambda m, lv, v: 0.5 * (lv + (1 + m ** 2) / v - 1)), "the other direction"),
    (lambda m, lv: gaussian_kl(m, lv).sum(), "one number per image"),
    (lambda m, lv: 0.5 * (m ** 2 + lv.exp() - 1 - lv).sum(dim=(2, 3)), "one number per image"),
    (lambda m, lv: gaussian_kl(m, lv).detach(), "no gradient back"),
])
def test_gaussian_kl_check_names_the_kl_mistake(kl, words, capsys):
    from course_lib.exercises import check_gaussian_kl

    ok = check_gaussian_kl(reparameterize, kl)
    out = capsys.readouterr().out
    assert not ok and out.startswith("Not yet:") and words in out, out


def test_gaussian_kl_check_not_written_and_not_functions(capsys):
    from course_lib.exercises import check_gaussian_kl

    def not_yet(mean, logvar, eps):
        raise NotImplementedError

    assert not check_gaussian_kl(not_yet, gaussian_kl)
    assert "not written yet" in capsys.readouterr().out
    assert not check_gaussian_kl(reparameterize(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1),
                                                torch.zeros(1, 1, 1, 1)), gaussian_kl)
    assert "takes two functions" in capsys.readouterr().out


# --------------------------------------------------------------------------- chapter 4: the latent data path


def to_latent(moments, eps, s, shift):
    mean, logvar = moments.chunk(2, dim=1)
    return (mean + torch.exp(0.5 * logvar) * eps - shift) * s


def decode_latent(z_gen, decoder, s, shift):
    return decoder(z_gen / s + shift)


def test_latent_path_check_accepts_the_solution_and_agrees_with_the_library(capsys):
    """The solution is LatentSplit.latents (training data from cached moments) and AutoencoderKL.decode_latents."""
    from course_lib.autoencoder import AutoencoderConfig, AutoencoderKL
    from course_lib.exercises import check_latent_path
    from course_lib.latents import LatentSplit

    ok, out = verdict(lambda f: check_latent_path(*f), (to_latent, decode_latent), capsys)
    assert ok and out.startswith("Correct!")
    g = torch.Generator().manual_seed(3)
    moments = torch.cat([torch.randn(5, 4, 8, 8, generator=g), -3 + torch.rand(5, 4, 8, 8, generator=g)], dim=1)
    split = LatentSplit(moments, torch.arange(5), scaling_factor=0.7, shift_factor=0.4, source="test")
    eps = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    library = split.latents(torch.arange(5), torch.Generator().manual_seed(9))
    torch.testing.assert_close(to_latent(moments, eps, 0.7, 0.4), library)
    torch.manual_seed(0)
    ae = AutoencoderKL(AutoencoderConfig.tiny(shift_factor=0.4)).eval()
    ae.set_scaling_factor(0.7)
    with torch.no_grad():
        torch.testing.assert_close(decode_latent(library, ae.decode, 0.7, 0.4), ae.decode_latents(library))


@pytest.mark.parametrize("wrong_to, wrong_decode, words", [
    (lambda m, e, s, sh: (m.chunk(2, dim=1)[0] - sh) * s, decode_latent, "posterior mean"),
    (lambda m, e, s, sh: (m.chunk(2, dim=1)[0] + m.chunk(2, dim=1)[1].exp() * e - sh) * s, decode_latent,
     "exp(logvar / 2), not exp(logvar)"),
    (lambda m, e, s, sh: to_latent(m, e, 1.0, 0.0) * s - sh, decode_latent, "shift and scale in the wrong order"),
    (lambda m, e, s, sh: to_latent(m, e, s, 0.0), decode_latent, "the shift is missing"),
    (to_latent, lambda z, d, s, sh: d(z + sh), "the 1/s is missing"),
    (to_latent, lambda z, d, s, sh: d((z + sh) / s), "undo them in reverse"),
    (to_latent, lambda z, d, s, sh: d((z / s + sh).clamp(-1, 1)), "clamped the latent"),
    (to_latent, lambda z, d, s, sh: d(z.clamp(-1, 1) / s + sh), "clamped the generated latent"),
    (to_latent, lambda z, d, s, sh: d(z / s + sh).clamp(-1, 1), "clamped the decoded images"),
    (to_latent, lambda z, d, s, sh: d(z / s), "the shift is not added back"),
])
def test_latent_path_check_names_the_mistake(wrong_to, wrong_decode, words, capsys):
    from course_lib.exercises import check_latent_path

    ok = check_latent_path(wrong_to, wrong_decode)
    out = capsys.readouterr().out
    assert not ok and out.startswith("Not yet") and words in out, out


# --------------------------------------------------------------------------- chapter 5: rectified flow


def rf_loss(model, x0, noise, t):
    tb = t.reshape(-1, 1, 1, 1)
    return ((noise - x0) - model((1 - tb) * x0 + tb * noise, t)).square().mean()


def euler_step(v, x, t, t_next):
    return x + (t_next - t) * v(x, t)


def reflow_pairs_of(velocity, noise, num_steps):
    x, times = noise, torch.linspace(1.0, 0.0, num_steps + 1)
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * velocity(x, torch.full((len(x),), float(t)))
    return x, noise


def test_reflow_check_accepts_the_solution_and_agrees_with_the_library(capsys):
    from course_lib.exercises import check_reflow
    from course_lib.flow import flow_sample
    from course_lib.toy import eight_gaussians

    ok, out = verdict(check_reflow, reflow_pairs_of, capsys)
    assert ok and out.startswith("Correct!") and "straightened" in out, out
    data, z = eight_gaussians(), torch.randn(50, 2)
    x0, x1 = reflow_pairs_of(lambda x, t: data.flow_velocity(x, t), z, 8)
    torch.testing.assert_close(x0, flow_sample(lambda x, t: data.flow_velocity(x, t), x_T=z, num_steps=8))


def _shuffled(v, z, n):
    x0, x1 = reflow_pairs_of(v, z, n)
    return x0[torch.randperm(len(x0), generator=torch.Generator().manual_seed(0))], x1


def _from_data(v, z, n):
    from course_lib.toy import eight_gaussians
    return eight_gaussians().sample(len(z), seed=3), z


def _noise_at_zero(v, z, n):
    x, times = z, torch.linspace(1.0, 0.0, n + 1)
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * v(x, torch.full((len(x),), 1 - float(t)))
    return x, z


def _wrong_way(v, z, n):
    x, times = z, torch.linspace(1.0, 0.0, n + 1)
    for t, t_next in zip(times[:-1], times[1:]):
        x = x - (t_next - t) * v(x, torch.full((len(x),), float(t)))
    return x, z


@pytest.mark.parametrize("wrong, words", [
    (lambda v, z, n: reflow_pairs_of(v, z, n)[::-1], "the pair is reversed"),
    (lambda v, z, n: (reflow_pairs_of(v, z, n)[0], torch.randn_like(z)), "must be the noise you were given"),
    (_shuffled, "not in order"),
    (_from_data, "does not depend on the noise"),
    (_noise_at_zero, "asked at 1 - t"),
    (_wrong_way, "the steps go the wrong way"),
    (lambda v, z, n: (reflow_pairs_of(v, z, n)[0] + 0.01 * torch.randn_like(z), z), "different x0"),
    (lambda v, z, n: reflow_pairs_of(v, z, max(1, n // 4)), "differs from flow_sample"),
])
def test_reflow_check_names_the_mistake(wrong, words, capsys):
    from course_lib.exercises import check_reflow

    ok = check_reflow(wrong)
    out = capsys.readouterr().out
    assert not ok and out.startswith("Not yet") and words in out, out


def test_rf_loss_check_accepts_the_solution_and_agrees_with_the_process(capsys):
    from course_lib.exercises import ProbeDenoiser, check_rf_loss
    from course_lib.processes import RectifiedFlowProcess

    ok, out = verdict(check_rf_loss, rf_loss, capsys)
    assert ok and out.startswith("Correct!")
    model, x0, noise, t = ProbeDenoiser(), torch.rand(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(rf_loss(model, x0, noise, t), RectifiedFlowProcess(time_scale=1.0).loss(model, x0, t, noise))


@pytest.mark.parametrize("wrong, words", [
    (lambda m, x0, e, t: ((x0 - e) - m((1 - t.reshape(-1, 1, 1, 1)) * x0 + t.reshape(-1, 1, 1, 1) * e, t)).square().mean(),
     "wrong way"),
    (lambda m, x0, e, t: (e - m((1 - t.reshape(-1, 1, 1, 1)) * x0 + t.reshape(-1, 1, 1, 1) * e, t)).square().mean(),
     "DDPM's target"),
    (lambda m, x0, e, t: ((x0 - e) - m(t.reshape(-1, 1, 1, 1) * x0 + (1 - t.reshape(-1, 1, 1, 1)) * e, t)).square()
     .mean(), "Liu et al.'s convention"),
    (lambda m, x0, e, t: ((e - x0) - m((1 - t.reshape(-1, 1, 1, 1)) * x0 + t.reshape(-1, 1, 1, 1) * e, 1 - t)).square()
     .mean(), "time 1 - t"),
])
def test_rf_loss_check_names_the_mistake(wrong, words, capsys):
    from course_lib.exercises import check_rf_loss

    ok, out = verdict(check_rf_loss, wrong, capsys)
    assert not ok and words in out


def test_euler_check_accepts_the_solution_and_agrees_with_flow_sample(capsys):
    from course_lib.exercises import check_euler_step
    from course_lib.flow import flow_sample

    ok, out = verdict(check_euler_step, euler_step, capsys)
    assert ok and out.startswith("Correct!")
    field = lambda x, t: torch.sin(x) + float(t[0] if isinstance(t, torch.Tensor) else t)  # noqa: E731
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(flow_sample(field, x_T=x, times=[1.0, 0.6, 0.0]),
                               euler_step(field, euler_step(field, x, 1.0, 0.6), 0.6, 0.0))


@pytest.mark.parametrize("wrong, words", [
    (lambda v, x, t, tn: x + (t - tn) * v(x, t), "wrong way"),
    (lambda v, x, t, tn: x + (tn - t) * v(x, tn), "where you are"),
    (lambda v, x, t, tn: x + v(x, t), "full unit step"),
    (lambda v, x, t, tn: x - t * v(x, t), "x0_hat"),
])
def test_euler_check_names_the_mistake(wrong, words, capsys):
    from course_lib.exercises import check_euler_step

    ok, out = verdict(check_euler_step, wrong, capsys)
    assert not ok and words in out


# --------------------------------------------------------------------------- chapter 6: the MM-DiT block


def gated_residual(x, f, shift, scale, gate):
    return x + gate * f(F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift)


def joint_attention(txt_q, txt_k, txt_v, img_q, img_k, img_v):
    q, k, v = (torch.cat(p, dim=2) for p in ((txt_q, img_q), (txt_k, img_k), (txt_v, img_v)))
    out = F.scaled_dot_product_attention(q, k, v)
    return out[:, :, :txt_q.shape[2]], out[:, :, txt_q.shape[2]:]


def test_gated_residual_check_accepts_the_solution_and_agrees_with_the_block(capsys):
    from course_lib.exercises import check_gated_residual
    from course_lib.mmdit import SingleStreamBlock

    ok, out = verdict(check_gated_residual, gated_residual, capsys)
    assert ok and out.startswith("Correct!")
    torch.manual_seed(0)
    block = SingleStreamBlock(16, 2)
    torch.nn.init.normal_(block.modulation.lin.weight, std=0.3)
    x, vec, angles = torch.randn(2, 5, 16), torch.randn(2, 16), torch.zeros(5, 4)
    mod, _ = block.modulation(vec)

    def sublayer(h):  # the block's attention and MLP branch, given the modulated input
        qkv, mlp = torch.split(block.linear1(h), [48, block.mlp_hidden_dim], dim=-1)
        q, k, v = qkv.unflatten(-1, (3, 2, 8)).permute(2, 0, 3, 1, 4)
        q, k = block.norm(q, k)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return block.linear2(torch.cat([attn, block.mlp_act(mlp)], dim=-1))

    torch.testing.assert_close(gated_residual(x, sublayer, mod.shift, mod.scale, mod.gate), block(x, vec, angles))


@pytest.mark.parametrize("wrong, words", [
    (lambda x, f, sh, sc, g: x + g * f(F.layer_norm(x, x.shape[-1:], eps=1e-6) * sc + sh), "(1 + scale)"),
    (lambda x, f, sh, sc, g: x + f(F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + sc) + sh), "gate is missing"),
    (lambda x, f, sh, sc, g: g * f(F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + sc) + sh), "residual is missing"),
    (lambda x, f, sh, sc, g: x + g * f(F.layer_norm(x * (1 + sc) + sh, x.shape[-1:], eps=1e-6)), "normalise first"),
    (lambda x, f, sh, sc, g: x + g * f(F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + sh) + sc), "swapped"),
])
def test_gated_residual_check_names_the_mistake(wrong, words, capsys):
    from course_lib.exercises import check_gated_residual

    ok, out = verdict(check_gated_residual, wrong, capsys)
    assert not ok and words in out


def test_joint_attention_check_accepts_the_solution_and_agrees_with_the_block(capsys):
    from course_lib.exercises import check_joint_attention
    from course_lib.mmdit import JointAttention

    ok, out = verdict(check_joint_attention, joint_attention, capsys)
    assert ok and out.startswith("Correct!")
    q, k, v = (torch.randn(2, 2, 3 + 8, 4) for _ in range(3))
    txt_out, img_out = joint_attention(q[:, :, :3], k[:, :, :3], v[:, :, :3], q[:, :, 3:], k[:, :, 3:], v[:, :, 3:])
    no_rotation = torch.zeros(11, 2)  # angle 0: RoPE off
    torch.testing.assert_close(torch.cat([txt_out, img_out], dim=2), JointAttention()(q, k, v, no_rotation))


def _separate(tq, tk, tv, iq, ik, iv):
    return F.scaled_dot_product_attention(tq, tk, tv), F.scaled_dot_product_attention(iq, ik, iv)


def _cross(tq, tk, tv, iq, ik, iv):
    return F.scaled_dot_product_attention(tq, ik, iv), F.scaled_dot_product_attention(iq, tk, tv)


def _joined_whole(tq, tk, tv, iq, ik, iv):
    q, k, v = torch.cat([tq, iq], 2), torch.cat([tk, ik], 2), torch.cat([tv, iv], 2)
    return F.scaled_dot_product_attention(q, k, v)  # not split back


@pytest.mark.parametrize("wrong, words", [(_separate, "only to itself"), (_cross, "only to the other"),
                                          (_joined_whole, "return two tensors")])
def test_joint_attention_check_names_the_mistake(wrong, words, capsys):
    from course_lib.exercises import check_joint_attention

    ok, out = verdict(check_joint_attention, wrong, capsys)
    assert not ok and words in out


# --------------------------------------------------------------------------- hints and solutions

from course_lib import exercises  # noqa: E402

CHECKS = [getattr(exercises, name) for name in exercises.__all__ if name.startswith("check_")]


def test_every_check_has_hints_and_a_solution_in_the_notebooks(capsys):
    assert len(CHECKS) == 17
    for check in CHECKS:
        assert len(check.hints) >= 2 and check.exercise == check.__name__.removeprefix("check_")
        check.solution()
        out = capsys.readouterr().out
        assert out.startswith("A solution, from notebooks/0") and f"{check.__name__}(" in out
        assert "NotImplementedError" not in out  # the worked answer, not the stub


def test_hints_come_one_at_a_time_then_the_solution(capsys):
    check_q_sample.hint()
    first = capsys.readouterr().out
    assert first.startswith("Hint 1 of 3 (q_sample)") and "check_q_sample.hint(2)" in first
    check_q_sample.hint(3)
    last = capsys.readouterr().out
    assert "[B, 1, 1, 1]" not in last and "last hint" in last and "check_q_sample.solution()" in last
    assert check_q_sample.hint(2) is None and "[B, 1, 1, 1]" in capsys.readouterr().out
    with pytest.raises(ValueError, match="hints 1 to 3, not 4"):
        check_q_sample.hint(4)
    with pytest.raises(ValueError, match="not one of the course's checks"):
        exercises.hint(print)


def test_a_wrong_answer_points_to_the_hints_a_right_one_does_not(capsys):
    ok, out = verdict(check_q_sample, lambda schedule, x0, t, eps: x0, capsys)
    assert not ok and "Stuck? check_q_sample.hint()" in out
    ok, out = verdict(check_q_sample, q_sample_view, capsys)
    assert ok and "Stuck" not in out


def test_solution_names_the_missing_notebooks(monkeypatch, tmp_path):
    from course_lib import classroom

    monkeypatch.setattr(classroom, "SOURCES", tmp_path)
    monkeypatch.setattr(classroom.sources, "__defaults__", (tmp_path,))
    with pytest.raises(LookupError, match="this installation has none"):
        check_q_sample.solution()


# --------------------------------------------------------------------------- chapter 6: RoPE


def rope(x, positions, axes_dim, theta=10_000.0):
    angles = torch.cat([positions[:, a, None].double() * theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
                        for a, dim in enumerate(axes_dim)], dim=-1).float()  # [L, d / 2]
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def _rope_angles_with(positions, axes_dim, theta, exponent):
    return torch.cat([positions[:, a, None] * theta ** (-torch.arange(0, dim, 2) / exponent(dim))
                      for a, dim in enumerate(axes_dim)], dim=-1)


def _rotate(x, angles, sign=1.0):
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = angles.cos(), sign * angles.sin()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def _rotate_half(x, angles):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], dim=-1)


def _rope_half_split(x, positions, axes_dim, theta=10_000.0):
    return _rotate_half(x, _rope_angles_with(positions, axes_dim, theta, lambda dim: dim))


def _rope_half_split_per_axis(x, positions, axes_dim, theta=10_000.0):
    angles = _rope_angles_with(positions, axes_dim, theta, lambda dim: dim).split([d // 2 for d in axes_dim], -1)
    return torch.cat([_rotate_half(part, a) for part, a in zip(x.split(list(axes_dim), -1), angles)], dim=-1)


@pytest.mark.parametrize("wrong, words", [
    (_rope_half_split, "rotate-half split"),
    (_rope_half_split_per_axis, "within each axis's share too"),
    (lambda x, p, ax, th=1e4: _rotate(x, _rope_angles_with(p, ax, th, lambda dim: 2 * dim)), "exponent -j / d_axis"),
    (lambda x, p, ax, th=1e4: _rotate(x, _rope_angles_with(p, ax, th, lambda dim: sum(ax))), "not the whole head"),
    (lambda x, p, ax, th=1e4: rope(x, p[:, -2:-1].expand(-1, len(ax)), ax, th), "all by one axis"),
    (lambda x, p, ax, th=1e4: _rotate(x, _rope_angles_with(p, ax, th, lambda dim: dim), sign=-1.0), "other way"),
    (lambda x, p, ax, th=1e4: rope(x, p.flip(-1), ax, th), "wrong positions"),
    (lambda x, p, ax, th=1e4: x * 1.5, "keeps every token's length"),
    (lambda x, p, ax, th=1e4: rope(x, p ** 2, ax, th), "score unchanged"),
])
def test_rope_check_names_the_mistake(wrong, words, capsys):
    from course_lib.exercises import check_rope

    ok, out = verdict(check_rope, wrong, capsys)
    assert not ok and words in out, out


def test_rope_check_accepts_the_solution_and_agrees_with_the_model(capsys):
    from course_lib.exercises import check_rope
    from course_lib.mmdit import apply_rope, image_positions, rope_angles

    ok, out = verdict(check_rope, rope, capsys)
    assert ok and out.startswith("Correct!")
    x, positions = torch.randn(1, 2, 16, 64), image_positions(4, 4)
    torch.testing.assert_close(rope(x, positions, (16, 24, 24)), apply_rope(x, rope_angles(positions, (16, 24, 24))))
