"""Data-parallel training (course_lib.distributed, trainer.fit under DDP): two CPU processes with gloo.

Each test starts 2 processes with torch.multiprocessing (as torchrun would: RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT in the environment) that train a small regression model; rank 0 leaves what they did in files.
"""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from conftest import free_port

from course_lib import distributed
from course_lib.checkpoint import load_checkpoint, read_card
from course_lib.data import StepBatches, TensorSplit
from course_lib.distributed import SINGLE, DistInfo, shard
from course_lib.trainer import TrainConfig, fit

pytestmark = pytest.mark.slow
GLOBAL_BATCH = 8


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights in every process
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def make_batches() -> StepBatches:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    return StepBatches(TensorSplit(x, x.sum(1, keepdim=True).sin()), batch_size=GLOBAL_BATCH)


def exact_loss(model, batch):
    """No random draws: one process with batch 2B and two with B each must agree to rounding."""
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def noisy_loss(model, batch):
    """Random draws from the global RNG, as a diffusion loss makes (seeded per step and rank by fit)."""
    x, y = batch
    return ((model(x + 0.1 * torch.randn_like(x)) - y) ** 2).mean()


def failing_loss(model, batch):
    """Rank 1 fails at its fourth step (step 3)."""
    if int(os.environ["RANK"]) == 1 and failing_loss.calls == 3:
        raise RuntimeError("boom on rank 1")
    failing_loss.calls += 1
    return exact_loss(model, batch)


failing_loss.calls = 0
LOSSES = {"exact": exact_loss, "noisy": noisy_loss, "failing": failing_loss}


def cfg(steps: int, **kw) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size=GLOBAL_BATCH, lr=1e-2, ema_decay=0.9, progress=False,
                       checkpoint_minutes=None, **kw)


def worker(rank: int, world: int, port: int, jobs: list) -> None:
    """One rank: join the group, then run each job (folder, loss, steps, checkpoint_every) in turn, as separate
    ``fit`` calls (a job on a folder that already holds a state resumes it). Spawning processes costs seconds,
    so a test runs all its jobs in one spawn. Rank r leaves, per job j, ``result-rank{r}.pt`` and the checkpoint
    paths it wrote, ``saves-rank{r}-job{j}.json``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info, device = distributed.init_from_env("cpu")
    import course_lib.trainer as trainer

    saves = []
    real_save = trainer.save_checkpoint

    def spy(path, *args, **kwargs):  # who writes checkpoints
        saves.append(str(path))
        return real_save(path, *args, **kwargs)

    trainer.save_checkpoint = spy
    try:
        for j, (folder, loss, steps, checkpoint_every) in enumerate(jobs):
            saves.clear()
            try:
                model = make_model()
                state = os.path.join(folder, "state.safetensors")
                start = read_card(state)["step"] if os.path.exists(state) else 0  # the step a resume starts from
                result = fit(model, LOSSES[loss], make_batches(), cfg(steps, checkpoint_every=checkpoint_every),
                             checkpoint_path=state, device=device, dist_info=info)
                torch.save({"model": model.state_dict(), "ema": result.ema.state_dict(), "losses": result.losses,
                            "start": start}, os.path.join(folder, f"result-rank{rank}.pt"))
            finally:
                with open(os.path.join(folder, f"saves-rank{rank}-job{j}.json"), "w") as f:
                    json.dump(saves, f)
            torch.distributed.barrier()  # rank 0's last save is on disk before any rank starts the next job
    finally:
        distributed.close(info)


def run_two(*jobs) -> None:
    """Run the jobs ``(folder, loss, steps[, checkpoint_every])`` one after another on 2 ranks, in one spawn."""
    jobs = [(str(job[0]), job[1], job[2], job[3] if len(job) > 3 else None) for job in jobs]
    mp.spawn(worker, args=(2, free_port(), jobs), nprocs=2, join=True)


def test_shard_splits_the_global_batch_in_rank_order():
    batch = (torch.arange(8), [torch.arange(8) * 10, "text"])
    first, second = (shard(batch, DistInfo(rank=r, world_size=2, backend="gloo")) for r in (0, 1))
    assert first[0].tolist() == [0, 1, 2, 3] and second[0].tolist() == [4, 5, 6, 7]
    assert second[1][0].tolist() == [40, 50, 60, 70] and second[1][1] == "text"
    assert shard(batch, SINGLE) is batch
    with pytest.raises(ValueError, match="does not split into 3 equal shards"):
        shard(torch.arange(8), DistInfo(rank=0, world_size=3, backend="gloo"))


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """The jobs of the next two tests, in one spawn (starting the processes costs more than the jobs): 5 exact
    steps; 6 noisy steps at once; 3 noisy steps, then a new fit on the same state, resumed from step 3."""
    root = tmp_path_factory.mktemp("two-ranks")
    folders = {name: root / name for name in ("exact", "whole", "parts")}
    for folder in folders.values():
        folder.mkdir()
    run_two((folders["exact"], "exact", 5), (folders["whole"], "noisy", 6), (folders["parts"], "noisy", 3),
            (folders["parts"], "noisy", 6))
    return folders


def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(two_rank_runs):
    folder = two_rank_runs["exact"]
    ranks = [torch.load(folder / f"result-rank{r}.pt") for r in (0, 1)]
    one = fit(make_model(), exact_loss, make_batches(), cfg(5), device="cpu")
    for key, value in one.ema.state_dict().items():
        torch.testing.assert_close(ranks[0]["ema"][key], value, rtol=1e-5, atol=1e-6)
        assert torch.equal(ranks[0]["ema"][key], ranks[1]["ema"][key])  # the replicas stay equal
    assert ranks[0]["losses"] == pytest.approx(one.losses, rel=1e-5)  # the global batch's loss
    assert ranks[0]["losses"] == ranks[1]["losses"]


def test_resumed_run_equals_uninterrupted_and_only_rank_0_writes(two_rank_runs):
    whole, parts = two_rank_runs["whole"], two_rank_runs["parts"]
    # jobs 2 and 3 of the spawn ran on parts/: 3 steps, then resumed to 6
    assert json.loads((parts / "saves-rank1-job2.json").read_text()) == []  # rank 1 never wrote
    assert json.loads((parts / "saves-rank0-job2.json").read_text()) == [str(parts / "state.safetensors")]
    assert json.loads((parts / "saves-rank1-job3.json").read_text()) == []
    a, b = torch.load(whole / "result-rank0.pt"), torch.load(parts / "result-rank0.pt")
    assert a["start"] == 0 and b["start"] == 3  # the last job resumed the state the one before saved at step 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]) and torch.equal(a["ema"][key], b["ema"][key])
    assert a["losses"] == b["losses"]
    card = read_card(parts / "state.safetensors")["training"]["distributed"]
    assert card["world_size"] == 2 and card["batch_per_rank"] == GLOBAL_BATCH // 2 and len(card["devices"]) == 2


def test_a_failing_rank_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(Exception, match=r"rank 1 of 2 stopped at step 3: RuntimeError: boom on rank 1"):
        run_two((tmp_path, "failing", 10, 2))
    state = tmp_path / "state.safetensors"
    assert read_card(state)["step"] == 2  # the save of step 2; nothing after it
    load_checkpoint(state, make_model())  # and it loads
    assert not (tmp_path / "result-rank0.pt").exists()


def test_torchrun_command_trains_and_rank_0_alone_exports(tmp_path, isolated_data):
    """The command line under torchrun: both ranks train, rank 0 prints and exports, the card says how."""
    import subprocess
    import sys

    state, export = tmp_path / "run" / "state.safetensors", tmp_path / "run" / "export.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          f"--master-port={free_port()}", "-m", "course_lib.train", "ddpm-tiny", "--steps", "3",
                          "--threads", "1", "--state", str(state), "--export", str(export)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("stopped by steps at step 3") == 1 and out.stdout.count("wrote ") == 1
    card = read_card(export)
    assert card["step"] == 3 and card["training"]["command"].startswith("torchrun --nproc-per-node 2 -m course_lib.train")
    assert card["training"]["distributed"]["world_size"] == 2 and card["training"]["distributed"]["backend"] == "gloo"
