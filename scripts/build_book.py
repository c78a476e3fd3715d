#!/usr/bin/env python
"""Execute every notebook of the book with papermill, then build the book from those executed copies.

    python scripts/build_book.py           # embedded default: Whisper base, the embedded speech set
    python scripts/build_book.py --smoke   # smoke scale for CI: the same, on the first 16 utterances

1. Each notebook listed in ``_toc.yml`` is executed from its committed (output-free) source into
   ``_build/executed/`` (never in place), in the venv's own kernel, with the scale's parameters and a
   fresh ``BUILD_ID`` injected. The first error stops the build with a non-zero exit; the failed
   executed notebook stays there for inspection.
2. ``_build/executed/`` (config, toc, prose pages and executed notebooks) is built with
   ``jupyter-book build -W -n --keep-going`` and execution off, into ``_build/html``.
3. Freshness: every code cell of every executed notebook must carry an execution count and a
   papermill run time, the kernel must be this interpreter's environment, and every notebook's HTML
   page must contain this build's ``BUILD_ID``. Any miss fails the build.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import papermill
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
STAGE = BUILD / "executed"
CACHE = BUILD / "cache"
HTML = BUILD / "html"

# Parameters injected into every notebook that declares them (see each notebook's `parameters` cell).
SCALES = {
    "default": dict(MODEL="embedded:whisper-base", DATA="embedded", DATA_SETS=["embedded"], MAX_SAMPLES=None),
    # Whisper base at smoke scale too: tiny.en is so fragile that pruning it yields runaway transcripts
    # (WERs of several hundred percent) that say nothing and decode for the full 448 tokens.
    "smoke": dict(MODEL="embedded:whisper-base", DATA="embedded", DATA_SETS=["embedded"], MAX_SAMPLES=16),
}


def toc_files(toc: dict) -> list[str]:
    """Every file of ``_toc.yml`` in reading order: the root, then parts, chapters and sections."""
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    return files


def notebooks_in_toc(root: Path = ROOT) -> list[Path]:
    """The notebooks (``.ipynb`` sources) that ``_toc.yml`` lists, relative to ``root``."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    return [Path(f + ".ipynb") for f in toc_files(toc) if (root / (f + ".ipynb")).is_file()]


def stage_sources() -> None:
    """Copy config, toc and prose (everything but notebooks) of the book into the staging folder."""
    shutil.rmtree(STAGE, ignore_errors=True)
    STAGE.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, STAGE / name)
    shutil.copytree(ROOT / "book", STAGE / "book", ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))


def execute(notebook: Path, parameters: dict) -> float:
    """Run ``notebook`` into the staging folder; returns seconds. Raises on the first failing cell."""
    source, target = ROOT / notebook, STAGE / notebook
    target.parent.mkdir(parents=True, exist_ok=True)
    declared = papermill.inspect_notebook(str(source))
    injected = {k: v for k, v in parameters.items() if k in declared}
    started = time.perf_counter()
    papermill.execute_notebook(str(source), str(target), parameters=injected, kernel_name="python3",
                               cwd=str(source.parent), progress_bar=False, start_timeout=120)
    return time.perf_counter() - started


def check_executed(notebook: Path, build_id: str) -> list[str]:
    """Problems showing that ``notebook`` did not fully run in this build and this environment."""
    nb = nbformat.read(STAGE / notebook, as_version=4)
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        duration = cell.metadata.get("papermill", {}).get("duration")
        if cell.get("execution_count") is None or not duration or duration <= 0:
            problems.append(f"{notebook}: code cell {i} has no execution count or run time")
    text = "\n".join(
        str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", ""))
        for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    if build_id not in text:
        problems.append(f"{notebook}: no output shows this build's BUILD_ID {build_id}")
    if f"environment {sys.prefix}" not in text:
        problems.append(f"{notebook}: the kernel did not report this environment ({sys.prefix})")
    return problems


def check_html(notebook: Path, build_id: str) -> list[str]:
    page = HTML / notebook.with_suffix(".html")
    if not page.is_file():
        return [f"{page.relative_to(ROOT)} was not built"]
    if build_id not in page.read_text(encoding="utf-8"):
        return [f"{page.relative_to(ROOT)} does not show this build's BUILD_ID {build_id}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small parameters for CI (16 utterances)")
    parser.add_argument("--keep-cache", action="store_true",
                        help="reuse measurements cached by an earlier build instead of measuring afresh")
    args = parser.parse_args(argv)

    scale = "smoke" if args.smoke else "default"
    build_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    if not args.keep_cache:
        shutil.rmtree(CACHE, ignore_errors=True)
    parameters = dict(SCALES[scale], BUILD_ID=build_id, CACHE_DIR=str(CACHE), RESULTS_DIR=str(ROOT / "results"))
    # The kernel imports this working tree's package, and `python` on its PATH is this interpreter.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    print(f"build {build_id}, scale {scale}: {', '.join(f'{k}={v}' for k, v in SCALES[scale].items())}", flush=True)
    stage_sources()
    timings: list[tuple[str, float]] = []
    for notebook in notebooks_in_toc():
        print(f"executing {notebook} ...", flush=True)
        try:
            seconds = execute(notebook, parameters)
        except papermill.PapermillExecutionError as err:
            print(f"\nFAILED: {notebook}: {err.ename}: {err.evalue}\n"
                  f"the executed notebook is kept for inspection: {(STAGE / notebook).relative_to(ROOT)}",
                  file=sys.stderr)
            return 1
        timings.append((str(notebook), seconds))
        print(f"  done in {seconds:.0f} s", flush=True)

    problems = [p for nb, _ in timings for p in check_executed(Path(nb), build_id)]
    if problems:
        print("\n".join(["FAILED: executed notebooks are incomplete:", *problems]), file=sys.stderr)
        return 1

    started = time.perf_counter()
    for old in (HTML, BUILD / ".doctrees", BUILD / "jupyter_execute"):  # a clean build, nothing left over
        shutil.rmtree(old, ignore_errors=True)
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    book = subprocess.run([str(jupyter_book), "build", "-W", "-n", "--keep-going",
                           "--path-output", str(ROOT), str(STAGE)], cwd=ROOT)
    timings.append(("jupyter-book build", time.perf_counter() - started))
    if book.returncode != 0:
        print(f"FAILED: jupyter-book build exited with {book.returncode}", file=sys.stderr)
        return book.returncode

    problems = [p for nb, _ in timings[:-1] for p in check_html(Path(nb), build_id)]
    if problems:
        print("\n".join(["FAILED: stale pages:", *problems]), file=sys.stderr)
        return 1

    print(f"\n{'step':45s} {'seconds':>8s}")
    for name, seconds in timings:
        print(f"{name:45s} {seconds:8.0f}")
    print(f"{'total':45s} {sum(s for _, s in timings):8.0f}")
    print(f"\nbuild {build_id}: every notebook ran in this build; open {(HTML / 'index.html').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
