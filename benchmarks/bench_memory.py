"""Benchmark: the kernel's peak resident memory while each chapter runs, in fast and in full mode.

Hosted notebook servers are small: Binder gives about 2 GB of memory to the kernel, the Jupyter server and
everything else. This script runs each chapter top to bottom in a fresh kernel with ``nbclient``, as the course
site's builder does (``tools/build_site.py``: the chapter's source with its solutions, cwd its folder,
``COURSE_FAST=1`` in fast mode), and after every cell reads the kernel process's resident memory from Linux's
``/proc/<pid>/status``: ``VmRSS`` (now) and ``VmHWM`` (the high-water mark, the most it has held at any moment, not
just at the cells' ends; fresh for each kernel, since a process's mark starts anew at exec). Elsewhere (macOS) it
polls ``psutil`` every 50 ms instead, which can miss a short peak. The kernel's child processes, if any, are added.

It prints, per chapter and mode: the run's seconds, the peak (GB = 2^30 bytes), the cell where the high-water
mark reached it (index, its section, its first line), the memory at the end, and whether it fits ``--limit``
(default 2 GB). ``--json`` also writes the rows (and every cell's RSS and high-water mark) to a file;
``--record`` appends one line per chapter and mode (kind ``notebook_memory``) to the course's results file,
which ``python -m course_lib.results`` shows on the results page.

    python benchmarks/bench_memory.py                          # fast mode, every chapter
    python benchmarks/bench_memory.py 03 06 --mode full        # full mode, chapters 3 and 6 (minutes each)
    python benchmarks/bench_memory.py --mode both --json build/memory.json --record

The peaks do not depend on the machine's load, but the seconds do. Full mode of every chapter takes long
(about 20 minutes on 2 cores); pick chapters.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from _common import benchmark_parser, header  # this folder's
from course_lib.classroom import select
from course_lib.config import cpu_name
from course_lib.results import append_result

GB = 2 ** 30


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of process ``pid`` in bytes, from /proc (Linux); {} where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {key: int(value) * 1024 for key, value in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}


def _children(pid: int) -> list[int]:
    try:
        import psutil

        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except Exception:  # noqa: BLE001 - psutil missing or the process gone: no children counted
        return []


class MemoryWatch:
    """The resident memory of a kernel process (and its children): ``now()`` and ``peak()`` in bytes.

    On Linux ``peak()`` is the kernel's high-water mark ``VmHWM`` (plus its children's); elsewhere a thread polls
    ``psutil`` every ``interval`` seconds and keeps the largest sum seen."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.polled = pid, 0
        self.linux = bool(_status(pid))
        self._stop = threading.Event()
        if not self.linux:
            self._thread = threading.Thread(target=self._poll, args=(interval,), daemon=True)
            self._thread.start()

    def _rss(self, pid: int) -> int:
        if self.linux:
            return _status(pid).get("VmRSS", 0)
        import psutil

        try:
            return psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return 0

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.polled = max(self.polled, self.now())

    def now(self) -> int:
        """Resident bytes of the kernel and its children now."""
        return sum(self._rss(pid) for pid in [self.pid, *_children(self.pid)])

    def peak(self) -> int:
        """The most resident bytes seen so far: the kernel's high-water mark plus its children's (Linux)."""
        if self.linux:
            return sum(_status(pid).get("VmHWM", 0) for pid in [self.pid, *_children(self.pid)])
        return max(self.polled, self.now())

    def stop(self) -> None:
        self._stop.set()


def _section(nb, index: int) -> str:
    """The ``## `` heading above cell ``index`` (the setup before the first one)."""
    for cell in reversed(nb.cells[: index + 1]):
        if cell.cell_type == "markdown":
            heading = re.search(r"^## (.+)$", cell.source, re.M)
            if heading:
                return heading.group(1).strip()
    return "setup (imports, data)"


def measure(source: Path, mode: str, timeout: int, threads: int | None = None) -> dict:
    """Run ``source`` in a fresh kernel in ``mode`` and return its memory: peak, where, at the end, per cell."""
    nb = nbformat.read(source, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_FAST", "COURSE_LONG")}
    if mode == "fast":
        env["COURSE_FAST"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cells: list[dict] = []
    watch: list[MemoryWatch] = []

    def on_cell_executed(cell, cell_index, execute_reply):
        if not watch:
            watch.append(MemoryWatch(client.km.provisioner.pid))
        cells.append({"cell": cell_index, "rss": watch[0].now(), "peak": watch[0].peak()})

    client = NotebookClient(nb, timeout=timeout, kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
                            resources={"metadata": {"path": str(source.parent)}}, on_cell_executed=on_cell_executed)
    start, error = time.perf_counter(), None
    try:
        client.execute(env=env)
    except CellExecutionError as err:
        error = f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', '')}"[:200]
    finally:
        for w in watch:
            w.stop()
    seconds = time.perf_counter() - start
    peak = max((c["peak"] for c in cells), default=0)
    where = next((c["cell"] for c in cells if c["peak"] == peak), None)
    first_line = nb.cells[where].source.strip().splitlines()[0][:60] if where is not None and nb.cells[where].source.strip() else ""
    return {"chapter": source.stem, "mode": mode, "seconds": round(seconds, 1), "peak_bytes": peak,
            "peak_cell": where, "peak_section": _section(nb, where) if where is not None else None,
            "peak_line": first_line, "end_bytes": cells[-1]["rss"] if cells else 0, "error": error, "cells": cells}


def record(rows: list[dict], kernel_threads: str) -> None:
    """Append each measured row (a chapter in a mode) to the course's results file, as kind ``notebook_memory``."""
    for row in rows:
        if row["error"]:
            print(f"not recorded: {row['chapter']} {row['mode']} stopped ({row['error']})")
            continue
        append_result({
            "date": time.strftime("%Y-%m-%d"), "kind": "notebook_memory",
            "settings": {"chapter": row["chapter"], "mode": row["mode"]},
            "metrics": {"peak_gb": round(row["peak_bytes"] / GB, 3), "end_gb": round(row["end_bytes"] / GB, 3),
                        "seconds": row["seconds"], "peak_where": f"cell {row['peak_cell']} ({row['peak_section']})"},
            "hardware": f"CPU {cpu_name()}, {os.cpu_count()} cores, {kernel_threads}"})
    print(f"recorded {sum(not row['error'] for row in rows)} line(s); python -m course_lib.results shows them")


def main() -> None:
    parser = benchmark_parser(__doc__, repeats=None)
    parser.add_argument("chapters", nargs="*", help="notebook names or numbers (default: all), e.g. 03 06_mmdit")
    parser.add_argument("--mode", choices=("fast", "full", "both"), default="fast", help="default: fast")
    parser.add_argument("--limit", type=float, default=2.0, help="the server's memory in GB (default 2)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run (default 1800)")
    parser.add_argument("--json", type=Path, help="also write the rows, with every cell's memory, to this file")
    parser.add_argument("--record", action="store_true",
                        help="append each chapter's peak to data/results.jsonl (for docs/results.md)")
    args = parser.parse_args()
    try:
        names = select(args.chapters)
    except ValueError as err:
        parser.error(str(err))
    modes = ["fast", "full"] if args.mode == "both" else [args.mode]
    kernel_threads = f"kernel threads {args.threads}" if args.threads else "kernel threads: torch's choice"
    print(header(f"{len(names)} chapter(s), {' and '.join(modes)} mode", kernel_threads), flush=True)
    print(f"{'chapter':22s} {'mode':4s} {'seconds':>8s} {'peak GB':>8s} {'end GB':>7s}  fits {args.limit:g} GB  "
          "where the peak was reached", flush=True)
    rows = []
    for mode in modes:
        for source in names:
            row = measure(source, mode, args.timeout, args.threads)
            rows.append(row)
            fits = "yes" if row["peak_bytes"] <= args.limit * GB else "NO"
            where = f"cell {row['peak_cell']} ({row['peak_section']}): {row['peak_line']}"
            print(f"{row['chapter']:22s} {mode:4s} {row['seconds']:8.1f} {row['peak_bytes'] / GB:8.2f} "
                  f"{row['end_bytes'] / GB:7.2f}  {fits:>{8 + len(f'{args.limit:g}')}s}  {where}"
                  + (f"  [stopped: {row['error']}]" if row["error"] else ""), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"limit_gb": args.limit, "rows": rows}, indent=1))
        print(f"wrote {args.json}")
    if args.record:
        record(rows, kernel_threads)
    if any(row["peak_bytes"] > args.limit * GB for row in rows if row["mode"] == "fast"):
        sys.exit(1)


if __name__ == "__main__":
    main()
