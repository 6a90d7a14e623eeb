"""``python -m course_lib.reflow RECIPE``: make the reflow pairs a reflow recipe trains on, from the recipe alone.

The recipe (``course_lib.recipes.ReflowRecipe``, e.g. ``rf2-small``) names the teacher checkpoint and its
:class:`~course_lib.reflow.PairSettings` (how many pairs, guidance, sampler, steps, seed); this command reads
them and fills the cache file the recipe reads, so the settings flow one way: recipe -> pairs -> training.
Hours on a CPU and resumable (chunks of ``--chunk`` pairs are saved as they are made). ``--shard I/K`` lets K
processes of one thread each share the chunks (the last one to finish joins them)::

    python -m course_lib.reflow rf2-small --threads 1 --shard 0/2 &
    python -m course_lib.reflow rf2-small --threads 1 --shard 1/2
    python -m course_lib.train rf2-small
"""

from __future__ import annotations

import argparse

import torch

from . import load_reflow_pairs, make_reflow_pairs
from ..recipes import RECIPES, ReflowRecipe


def main(argv: list[str] | None = None) -> int:
    reflow_recipes = sorted(name for name, r in RECIPES.items() if isinstance(r, ReflowRecipe))
    parser = argparse.ArgumentParser(prog="python -m course_lib.reflow",
                                     description="Make the reflow pairs of a reflow recipe: its teacher's guided "
                                                 "samples and the noise each came from, as the recipe says.")
    parser.add_argument("recipe", help=f"a reflow recipe: {', '.join(reflow_recipes)}")
    parser.add_argument("--chunk", type=int, default=500, help="pairs per saved chunk (the unit of resumption)")
    parser.add_argument("--shard", default="0/1", metavar="I/K",
                        help="make only every K-th chunk from the I-th: run K processes (0/K ... K-1/K) side by side")
    parser.add_argument("--device", help="cpu, cuda, mps (default: the course's choice)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    recipe = RECIPES.get(args.recipe)
    if not isinstance(recipe, ReflowRecipe):
        parser.error(f"{args.recipe!r} is not a reflow recipe; the reflow recipes are {', '.join(reflow_recipes)}")
    index, _, shards = args.shard.partition("/")
    if not (index.isdigit() and shards.isdigit() and int(index) < int(shards)):
        parser.error(f"--shard takes I/K with 0 <= I < K, e.g. 0/2 and 1/2; got {args.shard!r}")
    if args.chunk < 1:
        parser.error(f"--chunk must be at least 1, got {args.chunk}")
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = recipe.teacher_path()
    if not teacher.is_file():
        parser.error(f"{args.recipe} learns the pairs of {teacher}, which does not exist: train the teacher first")
    print(f"{args.recipe}: {recipe.pairs.describe()} of {recipe.teacher}")
    path = make_reflow_pairs(teacher, recipe.pairs, chunk=args.chunk, device=args.device,
                             shard=(int(index), int(shards)))
    if path is None:
        print(f"shard {args.shard} done; the other shards' chunks are still missing (run again when they finish "
              "to join them)")
        return 0
    print(f"{load_reflow_pairs(path).card['what']}\nin {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
