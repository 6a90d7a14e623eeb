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
    from course_lib.exercises import _q_sample_cases

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
    from course_lib.exercises import _cross_attention_cases

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
