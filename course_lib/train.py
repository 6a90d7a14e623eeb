"""The command line that trains a chapter's model: ``python -m course_lib.train RECIPE``.

It looks the recipe up in ``course_lib.recipes``, trains it with the loop of ``course_lib.trainer``
(resuming its state, or warm starting from the exported checkpoint), and exports the EMA weights
as an inference checkpoint with its card.

    python -m course_lib.train --list
    python -m course_lib.train ddpm-small --minutes 60      # resumes if a state exists
    # no state but data/checkpoints/ddpm-small.safetensors exists: warm start from it (--fresh: step 0)
    # cool a copy of the state down: the learning rate falls linearly to 0 over 1500 steps
    cp -r data/runs/ddpm-small data/runs/ddpm-small-cooldown
    python -m course_lib.train ddpm-small --state data/runs/ddpm-small-cooldown/state.safetensors \\
        --steps 21000 --cooldown 1500
    # data parallel: 2 processes (GPUs, or shares of a CPU), the same global batch (course_lib.distributed)
    torchrun --nproc-per-node 2 -m course_lib.train rf-small --minutes 60
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import os
import signal
import sys
from pathlib import Path

import torch

from . import config, distributed, recipes
from .checkpoint import read_card
from .profiling import count_parameters
from .trainer import DistributedRunError, fit, mean_tail

# ----------------------------------------------------------------------------- command line

class StopRequest:
    """Ctrl-C (SIGINT) and ``kill`` (SIGTERM) ask training to stop after the step it is in: ``fit`` asks
    before every step, stops there (every rank of a torchrun at the same step), saves, and the command
    exports. A second signal stops at once (KeyboardInterrupt: ``fit`` still saves).

    A job started in the background by a non-interactive shell (``nohup ... &``) inherits SIGINT as
    *ignored*, and SIGTERM would kill it without saving: both get this handler.
    """

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}, again")
        self.requested = True
        print(f"signal {signal.Signals(signum).name}: stopping after this step (send it again to stop at once)",
              file=sys.stderr)

    def install(self) -> dict:
        """Handle SIGINT and SIGTERM; return the handlers replaced."""
        return {signal.SIGINT: signal.signal(signal.SIGINT, self.handle),
                signal.SIGTERM: signal.signal(signal.SIGTERM, self.handle)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.train",
        description="Train a chapter's model for a time or step budget. Resumes from the training "
                    "state when one exists, then exports the EMA weights as an inference checkpoint.")
    parser.add_argument("recipe", nargs="?", help="what to train (see --list)")
    parser.add_argument("--list", action="store_true", help="list the recipes and exit")
    parser.add_argument("--minutes", type=float, help="time budget for this run")
    parser.add_argument("--steps", type=int, help="train until this global step")
    parser.add_argument("--cooldown", type=int, metavar="N", help="decay the learning rate linearly to 0 over "
                        "the N steps before --steps (run it on a copy of the state to keep the constant-rate "
                        "run going later)")
    parser.add_argument("--state", type=Path, help="resumable training state (default data/runs/<recipe>/state.safetensors)")
    parser.add_argument("--export", type=Path, help="inference checkpoint to write (default <checkpoint dir>/<recipe>.safetensors)")
    parser.add_argument("--init-from", type=Path, help="inference checkpoint to warm start from when there is no "
                        "training state (default: the export, if it exists)")
    parser.add_argument("--transplant-from", type=Path, help="when there is no training state: start at step 0 "
                        "with every tensor of this checkpoint (another recipe's) whose name and shape match; "
                        "the rest is freshly initialised (e.g. cond-small-minilm from cond-small)")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing training state and the export; "
                        "start at step 0")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", help="cpu, cuda, mps (default: picked automatically)")
    args = parser.parse_args(argv)

    if args.list or not args.recipe:
        for name, r in recipes.RECIPES.items():
            print(f"{name:18s} {r.description}")
        return 0
    if args.recipe not in recipes.RECIPES:
        parser.error(f"unknown recipe {args.recipe!r}; known: {', '.join(recipes.RECIPES)}")
    if args.fresh and args.init_from:
        parser.error("--fresh starts at step 0 and --init-from continues from a checkpoint: give one of them")
    if args.transplant_from and args.init_from:
        parser.error("--transplant-from starts a new run from part of another model and --init-from continues "
                     "this recipe's checkpoint: give one of them")
    if args.cooldown is not None and args.steps is None:
        parser.error("--cooldown N decays the learning rate to 0 at --steps: give --steps too")
    if args.cooldown is not None and args.cooldown <= 0:
        parser.error(f"--cooldown must be a positive number of steps, got {args.cooldown}")
    stop = StopRequest()
    previous = stop.install()
    dist_info, device = distributed.init_from_env(args.device)  # one process, or this rank of torchrun's
    try:
        return _train(args, argv, dist_info, device, stop)
    except DistributedRunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:  # give the caller (a test, a notebook) its own handlers back
        distributed.close(dist_info)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _train(args: argparse.Namespace, argv: list[str] | None, dist_info: distributed.DistInfo,
           device: torch.device, stop: StopRequest) -> int:
    """The body of :func:`main` once the arguments are known: train the recipe, then export (rank 0)."""
    print = builtins.print if dist_info.is_main else (lambda *a, **k: None)  # noqa: A001 - rank 0 speaks
    if args.threads:
        torch.set_num_threads(args.threads)
    config.setup_cpu_speedups()
    recipe = recipes.RECIPES[args.recipe]
    cfg = recipe.train_config()
    cfg = dataclasses.replace(cfg, max_steps=args.steps if args.steps is not None else (
        None if args.minutes is not None else cfg.max_steps), max_minutes=args.minutes,
        cooldown_steps=args.cooldown or cfg.cooldown_steps)
    if cfg.batch_size % dist_info.world_size:
        raise SystemExit(f"error: {recipe.name}'s global batch of {cfg.batch_size} does not split into "
                         f"{dist_info.world_size} equal shards: start a number of processes that divides it")
    state = args.state or config.data_dir() / "runs" / recipe.name / "state.safetensors"
    export = args.export or config.checkpoint_dir() / f"{recipe.name}.safetensors"
    if args.fresh and state.exists() and dist_info.is_main:
        state.unlink()
    if dist_info.distributed:  # every rank sees the same files before deciding how to start
        torch.distributed.barrier()
    # Without a state, continue from the exported weights rather than train from zero and then
    # overwrite a better export (the shipped checkpoint) with the result.
    init_from = None if args.fresh or state.exists() or args.transplant_from else (
        args.init_from or (export if export.exists() else None))
    for flag, value in (("--init-from", args.init_from), ("--transplant-from", args.transplant_from)):
        if value and state.exists():
            print(f"{state} exists and is resumed; {flag} {value} is not used (--state picks another state)")

    data = recipe.data()
    torch.manual_seed(cfg.seed)  # the same initial weights on every fresh run of a recipe
    model = recipe.build_model()
    ranks = f" x {dist_info.world_size} processes ({dist_info.backend})" if dist_info.distributed else ""
    print(f"{recipe.name}: {count_parameters(model) / 1e6:.2f}M parameters on {device}{ranks}, "
          f"data: {data.source} ({len(data)} images), state: {state}")
    transplant_from = args.transplant_from if not state.exists() else None
    if transplant_from is None and init_from is None and not state.exists():
        transplant_from = recipe.initial_weights()  # e.g. a reflow starts from its teacher's weights
        if transplant_from is not None:
            print(f"no training state: {recipe.name} starts from {transplant_from}'s weights at step 0 (the recipe's "
                  "initialisation; --transplant-from picks another)")
    if init_from is not None:
        print(f"no training state: warm start from {init_from} (step {read_card(init_from)['step']}; "
              "fresh optimizer, the learning rate warms up again; --fresh starts at step 0)")
    launcher = (f"torchrun --nproc-per-node {os.environ.get('LOCAL_WORLD_SIZE', dist_info.world_size)} -m"
                if dist_info.distributed else "python -m")
    command = config.portable_command(f"{launcher} course_lib.train", sys.argv[1:] if argv is None else argv)
    result = fit(model, recipe.loss_fn(), recipe.batches(data, cfg), cfg, checkpoint_path=state, device=device,
                 init_from=init_from, transplant_from=transplant_from,
                 training_info={**recipe.card_info(), "data_source": data.source, "data_images": len(data),
                                "command": command}, dist_info=dist_info, stop_requested=stop)
    print(f"stopped by {result.stopped_by} at step {result.step} after {result.seconds / 60:.1f} min "
          f"({result.images_per_second:.1f} img/s); loss (last 100 steps) {mean_tail(result.losses, 100):.4f}")
    if dist_info.is_main:
        recipe.export(state, export)
        print(f"wrote {export} (EMA weights) and {export.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
