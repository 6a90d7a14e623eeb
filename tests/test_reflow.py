"""Reflow on the 2-D toy: a trained rectified flow beats DDIM at one step, and reflow straightens it."""

import pytest
import torch

from course_lib.flow import straightness
from course_lib.metrics import wasserstein2
from course_lib.processes import DDPMProcess, RectifiedFlowProcess
from course_lib.reflow import reflow_loss, reflow_pairs
from course_lib.toy import ToyMLP, eight_gaussians, toy_batches
from course_lib.trainer import TrainConfig, fit


@pytest.fixture(scope="module")
def toy_runs():
    torch.set_num_threads(1)
    data = eight_gaussians()
    cfg = TrainConfig(max_steps=800, batch_size=256, lr=2e-3, warmup_steps=50, ema_decay=0.99, checkpoint_minutes=None,
                      progress=False)
    rf, ddpm = RectifiedFlowProcess(), DDPMProcess("linear", 1000)
    batches = toy_batches(lambda n, g: data.sample(n, g), 256)
    torch.manual_seed(0)
    flow = fit(ToyMLP(hidden=64), lambda m, b: rf.loss(m, b[0]), batches, cfg, device="cpu").ema
    torch.manual_seed(0)
    eps_model = fit(ToyMLP(hidden=64), lambda m, b: ddpm.loss(m, b[0]), batches, cfg, device="cpu").ema
    pairs = reflow_pairs(flow, rf, torch.randn(8000, 2, generator=torch.Generator().manual_seed(11)), num_steps=50)

    def pair_batches(step):
        idx = torch.randint(0, len(pairs), (256,), generator=torch.Generator().manual_seed(step))
        return pairs.batch(idx)

    torch.manual_seed(0)
    flow2 = fit(ToyMLP(hidden=64), lambda m, b: reflow_loss(m, rf, *b), pair_batches, cfg, device="cpu").ema
    return {"data": data, "rf": rf, "ddpm": ddpm, "flow": flow, "eps_model": eps_model, "flow2": flow2,
            "pairs": pairs, "test": data.sample(1000, seed=5),
            "noise": torch.randn(1000, 2, generator=torch.Generator().manual_seed(9))}


def test_reflow_pairs_are_the_flow_s_own_samples(toy_runs):
    x0, x1 = toy_runs["pairs"].tensors
    assert x0.shape == x1.shape == (8000, 2)
    torch.testing.assert_close(x0[:5], toy_runs["rf"].sample(toy_runs["flow"], x_T=x1[:5], sampler="heun",
                                                              num_steps=50))
    with pytest.raises(TypeError, match="rectified flow"):
        reflow_pairs(toy_runs["eps_model"], toy_runs["ddpm"], x1[:4])


def test_one_step_rectified_flow_is_far_better_than_one_step_ddim(toy_runs):
    noise, test = toy_runs["noise"], toy_runs["test"]
    w2_flow = wasserstein2(toy_runs["rf"].sample(toy_runs["flow"], x_T=noise, num_steps=1), test)
    w2_ddim = wasserstein2(toy_runs["ddpm"].sample(toy_runs["eps_model"], x_T=noise, num_steps=1, clip_x0=False), test)
    w2_flow_many = wasserstein2(toy_runs["rf"].sample(toy_runs["flow"], x_T=noise, num_steps=50), test)
    assert w2_flow < w2_ddim / 2, (w2_flow, w2_ddim)  # measured here: 2.3 against 11.7 (1,000 points)
    assert w2_flow_many < 0.6  # with enough steps the flow reaches the data (the sample-size floor is about 0.3)


def test_reflow_straightens_the_paths_and_fixes_one_step_sampling(toy_runs):
    rf, noise, test = toy_runs["rf"], toy_runs["noise"], toy_runs["test"]
    paths = {k: rf.sample(toy_runs[k], x_T=noise, num_steps=50, return_trajectory=True) for k in ("flow", "flow2")}
    s1, s2 = (float(straightness(p.trajectory, p.times)) for p in paths.values())
    assert s2 < s1 / 20, (s1, s2)  # measured here: 0.95 against 0.011
    w2_1 = wasserstein2(rf.sample(toy_runs["flow"], x_T=noise, num_steps=1), test)
    w2_2 = wasserstein2(rf.sample(toy_runs["flow2"], x_T=noise, num_steps=1), test)
    assert w2_2 < w2_1 / 2, (w2_1, w2_2)
