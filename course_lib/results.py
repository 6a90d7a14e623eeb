"""The README's results table, generated from ``data/results.jsonl`` (never typed by hand).

Every run of ``python -m course_lib.evaluation CHECKPOINT --num-samples N ...`` appends one JSON line
to ``data/results.jsonl``. This module reads those lines and writes the table between the markers
``<!-- results:begin -->`` and ``<!-- results:end -->`` of ``README.md``::

    python -m course_lib.results            # rewrite the table in README.md
    python -m course_lib.results --check    # exit 1 if README.md's table is not what the file gives
    python -m course_lib.results --print    # print the table only

When the same checkpoint (by hash) was measured twice with the same settings, the later line wins.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import config

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def read_results(path: str | Path) -> list[dict]:
    """The records of a results file, later duplicates (same checkpoint hash and settings) replacing earlier ones."""
    records: dict[str, dict] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not JSON ({err}); fix or delete that line") from err
        key = json.dumps([record.get("checkpoint_sha256", record.get("checkpoint")), record.get("settings")],
                         sort_keys=True)
        records.pop(key, None)  # re-insert, so that the order is that of the latest measurements
        records[key] = record
    return list(records.values())


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _fid_label(n: int) -> str:
    from .evaluation import fid_label

    return fid_label(n)


def _row(r: dict) -> str:
    s, m, ref, sec = r.get("settings", {}), r.get("metrics", {}), r.get("reference", {}), r.get("seconds", {})
    n = s.get("num_samples")
    if r.get("checkpoint", "").startswith("cifar10:"):
        what, sampling = f"CIFAR-10 {r['checkpoint'].split(':', 1)[1]} images", "real images"
    elif "reconstruction" in s:
        what = f"`{r['model']}` (step {r.get('step')}, {r.get('training_minutes', 0):.0f} min training)"
        sampling = "reconstructions of test images"
    else:
        guidance = s.get("guidance")
        sampling = f"{s.get('sampler')} {s.get('steps')} steps" + (f", w = {guidance:g}" if guidance is not None else "")
        what = f"`{r['model']}` (step {r.get('step')}, {r.get('training_minutes', 0):.0f} min training)"
    fid = f"{_fid_label(n)} **{m['fid']:.2f}**" if "fid" in m else ""
    kid = f"{1000 * m['kid_mean']:.2f} ± {1000 * m['kid_std']:.2f}" if "kid_mean" in m else ""
    pr = f"{m['precision']:.2f} / {m['recall']:.2f}" if "precision" in m else ""
    clf = (f"{m['fd_clf']:.3g} ({m['precision_clf']:.2f} / {m['recall_clf']:.2f})" if "fd_clf" in m else "")
    minutes = sum(sec.get(k, 0) for k in ("sampling", "inception_total", "classifier")) / 60
    source = ref.get("source", "").replace(" (COURSE_CIFAR10_DIR)", "")
    reference = f"{ref.get('fid_n', ref.get('fd_clf_n', 0)):,} {ref.get('split', '')} images, {source}"
    hardware = r.get("hardware", "")
    machine = hardware.split(" (")[0] + (f", {hardware.rsplit(', ', 1)[-1]}" if ", " in hardware else "")
    return " | ".join(["", what, sampling, f"{n:,}", reference, fid, kid, pr, clf, f"{minutes:.0f}", machine,
                       ""]).strip()


def results_table(records: list[dict]) -> str:
    """A Markdown table of the records: one row per run, real-data rows first, then by model and guidance."""
    header = ("| model | sampling | N | reference (FID, FD_clf) | FID-N | KID x 10³ | precision / recall | "
              "FD_clf (P / R) | eval min | machine |\n|---|---|---:|---|---:|---:|---:|---:|---:|---|")
    def order(r: dict):
        s = r.get("settings", {})
        return (not r.get("checkpoint", "").startswith("cifar10:"), r.get("model", ""),
                s.get("guidance") or 0.0, s.get("steps") or 0, s.get("num_samples") or 0)
    return "\n".join([header, *(_row(r) for r in sorted(records, key=order))])


def update_readme(readme: str | Path, table: str) -> tuple[str, str]:
    """(old text, new text) of ``readme`` with ``table`` between the markers."""
    text = Path(readme).read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} lacks the markers {BEGIN} and {END}; put them where the table belongs")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return text, f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.results",
                                     description="Write the README's results table from data/results.jsonl.")
    parser.add_argument("--results", default=None, help="default: data/results.jsonl")
    parser.add_argument("--readme", default=str(config.REPO_ROOT / "README.md"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if the README's table is out of date")
    mode.add_argument("--print", action="store_true", help="print the table instead of writing the README")
    args = parser.parse_args(argv)
    path = Path(args.results) if args.results else config.data_dir() / "results.jsonl"
    if not path.is_file():
        parser.error(f"{path} does not exist; run python -m course_lib.evaluation CHECKPOINT --num-samples N first")
    table = results_table(read_results(path))
    if args.print:
        print(table)
        return 0
    old, new = update_readme(args.readme, table)
    if args.check:
        if old != new:
            print(f"{args.readme}: the results table differs from {path}; run python -m course_lib.results")
            return 1
        return 0
    if old != new:
        Path(args.readme).write_text(new)
        print(f"{args.readme}: results table rewritten from {path} ({table.count(chr(10)) - 1} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
