"""Benchmark the feature extractors of ``course_lib.features``: images per second, side by side.

FID's Inception-v3 is the slow part of every evaluation on a CPU. This script times, interleaved
(``course_lib.profiling.time_per_call``: medians of repeated runs, every variant in each round):

* ``inception, as loaded``: the TorchScript file as ``torch.jit.load`` gives it;
* ``inception, frozen + optimized``: ``torch.jit.freeze`` then ``torch.jit.optimize_for_inference``
  (batch norms folded into the convolutions, oneDNN kernels), the input in float32 NCHW;
* ``inception, frozen + optimized + channels_last``: what ``InceptionFeatures`` runs on a CPU;
* ``classifier (FD_clf)``: the course classifier's pooled features (``ClassifierFeatures``);

all on the same batch of resized images (the resize itself is timed apart), and checks that the
variants give the same features (max abs difference printed). Needs the ``eval`` extra.

    python benchmarks/bench_features.py                 # batch 25, 3 repeats, torch's default threads
    python benchmarks/bench_features.py --threads 1 --batch-size 50

This is a script, not a test: times depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import warnings

import torch

from _common import benchmark_parser, header, setup_torch  # this folder's; puts the checkout on sys.path
from course_lib.features import ClassifierFeatures, InceptionFeatures, inception_weights_path, tf_bilinear_resize
from course_lib.profiling import time_per_call


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=3)
    parser.add_argument("--batch-size", type=int, default=25)
    args = parser.parse_args()
    setup_torch(args)
    images = torch.randint(0, 256, (args.batch_size, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    x = tf_bilinear_resize(images.float()) / 128.0 - 1.0  # [B, 3, 299, 299], Inception's input
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(inception_weights_path()), map_location="cpu").eval()
    course = InceptionFeatures("cpu")  # frozen + optimized; channels_last inside its __call__
    clf = ClassifierFeatures()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = loaded(x)
        diff = {"frozen + optimized": (course.net(x) - reference).abs().max().item(),
                "frozen + optimized + channels_last": (course.net(x_cl) - reference).abs().max().item()}
        fns = {"inception, as loaded": lambda: loaded(x),
               "inception, frozen + optimized": lambda: course.net(x),
               "inception, frozen + optimized + channels_last": lambda: course.net(x_cl),
               "classifier (FD_clf)": lambda: clf(images)}
        seconds = time_per_call(fns, repeats=args.repeats, min_seconds=0.5)
        resize = time_per_call({"resize": lambda: tf_bilinear_resize(images.float())}, repeats=args.repeats)["resize"]
    print(header(f"batch {args.batch_size}", f"medians of {args.repeats} interleaved runs"))
    base = seconds["inception, as loaded"]
    print(f"{'variant':48s} {'img/s':>9s} {'vs as loaded':>13s}")
    for name, s in seconds.items():
        print(f"{name:48s} {args.batch_size / s:9.1f} {base / s:12.2f}x")
    print(f"TF bilinear resize 32 -> 299: {args.batch_size / resize:,.0f} img/s (not included above)")
    for name, d in diff.items():
        print(f"max |feature difference| {name} vs as loaded: {d:.1e}")


if __name__ == "__main__":
    main()
