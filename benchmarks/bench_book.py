"""Benchmark: how long the book takes to build at its default scale, per chapter, and on what load.

    python benchmarks/bench_book.py                 # build the book (SCALE "embedded"), then report
    python benchmarks/bench_book.py --report-only   # report the last build's _build/durations.json

The targets (issue: build times a teacher can trust): the whole default-scale build within 10
minutes on 2 idle cores, and every chapter within 4 minutes. Each chapter's wall time is printed
with its CPU time, the machine's load average while it ran, and the part of that load that was not
this build's (``scripts/build_book.py`` measures them); a time taken on a busy machine is marked as
such, and does not count as meeting or missing a target. The figures are saved to
``results/benchmarks/book_build.json`` (one entry per build, newest last), so that the course
guide's table can be checked against an idle build.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from speechprune.outputs import write_file

ROOT = Path(__file__).resolve().parents[1]
DURATIONS = ROOT / "_build" / "durations.json"
RESULTS = ROOT / "results" / "benchmarks" / "book_build.json"
BUILD_TARGET_S = 600
CHAPTER_TARGET_S = 240
BUSY = 0.5  # load that was not the build's own, above which its times are not the book's speed


def report(durations: dict, total_seconds: float | None) -> tuple[str, dict]:
    """The table and a summary (targets met, missed, or not judged on a busy machine)."""
    rows = [f"{'chapter':42s} {'wall s':>7s} {'CPU s':>7s} {'load':>5s} {'not ours':>8s} {'/ 4 min':>8s}"]
    chapters = [e for e in durations["notebooks"] if e["notebook"].startswith("notebooks/")]
    busy = False
    for e in chapters:
        other = e.get("other_load")
        busy |= other is None or other > BUSY
        rows.append(f"{e['title'][:42]:42s} {e['seconds']:7.0f} {e.get('cpu_seconds', float('nan')):7.0f} "
                    f"{e.get('load_average', float('nan')):5.1f} {other if other is not None else float('nan'):8.1f} "
                    f"{e['seconds'] / CHAPTER_TARGET_S:7.2f}x")
    notebooks = sum(e["seconds"] for e in durations["notebooks"])
    rows.append(f"{'all notebooks (chapters and book pages)':42s} {notebooks:7.0f}")
    if total_seconds is not None:
        rows.append(f"{'whole build (notebooks, jupyter-book, checks)':42s} {total_seconds:7.0f} "
                    f"{'':7s} {'':5s} {'':8s} {total_seconds / BUILD_TARGET_S:7.2f}x of 10 min")
    slow = [e["title"] for e in chapters if e["seconds"] > CHAPTER_TARGET_S]
    summary = dict(build_id=durations["build_id"], scale=durations["scale"], machine=durations["machine"],
                   cores=os.cpu_count(), date=durations["date"], busy=busy, total_seconds=total_seconds,
                   notebooks_seconds=round(notebooks, 1), chapters_over_4_min=slow,
                   chapters={e["notebook"]: {k: e.get(k) for k in ("seconds", "cpu_seconds", "load_average",
                                                                    "other_load")} for e in chapters})
    if busy:
        verdict = ("not judged: the machine was busy with other work (load not this build's above "
                   f"{BUSY}); rerun on an idle machine")
    else:
        over = total_seconds is not None and total_seconds > BUILD_TARGET_S
        verdict = ("targets met" if not slow and not over else
                   "targets missed: " + ", ".join(slow + (["the whole build"] if over else [])))
    summary["verdict"] = verdict
    rows.append(f"verdict: {verdict}")
    return "\n".join(rows), summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report-only", action="store_true", help="report the last build, build nothing")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    total = None
    if not args.report_only:
        started = time.perf_counter()
        build = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_book.py")], cwd=ROOT)
        total = round(time.perf_counter() - started, 1)
        if build.returncode != 0:
            print(f"the build failed (exit {build.returncode}); nothing recorded", file=sys.stderr)
            return build.returncode
    if not DURATIONS.is_file():
        print(f"no {DURATIONS.relative_to(ROOT)}: build the book first (python scripts/build_book.py)",
              file=sys.stderr)
        return 2
    durations = json.loads(DURATIONS.read_text())
    table, summary = report(durations, total)
    print(table)
    saved = json.loads(args.out.read_text()) if args.out.is_file() else {"builds": []}
    saved["builds"] = [b for b in saved["builds"] if b["build_id"] != summary["build_id"]] + [summary]
    write_file(args.out, json.dumps(saved, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
