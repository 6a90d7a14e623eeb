"""The course's measurements: ``data/results.jsonl`` (one line per measured point and seed), read, merged over
sampling seeds, and rendered as ``docs/results.md`` and the README's headline table (never typed by hand).

Every run of ``python -m course_lib.evaluation`` appends lines with :func:`append_result`. A line's identity is
its kind, the checkpoint's hash and its ``settings``: everything that changes the images scored (sampler, steps,
guidance, time spacing and shift, decoder weights, number of samples, sampling seed). When a point is measured
again with the same identity, the later line wins, keeping the metrics that only the earlier line measured (the
same images, scored with FD_clf first and with FID later, give one line with both); two lines that differ in any
setting both stay.

A line records what was measured (``metrics``), what with (``reference``, ``hardware``), what it cost
(``seconds``) and ``nfe``: the denoiser's forward passes per image, counted while sampling
(``course_lib.generation.NFECount``: a guided step is two, Heun's step two; the decoder is not counted).

:func:`points` merges the lines that differ only in their sampling seed into one :class:`Point`, whose metrics
are a mean ± standard deviation over the seeds; it is what the notebooks call for their tables and figures::

    for p in points("ldm-small", steps=25, guidance=3.0):
        print(p.label(), p.text("fid"))            # "ddim 25 steps, w = 3 (NFE 50)", "65.40 ± 0.31 (3 seeds)"

Command line::

    python -m course_lib.results            # rewrite docs/results.md and the README's headline table
    python -m course_lib.results --check    # exit 1 if either is not what data/results.jsonl gives
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import config
from .checkpoint import read_card
from .features import sha256_file

__all__ = ["KINDS", "SAMPLE_KINDS", "DELIVERY_KINDS", "BENCHMARK_KINDS", "CURVE_KINDS", "HEADLINES",
           "results_path", "append_result", "add_results", "monitor_line", "read_results", "row_key", "fid_label", "training_minutes", "training_cost", "Point", "points",
           "results_page", "headline_table", "main"]

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

#: what a line measured: generated samples, an autoencoder's reconstructions, real images, prompt accuracy;
#: and how the course reaches its readers (no checkpoint of their own): an explorer's redraw time in the browser
#: (tests/test_browser.py), a chapter's peak memory (benchmarks/bench_memory.py), a chapter's size on the static
#: site (tools/build_site.py); and one benchmark whose numbers a chapter discusses: an attention call's time and
#: peak memory (benchmarks/bench_attention.py, chapters 2 and 6)
SAMPLE_KINDS = ("samples", "reconstructions", "real", "prompt_accuracy")
DELIVERY_KINDS = ("explorer_latency", "notebook_memory", "site_size")
BENCHMARK_KINDS = ("attention_cost",)
#: curves recorded while a model trained (the trainer's ``monitor_every``: chapter 6's QK-norm experiment)
CURVE_KINDS = ("training_monitor",)
KINDS = SAMPLE_KINDS + DELIVERY_KINDS + BENCHMARK_KINDS + CURVE_KINDS

#: the course's headline points: (model, settings a point must have), in the order of the chapters. The
#: README's table and the top of docs/results.md show these (every lines' figures are further down).
HEADLINES: list[tuple[str, dict]] = [
    ("CIFAR-10 test images", {"kind": "real", "num_samples": 2000}),
    ("vae-small", {"kind": "reconstructions", "num_samples": 2000}),
    ("vae-small-ft", {"kind": "reconstructions", "num_samples": 2000}),  # the same latents, a sharper decoder
    ("ddpm-small", {"kind": "samples", "num_samples": 2000, "sampler": "ddim", "steps": 25, "spacing": "linspace"}),
    ("cond-small", {"kind": "samples", "num_samples": 2000, "sampler": "ddim", "steps": 25, "guidance": 3.0,
                    "spacing": "linspace"}),
    ("ldm-small", {"kind": "samples", "num_samples": 2000, "sampler": "ddim", "steps": 25, "guidance": 3.0,
                   "spacing": "linspace"}),
    ("rf-small", {"kind": "samples", "num_samples": 2000, "sampler": "euler", "steps": 25, "guidance": 3.0,
                  "shift": 1.0}),
    ("rf2-small", {"kind": "samples", "num_samples": 2000, "sampler": "euler", "steps": 1, "guidance": 1.0,
                   "shift": 1.0}),
    # chapter 6's equal-compute pair, at 25 steps and at 4 (where the UNet is ahead)
    *[(model, {"kind": "samples", "num_samples": 2000, "sampler": "euler", "steps": steps, "guidance": 3.0,
               "shift": 1.0})
      for model in ("rf-small-minilm", "mmdit-small") for steps in (25, 4)],
]


# --------------------------------------------------------------------------- the file


def results_path() -> Path:
    """The file every evaluation run appends its lines to: ``<data_dir>/results.jsonl``."""
    return config.data_dir() / "results.jsonl"


def _is_line(record) -> bool:
    """A results line: a JSON object with a ``kind`` of :data:`KINDS` and a ``settings`` dict."""
    return isinstance(record, dict) and record.get("kind") in KINDS and isinstance(record.get("settings"), dict)


def append_result(record: dict, path: str | Path | None = None) -> Path:
    """Append one line (a JSON object with at least ``kind`` and ``settings``) to the results file."""
    if not _is_line(record):
        raise ValueError(f"a results line needs a kind (one of {KINDS}) and a settings dict, got "
                         f"kind={record.get('kind') if isinstance(record, dict) else record!r}")
    path = Path(path) if path is not None else results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:  # one line per write; appending a line is atomic enough for a log
        f.write(json.dumps(record) + "\n")
    return path


def add_results(source: str | Path, path: str | Path | None = None) -> int:
    """Append the lines of ``source`` (a JSON list of lines, or JSON Lines) to the results file; return how many.

    For measurements made where the results file must not change (a test writes its lines to ``build/``): the
    lines are all checked before any is appended, so a bad file adds nothing."""
    source = Path(source)
    text = source.read_text()
    try:
        records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in
                                                                          text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ValueError(f"{source} is neither a JSON list of results lines nor JSON Lines ({err})") from err
    bad = [i for i, r in enumerate(records) if not _is_line(r)]
    if bad:
        raise ValueError(f"{source}: line(s) {bad[:5]} lack a kind (one of {KINDS}) or a settings dict; nothing added")
    for record in records:
        append_result(record, path)
    return len(records)


def monitor_line(checkpoint: str | Path) -> dict:
    """The results line (kind ``training_monitor``) of a run trained with ``monitor_every``: its card's attention
    statistics against steps (largest logit, mean entropy, loss), with the settings that make the run."""
    card = read_card(checkpoint)
    training = card.get("training", {})
    monitor = training.get("monitor")
    if not monitor:
        raise ValueError(f"{checkpoint}: its card has no monitor history; train with TrainConfig(monitor_every=N)")
    train_config = training.get("train_config", {})
    backbone = next((v for v in card.get("model_config", {}).values() if isinstance(v, dict) and "qk_norm" in v), {})
    return {"date": time.strftime("%Y-%m-%d"), "kind": "training_monitor", "model": training.get("recipe", ""),
            "checkpoint": config.portable_path(checkpoint), "checkpoint_sha256": card.get("sha256"),
            "step": card.get("step"), "training_minutes": round(training.get("wall_seconds_total", 0) / 60, 1),
            "settings": {"lr": train_config.get("lr"), "warmup_steps": train_config.get("warmup_steps"),
                         "batch_size": train_config.get("batch_size"), "precision": training.get("precision"),
                         "monitor_every": train_config.get("monitor_every"), "qk_norm": backbone.get("qk_norm")},
            "metrics": {key: [m[key] for m in monitor] for key in ("step", "loss", "max_logit", "entropy",
                                                                    "max_entropy")},
            "hardware": training.get("hardware", "")}


def row_key(record: dict) -> str:
    """A line's identity: its kind, the checkpoint's hash (or name, for real images) and every setting."""
    return json.dumps([record.get("kind"), record.get("checkpoint_sha256", record.get("checkpoint")),
                       record.get("settings")], sort_keys=True)


def read_results(path: str | Path | None = None) -> list[dict]:
    """The lines of a results file (default :func:`results_path`; none if it does not exist), a later line
    replacing an earlier one with the same :func:`row_key` (whose metrics the later one lacks are kept), in the
    order of the latest measurements."""
    path = Path(path) if path is not None else results_path()
    if not path.is_file():
        return []
    records: dict[str, dict] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not JSON ({err}); fix or delete that line") from err
        key = row_key(record)
        earlier = records.pop(key, None)  # re-insert, so that the order is that of the latest measurements
        if earlier is not None and isinstance(earlier.get("metrics"), dict) and isinstance(record.get("metrics"), dict):
            # the same images scored again: the later line's metrics win, and those only the earlier measured stay
            record = {**record, "metrics": {**earlier["metrics"], **record["metrics"]}}
        records[key] = record
    return list(records.values())


def fid_label(n: int) -> str:
    """How a FID over n images is named: FID-50k, FID-10k, FID-2k, FID-500 (FIDs compare only at equal n)."""
    return f"FID-{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"FID-{n}"


# --------------------------------------------------------------------------- points: lines merged over seeds


@dataclass
class Point:
    """One measured setting of one checkpoint: the lines that differ only in their sampling seed, merged.

    ``settings`` are the shared settings (without the seed), ``seeds`` the seeds measured, ``rows`` the lines
    in seed order. A metric's value is the mean over the seeds, its spread the sample standard deviation."""

    kind: str
    model: str
    settings: dict
    seeds: list = field(default_factory=list)
    rows: list = field(default_factory=list)

    @property
    def nfe(self) -> float | None:
        """Denoiser forward passes per image (None: not a sampled point)."""
        return self.rows[-1].get("nfe")

    @property
    def training_minutes(self) -> float | None:
        """The checkpoint's training CPU-minutes, as its lines record them (None for real images)."""
        return self.rows[-1].get("training_minutes")

    @property
    def name(self) -> str:
        """The model's name; for a checkpoint that does not ship (a sweep's run, a snapshot along a training) with
        its training minutes: "dit-joint (25 min)"."""
        shipped = str(self.rows[-1].get("checkpoint", "")).startswith("data/checkpoints/")
        if shipped or not self.training_minutes:  # shipped, or no training on its card (real images, a test's file)
            return self.model
        return f"{self.model} ({self.training_minutes:.0f} min)"

    def values(self, metric: str) -> list[float]:
        return [r["metrics"][metric] for r in self.rows if r.get("metrics", {}).get(metric) is not None]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float | None:
        """Standard deviation over the seeds (n - 1 in the denominator); None with fewer than two seeds."""
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else None

    def text(self, metric: str, spec: str = ".2f", scale: float = 1.0) -> str:
        """"65.40 ± 0.31 (3 seeds)", or "65.40" from one seed, or "" when the metric was not measured."""
        mean = self.mean(metric)
        if mean is None:
            return ""
        std = self.std(metric)
        if std is None:
            return format(scale * mean, spec)
        return f"{format(scale * mean, spec)} ± {format(scale * std, spec)} ({len(self.values(metric))} seeds)"

    def label(self) -> str:
        """The sampling in words: "euler 25 steps, w = 3, shift 3 (NFE 50)"."""
        s = self.settings
        if self.kind == "real":
            return "real images"
        if self.kind == "reconstructions":
            return "reconstructions of test images"
        steps = s.get("steps")
        text = f"{s.get('sampler')} {steps} step{'' if steps == 1 else 's'}"
        if s.get("guidance") is not None:
            text += f", w = {s['guidance']:g}"
        if s.get("shift") not in (None, 1.0):
            text += f", shift {s['shift']:g}"
        if s.get("size") is not None:  # sampled on another grid than the trained one (chapter 6's RoPE section)
            text += f", grid {s['size'][0]}x{s['size'][1]}"
        return text + (f" (NFE {self.nfe:g})" if self.nfe is not None else "")

    def minutes_per_seed(self) -> float:
        """CPU-minutes one seed of this point took to sample and score (mean over its lines)."""
        return statistics.fmean(_minutes(r) for r in self.rows)


def _minutes(record: dict) -> float:
    return sum(record.get("seconds", {}).get(k, 0) for k in ("sampling", "inception_total", "classifier")) / 60


def _matches(record: dict, wanted: dict) -> bool:
    s = record.get("settings", {})
    return all((record.get("kind") if k == "kind" else s.get(k)) == v for k, v in wanted.items())


def points(model: str | None = None, *, records: list[dict] | None = None, **settings) -> list[Point]:
    """The measured points of ``model`` (all models when None) whose settings include ``settings`` (``kind=``
    picks the kind of line), each merged over its seeds, sorted by model, training minutes, guidance, steps
    and decoder.

    ``records``: lines already read (default: :func:`read_results` of the course's file)."""
    records = read_results() if records is None else records
    groups: dict[str, Point] = {}
    for r in records:
        if (model is not None and r.get("model") != model) or not _matches(r, settings):
            continue
        shared = {k: v for k, v in r.get("settings", {}).items() if k != "seed"}
        key = json.dumps([r.get("kind"), r.get("checkpoint_sha256", r.get("checkpoint")), shared], sort_keys=True)
        point = groups.setdefault(key, Point(r.get("kind"), r.get("model", ""), shared))
        point.seeds.append(r.get("settings", {}).get("seed"))
        point.rows.append(r)
    for p in groups.values():
        order = sorted(range(len(p.rows)), key=lambda i: (p.seeds[i] is None, p.seeds[i] or 0))
        p.seeds, p.rows = [p.seeds[i] for i in order], [p.rows[i] for i in order]
    return sorted(groups.values(), key=lambda p: (p.model, p.training_minutes or 0.0,
                                                  p.settings.get("guidance") or 0.0, p.settings.get("steps") or 0,
                                                  str(p.settings.get("decoder"))))


# --------------------------------------------------------------------------- the page and the README's table


def _card(model: str) -> dict | None:
    path = config.checkpoint_dir() / f"{model}.safetensors"
    return read_card(path) if path.is_file() else None


def training_minutes(card: dict) -> tuple[float, float, float]:
    """(own, pairs, teacher): the CPU-minutes of a checkpoint's own training, and for a reflowed model (a card
    with ``training.reflow``) of simulating its pairs and of its teacher's training (0 and 0 otherwise; the
    teacher's card is read from the checkpoint folder, 0 when it is not there)."""
    training = card.get("training", {})
    own = training.get("wall_seconds_total", 0) / 60
    pairs = training.get("reflow", {}).get("pairs")
    if not pairs:
        return own, 0.0, 0.0
    teacher_path = config.checkpoint_dir() / Path(pairs.get("teacher", "")).name
    teacher = (read_card(teacher_path).get("training", {}).get("wall_seconds_total", 0) / 60
               if teacher_path.is_file() else 0.0)
    return own, pairs.get("generation_seconds", 0) / 60, teacher


def training_cost(card: dict) -> str:
    """What a checkpoint cost in CPU-minutes (:func:`training_minutes`), e.g. "125", for a reflowed model
    "266 (50 + 106 pairs + 110 teacher)", for a fine-tuned decoder (``course_lib.adversarial``) "163 (64 +
    99 decoder fine-tune)" when the autoencoder it started from is in the checkpoint folder."""
    own, simulation, teacher = training_minutes(card)
    training = card.get("training", {})
    if training.get("task") == "decoder fine-tune (encoder frozen)":
        source = config.checkpoint_dir() / Path(training.get("source", "")).name
        if not source.is_file():
            return f"{own:.0f} decoder fine-tune"
        base = read_card(source).get("training", {}).get("wall_seconds_total", 0) / 60
        return f"{base + own:.0f} ({base:.0f} + {own:.0f} decoder fine-tune)"
    if "pairs" not in training.get("reflow", {}):
        return f"{own:.0f}"
    return f"{own + simulation + teacher:.0f} ({own:.0f} + {simulation:.0f} pairs + {teacher:.0f} teacher)"


def _training(model: str) -> str:
    card = _card(model)
    return "" if card is None else training_cost(card)


def _machine(record: dict) -> str:
    hardware = record.get("hardware", "")
    return hardware.split(" (")[0] + (f", {hardware.rsplit(', ', 1)[-1]}" if ", " in hardware else "")


def _decoder(p: Point) -> str:
    name = p.settings.get("decoder")
    return "" if name is None else f"{name} ({p.settings.get('decoder_sha256', '')[:8]})"


def _prompt_accuracy(records: list[dict], p: Point) -> str:
    """The prompt accuracy measured at a sample point's settings (same model, sampler, steps, w, decoder)."""
    same = {k: p.settings.get(k) for k in ("sampler", "steps", "guidance", "decoder_sha256")}
    found = [q for q in points(p.model, records=records, kind="prompt_accuracy", prompts="class", size=None, **same)]
    return found[-1].text("prompt_accuracy", ".1f", 100) if found else ""


def headline_table(records: list[dict]) -> str:
    """The README's table: each headline point of :data:`HEADLINES` (a line per decoder for a latent model)
    with its FID and KID (± over seeds), FD_clf, prompt accuracy at the same setting, NFE and training minutes;
    only points measured on the checkpoint file that ships (its SHA-256), where it is in the checkpoint folder."""
    lines = ["| model | sampling (NFE) | training CPU-min | FID-2k | KID x 10³ | FD_clf | prompt accuracy % |",
             "|---|---|---:|---:|---:|---:|---:|"]
    digests = {}  # model -> SHA-256 of its shipped file (None: not shipped), each file read once
    for model, wanted in HEADLINES:
        if model not in digests:
            shipped = config.checkpoint_dir() / f"{model}.safetensors"
            digests[model] = sha256_file(shipped) if shipped.is_file() else None
        digest = digests[model]
        for p in points(model, records=records, **wanted):
            if digest is not None and p.rows[-1].get("checkpoint_sha256", digest) != digest:
                continue  # measured on another file than the one shipped (its line stays on the full page)
            lines.append(f"| {model} | {p.label()}" + (f"; decoder {p.settings['decoder']}" if p.settings.get("decoder")
                                                         else "")
                         + f" | {_training(model)} | {p.text('fid')} | {p.text('kid_mean', '.1f', 1000)} | "
                           f"{p.text('fd_clf')} | "
                           f"{_prompt_accuracy(records, p)} |")
    return "\n".join(lines)


def _sample_rows(records: list[dict], kinds: tuple[str, ...]) -> list[str]:
    header = ["| model | sampling | decoder | N | seeds | FID-N | KID x 10³ | precision / recall | FD_clf (P / R) | "
              "eval CPU-min per seed | machine |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    rows = []
    for p in points(records=records):
        if p.kind not in kinds:
            continue
        n = p.settings.get("num_samples", 0)
        fid = f"{fid_label(n)} {p.text('fid')}" if p.values("fid") else ""
        pr = (f"{p.mean('precision'):.2f} / {p.mean('recall'):.2f}" if p.values("precision") else "")
        clf = (f"{p.text('fd_clf', '.3g')} ({p.mean('precision_clf'):.2f} / {p.mean('recall_clf'):.2f})"
               if p.values("fd_clf") else "")
        seeds = ", ".join(str(s) for s in p.seeds) if p.seeds and p.seeds[0] is not None else ""
        rows.append(f"| {p.name} | {p.label()} | {_decoder(p)} | {n:,} | {seeds} | {fid} | "
                    f"{p.text('kid_mean', '.2f', 1000)} | {pr} | {clf} | {p.minutes_per_seed():.1f} | "
                    f"{_machine(p.rows[-1])} |")
    return header + rows


def _accuracy_rows(records: list[dict]) -> list[str]:
    header = ["| model | sampling | decoder | prompts | images per seed | seeds | prompt accuracy % | "
              "eval CPU-min per seed |", "|---|---|---|---|---:|---:|---:|---:|"]
    rows = []
    for p in points(records=records, kind="prompt_accuracy"):
        s = p.settings
        rows.append(f"| {p.name} | {p.label()} | {_decoder(p)} | {s.get('prompts')} | {10 * s.get('per_class', 0)} | "
                    f"{', '.join(str(x) for x in p.seeds)} | {p.text('prompt_accuracy', '.1f', 100)} | "
                    f"{p.minutes_per_seed():.1f} |")
    return header + rows


def _cost_rows(records: list[dict]) -> list[str]:
    """What a point costs to measure, per kind of point: CPU-minutes of one seed (sampling + features)."""
    def kind_of(r: dict) -> str:
        s, m = r.get("settings", {}), r.get("metrics", {})
        what = "FID, KID, P/R + FD_clf" if "fid" in m else "FD_clf only" if "fd_clf" in m else "prompt accuracy"
        if r.get("kind") != "samples":
            return f"{r.get('kind')}: {what}"
        latent = s.get("decoder") is not None
        steps = s.get("steps") or 0
        return (f"{'latent' if latent else 'pixel'} model, {'<= 8' if steps <= 8 else '> 8'} steps"
                f"{', guided' if s.get('guidance') not in (None, 0.0, 1.0) else ''}: {what}")

    groups: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if r.get("kind") not in ("samples", "reconstructions", "real"):
            continue
        groups.setdefault((kind_of(r), r.get("hardware", "").rsplit(", ", 1)[-1]), []).append(_minutes(r))
    rows = ["| kind of point (one seed, 2,000 images unless stated) | threads | lines | CPU-minutes (min - max) |",
            "|---|---|---:|---:|"]
    for (kind, threads), minutes in sorted(groups.items()):
        rows.append(f"| {kind} | {threads} | {len(minutes)} | {min(minutes):.1f} - {max(minutes):.1f} |")
    return rows


def _checkpoint_rows() -> list[str]:
    """The shipped checkpoints, from their cards: what each is, how long it trained, on what, with which command."""
    rows = ["| checkpoint | class | parameters | steps | training CPU-min | hardware | from the card |",
            "|---|---|---:|---:|---:|---|---|"]
    for path in sorted(config.checkpoint_dir().glob("*.safetensors")):
        card = read_card(path)
        training, metrics = card.get("training", {}), card.get("metrics", {})
        facts = [f"{k} {metrics[k]:g}" for k in ("test_accuracy", "test_psnr", "scaling_factor") if k in metrics]
        if training.get("command"):
            facts.append(f"`{training['command']}`")
        rows.append(f"| {path.stem} | {card.get('model_class')} | {card.get('parameters', 0) / 1e6:.2f}M | "
                    f"{card.get('step', 0):,} | {training_cost(card)} | "
                    f"{training.get('hardware', '')} | {'; '.join(facts)} |")
    return rows


def _attention_rows(records: list[dict]) -> list[str]:
    """Time and peak tensor memory of einsum, SDPA and chunked attention per sequence length."""
    rows = ["One attention call on q, k, v [batch, heads, L + N, d], float32 (`python benchmarks/bench_attention.py",
            "--lengths ... --record`): medians of interleaved runs, and the peak tensor memory above the inputs",
            "(torch's profiler). Chapter 6's joint sequences are L text + N image tokens: 23 = 7 + 16 and 32 = 16 + 16",
            "(patch 2 on the 8 x 8 latent), 71 = 7 + 64 and 80 = 16 + 64 (patch 1); 4608 = 512 + 4096 is one head of",
            "Flux at 1024 x 1024 (T5's 512 tokens, a 128 x 128 latent at patch 2). Compare times within one run",
            "(one machine, one load) only.", "",
            "| L + N | batch x heads x d | pass | einsum ms | SDPA ms | chunked ms | einsum MB | SDPA MB | "
            "chunked MB | machine | date |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    lines = sorted((r for r in records if r.get("kind") == "attention_cost"),
                   key=lambda r: (r["settings"]["pass"], r["settings"]["length"], r["settings"]["heads"]))
    for r in lines:
        s, ms, mb = r["settings"], r["metrics"]["ms"], r["metrics"]["peak_mb"]
        rows.append(f"| {s['length']} | {s['batch']} x {s['heads']} x {s['dim']} | {s['pass']} | "
                    + " | ".join(f"{ms[i]:.3f}" for i in ("einsum", "sdpa", "chunked")) + " | "
                    + " | ".join(f"{mb[i]:.2f}" for i in ("einsum", "sdpa", "chunked"))
                    + f" | {r.get('hardware', '')} | {r.get('date', '')} |")
    return rows


def _monitor_rows(records: list[dict]) -> list[str]:
    """One row per monitored run: its settings and where its attention statistics started, peaked and ended."""
    rows = ["Every `monitor_every` steps the trainer measures the model's attention on one fixed batch (largest",
            "logit q.k / sqrt(d), mean row entropy in nats; `course_lib.attention.attention_logit_stats`); added with",
            "`python -m course_lib.results --add-monitor CHECKPOINT`. Chapter 6 plots the curves. Minutes are each",
            "run's wall time as its card records it, beside whatever else ran: compare these runs by steps.", "",
            "| run | QK-norm | lr | precision | steps | max logit: first / largest / last | entropy: first / "
            "lowest / last (uniform) | loss: first / last | minutes | machine |",
            "|---|---|---:|---|---:|---|---|---|---:|---|"]
    for r in sorted((r for r in records if r.get("kind") == "training_monitor"), key=lambda r: r.get("model", "")):
        s, m = r["settings"], r["metrics"]
        rows.append(f"| {r.get('model')} | {'yes' if s.get('qk_norm') else 'no'} | {s.get('lr'):g} | "
                    f"{s.get('precision')} | {m['step'][-1]} | {m['max_logit'][0]:.1f} / {max(m['max_logit']):.1f} / "
                    f"{m['max_logit'][-1]:.1f} | {m['entropy'][0]:.2f} / {min(m['entropy']):.2f} / "
                    f"{m['entropy'][-1]:.2f} ({m['max_entropy'][-1]:.2f}) | {m['loss'][0]:.3f} / {m['loss'][-1]:.3f} | "
                    f"{r.get('training_minutes', 0):.0f} | {r.get('hardware', '')} |")
    return rows


def _lines_of_kind(records: list[dict], kind: str) -> list[dict]:
    """The lines of one delivery kind, ordered by chapter, mode and explorer."""
    return sorted((r for r in records if r.get("kind") == kind),
                  key=lambda r: tuple(str(r["settings"].get(k, "")) for k in ("chapter", "mode", "index", "explorer")))


def _delivery_rows(records: list[dict]) -> list[str]:
    """The three tables of how the course reaches its readers: redraw latency, peak memory, site size."""
    rows = ["### Explorers in the browser", "",
            "Time from moving a control in JupyterLab (Chromium) to the new picture decoded in the page, with the",
            "shipped checkpoints in fast mode: the median over a few moves (`tests/test_browser.py`, recorded with",
            "`python -m course_lib.results --add build/browser/latency/*.json`). Times depend on the machine's load,",
            "which each line records (the 1-minute load average when the chapter ran).", "",
            "| chapter | explorer | moves | median s | slowest s | aim s | machine | load | date |",
            "|---|---|---:|---:|---:|---:|---|---:|---|"]
    for r in _lines_of_kind(records, "explorer_latency"):
        s, m = r["settings"], r["metrics"]
        moves = m.get("moves", [])
        slowest = max((move["seconds"] for move in moves), default=float("nan"))
        aim = f"{m['target_seconds']:g}" if m.get("target_seconds") else ""
        rows.append(f"| {s['chapter']} | {s['explorer']} #{s.get('index', 0)} | {len(moves)} | "
                    f"{m['median_seconds']:.2f} | {slowest:.2f} | {aim} | {r.get('hardware', '')} | "
                    f"{r.get('load_average', [float('nan')])[0]:.1f} | {r.get('date', '')} |")
    rows += ["", "### Memory: does a chapter fit a 2 GB notebook server?", "",
             "The kernel's peak resident memory while a chapter runs top to bottom in a fresh kernel (Linux's",
             "high-water mark; `python benchmarks/bench_memory.py --mode both --record`). Binder gives about 2 GB.",
             "", "| chapter | mode | peak GB | fits 2 GB | where the peak was reached | end GB | run s | machine | date |",
             "|---|---|---:|---|---|---:|---:|---|---|"]
    for r in _lines_of_kind(records, "notebook_memory"):
        s, m = r["settings"], r["metrics"]
        rows.append(f"| {s['chapter']} | {s['mode']} | {m['peak_gb']:.2f} | {'yes' if m['peak_gb'] <= 2 else 'NO'} | "
                    f"{m.get('peak_where', '')} | {m.get('end_gb', float('nan')):.2f} | {m.get('seconds', 0):.0f} | "
                    f"{r.get('hardware', '')} | {r.get('date', '')} |")
    rows += ["", "### The static site", "",
             "Each chapter's page with its explorers' precomputed views (`python tools/build_site.py --record`;",
             "the aim is at most 20 MB a chapter).", "",
             "| chapter | mode | MB | explorers | views | date |", "|---|---|---:|---:|---:|---|"]
    for r in _lines_of_kind(records, "site_size"):
        s, m = r["settings"], r["metrics"]
        rows.append(f"| {s['chapter']} | {s['mode']} | {m['bytes'] / 1e6:.1f} | {m.get('explorers', 0)} | "
                    f"{m.get('views', 0)} | {r.get('date', '')} |")
    return rows


def results_page(records: list[dict]) -> str:
    """``docs/results.md``: the headline table, then every point, prompt accuracy, and what points cost."""
    return "\n".join([
        "# Results",
        "",
        "Generated by `python -m course_lib.results` from `data/results.jsonl` and the checkpoint cards; do not",
        "edit by hand (a test fails when this page is stale). Each line of the file is one measured point and",
        "one sampling seed, made by `python -m course_lib.evaluation` (`--seeds K` for K seeds).",
        "",
        "How to read the tables:",
        "",
        "- **FID-N** compares N generated images with the 50,000 CIFAR-10 training images (Inception-v3, TF",
        "  weights); it is biased upwards at small N, so FIDs compare only at equal N (2,000 here). **FD_clf** is",
        "  the same distance in the course classifier's features: fast, comparable only with itself.",
        "- **a ± b (k seeds)**: mean and standard deviation over k sampling seeds (each seed its own noise);",
        "  a single number is one seed. Read gaps smaller than the spread as ties.",
        "- **NFE**: the denoiser's forward passes per image, counted while sampling (a guided step is 2, w = 0",
        "  and w = 1 are 1; Heun's step is 2). Latent models also run their decoder once per image (not counted).",
        "- **decoder**: the autoencoder weights that turned latents into images (name and hash prefix).",
        "- Training CPU-minutes come from the checkpoint cards (wall time of the training command).",
        "",
        "## Headline results",
        "",
        headline_table(records),
        "",
        "## Sample quality, every point",
        "",
        *_sample_rows(records, ("samples",)),
        "",
        "## Reconstructions and real images",
        "",
        "What an autoencoder loses before any diffusion (its reconstructions of the first N test images), and",
        "what real test images score at the same N: the floor of FID-N.",
        "",
        *_sample_rows(records, ("reconstructions", "real")),
        "",
        "## Prompt accuracy",
        "",
        "The share of images generated from a class prompt that the course classifier assigns to that class",
        "(`python -m course_lib.evaluation CKPT --per-class K --guidance ...`); 'unseen' prompts use words no",
        "training caption has.",
        "",
        *_accuracy_rows(records),
        "",
        "## What a point costs to measure",
        "",
        "CPU-minutes of one seed of one point (sampling, Inception and classifier features), from the lines'",
        "own timings. The rule that follows: classifier metrics (FD_clf, prompt accuracy: seconds after",
        "sampling) for sweeps, curves and snapshots; FID-2k with 3 seeds only for headline points.",
        "",
        *_cost_rows(records),
        "",
        "## The checkpoints",
        "",
        "What each shipped checkpoint is and what its training cost, from its card (`data/checkpoints/*.json`;",
        "training CPU-minutes are the wall time of the training command, on the hardware named, and",
        "include the earlier runs a checkpoint was resumed from).",
        "",
        *_checkpoint_rows(),
        "",
        "## What attention costs: chapter 2's three versions on chapter 6's joint sequences",
        "",
        *_attention_rows(records),
        "",
        "## Curves recorded while training: QK-norm",
        "",
        *_monitor_rows(records),
        "",
        "## Reaching the readers: explorers, memory, the site",
        "",
        *_delivery_rows(records),
        "",
    ])


def _replace_between_markers(text: str, table: str, where: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"{where} lacks the markers {BEGIN} and {END}; put them where the table belongs")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.results",
                                     description="Write docs/results.md and the README's headline table from "
                                                 "data/results.jsonl.")
    parser.add_argument("--results", default=None, help="default: data/results.jsonl")
    parser.add_argument("--readme", default=str(config.REPO_ROOT / "README.md"))
    parser.add_argument("--page", default=str(config.REPO_ROOT / "docs" / "results.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the page or the README's table is stale")
    parser.add_argument("--add-monitor", nargs="+", type=Path, default=[], metavar="CHECKPOINT",
                        help="first append the monitor history of these training states or exports (a run trained "
                             "with TrainConfig(monitor_every=N)) as training_monitor lines")
    parser.add_argument("--add", nargs="+", type=Path, default=[], metavar="FILE",
                        help="first append the results lines in these files (JSON lists or JSON Lines), e.g. "
                             "build/browser/latency/*.json")
    args = parser.parse_args(argv)
    path = Path(args.results) if args.results else results_path()
    for checkpoint in args.add_monitor:
        try:
            append_result(monitor_line(checkpoint), path)
        except (OSError, ValueError) as err:
            parser.error(str(err))
        print(f"{checkpoint}: its monitor history added to {path}")
    for source in args.add:
        try:
            print(f"{source}: {add_results(source, path)} line(s) added to {path}")
        except (OSError, ValueError) as err:
            parser.error(str(err))
    if not path.is_file():
        parser.error(f"{path} does not exist; run python -m course_lib.evaluation CHECKPOINT --num-samples N first")
    records = read_results(path)
    readme = Path(args.readme)
    targets = {Path(args.page): results_page(records),
               readme: _replace_between_markers(readme.read_text(), headline_table(records), str(readme))}
    stale = [p for p, text in targets.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p} is not what {path} gives; run python -m course_lib.results")
        return 1 if stale else 0
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(targets[p])
        print(f"{p}: rewritten from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
