#!/usr/bin/env python
"""Execute every notebook of the book with papermill, then build the book from those executed copies.

    python scripts/build_book.py             # embedded default (SCALE="embedded"): Whisper base, embedded speech
    python scripts/build_book.py --smoke     # smoke scale for CI (SCALE="smoke"): the first 16 utterances
    python scripts/build_book.py --student   # the same book without the exercises' solutions

1. Each notebook listed in ``_toc.yml`` is executed from its committed (output-free) source into
   ``_build/executed/`` (never in place), in the venv's own kernel, with the scale's parameters and a
   fresh ``BUILD_ID`` injected. Chapters take a ``SCALE``; a notebook without one gets the scale's
   ``MODEL``/``DATA``/``MAX_SAMPLES`` directly. The first error stops the build with a non-zero exit;
   the failed executed notebook stays there for inspection.
2. The executed notebooks are made path-free for publishing (the injected-parameters cell is hidden,
   papermill's absolute input/output paths become relative, stderr is dropped as the book does), and
   each chapter's papermill durations go to ``_build/durations.json`` and to the course guide's run-time
   table (``book/chapter_times.md`` in the staged copy).
3. ``_build/executed/`` (config, toc, prose pages and executed notebooks) is built with
   ``jupyter-book build -W -n --keep-going`` and execution off, into ``_build/html``.
4. Checks, any of which fails the build: every code cell of every executed notebook carries an
   execution count and a papermill run time, the kernel was this interpreter's environment, every
   notebook's page shows this build's ``BUILD_ID``; no published file shows an absolute path of this
   machine; every figure has alt text or a caption; no page shows an unrendered MyST role (``{glue:text}``,
   ``{term}``, ``{cite:p}`` ...) or a word about how the project was organised (``INSIDER_WORDS``); every
   page loads MathJax from the copy served with the book (``_static/mathjax``), never a CDN; every figure
   (logged by ``speechprune.book.figure_log`` while its notebook ran) has its panels one per row and its
   smallest text at 9 CSS px or more on a phone (390 px viewport) and 8 px or more on a desktop page
   (1280 px), its image scaled to the output column Chromium measures (``COLUMN`` without Chromium); and,
   where Chromium is installed, no page scrolls sideways at phone width (390 px).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import papermill
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
STAGE = BUILD / "executed"
CACHE = BUILD / "cache"
HTML = BUILD / "html"
#: The book-build benchmark's records (benchmarks/bench_book.py): one per default-scale build, newest last.
BENCH_BUILDS = ROOT / "results" / "benchmarks" / "book_build.json"

# The scales of the book's builds. Chapters take a SCALE parameter and hold these values in their own
# PRESETS (a test keeps both in step); other notebooks get the values injected directly.
SCALES = {
    # the first 32 of the 64 test clips: the default-scale build within 10 minutes on 2 idle cores (all 64
    # took 14.3 min, chapter 2 6.2 min; results/benchmarks/book_build.json); MAX_SAMPLES = 0 runs all 64
    "embedded": dict(MODEL="embedded:whisper-base", DATA="embedded", DATA_SETS=["embedded"], MAX_SAMPLES=32),
    # Whisper base at smoke scale too: tiny.en is so fragile that pruning it yields runaway transcripts
    # (WERs of several hundred percent) that say nothing and decode for the full 448 tokens.
    "smoke": dict(MODEL="embedded:whisper-base", DATA="embedded", DATA_SETS=["embedded"], MAX_SAMPLES=16),
}
PHONE, DESKTOP = 390, 1280  # viewport widths in CSS pixels
FIGURE_LOG = "SPEECHPRUNE_FIGURE_LOG"  # speechprune.book.figure_log.ENV: where a notebook's figures are logged


def environment_fingerprint(prefix: str = sys.prefix) -> str:
    """A short digest of the Python environment's path: proves which kernel ran, without showing the path."""
    return hashlib.sha256(prefix.encode()).hexdigest()[:12]


def machine_paths() -> list[str]:
    """Absolute paths of this machine that must never appear on a published page."""
    paths = {str(ROOT), sys.prefix, str(Path.home()) + "/", tempfile.gettempdir() + "/", str(Path.cwd())}
    return sorted(p for p in paths if len(p.strip("/")) > 2)


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


def stage_sources(student: bool = False) -> None:
    """Copy config, toc, prose and CSS (everything but notebooks) of the book into the staging folder.

    ``student``: the staged config sets sphinx-exercise's ``hide_solutions`` (and :func:`publish_ready`
    removes the gated solutions, which that option alone cannot).
    """
    shutil.rmtree(STAGE, ignore_errors=True)
    STAGE.mkdir(parents=True)
    shutil.copy2(ROOT / "_toc.yml", STAGE / "_toc.yml")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    if student:
        config.setdefault("sphinx", {}).setdefault("config", {})["hide_solutions"] = True
        config["title"] = f"{config.get('title', '')} (student edition)"
    (STAGE / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copytree(ROOT / "book", STAGE / "book", ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    shutil.copytree(ROOT / "_static", STAGE / "_static")  # the book's own CSS, picked up by Jupyter Book
    # generated tables that prose pages include (book/deploying.md: the deployment benchmark's table)
    (STAGE / "results" / "benchmarks").mkdir(parents=True)
    for table in (ROOT / "results" / "benchmarks").glob("*_table.md"):
        shutil.copy2(table, STAGE / "results" / "benchmarks" / table.name)


def parameters_for(notebook: Path, scale: str, build_id: str) -> dict:
    """What the build injects into ``notebook``: its SCALE where it has one, else the scale's values.

    Folders are relative to the notebook's own folder (its working directory), so no page shows a
    path of this machine.
    """
    declared = papermill.inspect_notebook(str(ROOT / notebook))
    folder = (ROOT / notebook).parent
    values = dict(BUILD_ID=build_id, CACHE_DIR=os.path.relpath(CACHE, folder),
                  RESULTS_DIR=os.path.relpath(ROOT / "results", folder))
    values.update(dict(SCALE=scale) if "SCALE" in declared else SCALES[scale])
    return {k: v for k, v in values.items() if k in declared}


class LoadMeter:
    """Wall time, CPU time (this process and its finished children: the papermill kernel) and the
    machine's mean 1-minute load average, sampled every few seconds, over a ``with`` block.

    The load average counts every runnable process of the machine, this build's own included, so a
    time measured on a busy machine says so beside it: ``other_load`` is the load that was not this
    build's (mean load minus the cores this build kept busy)."""

    def __init__(self, every: float = 5.0):
        self.every, self.samples = every, []
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> "LoadMeter":
        self.samples = [os.getloadavg()[0]]
        self._cpu0 = self._cpu()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu_seconds = self._cpu() - self._cpu0
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
        self.load = sum(self.samples) / len(self.samples)
        self.other_load = max(0.0, self.load - self.cpu_seconds / max(self.seconds, 1e-9))

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def as_dict(self) -> dict:
        return dict(seconds=round(self.seconds, 1), cpu_seconds=round(self.cpu_seconds, 1),
                    load_average=round(self.load, 2), other_load=round(self.other_load, 2))


def execute(notebook: Path, parameters: dict) -> dict:
    """Run ``notebook`` into the staging folder; returns its :class:`LoadMeter` figures (wall and CPU
    seconds, load average). Raises on the first failing cell."""
    source, target = ROOT / notebook, STAGE / notebook
    target.parent.mkdir(parents=True, exist_ok=True)
    with LoadMeter() as meter:
        papermill.execute_notebook(str(source), str(target), parameters=parameters, kernel_name="python3",
                                   cwd=str(source.parent), progress_bar=False, start_timeout=120)
    return meter.as_dict()


def solution_span(nb) -> set[int]:
    """Indices of the cells between an exercise's ``solution-start`` and ``solution-end``."""
    inside, cells = False, set()
    for i, cell in enumerate(nb.cells):
        text = cell.source if cell.cell_type == "markdown" else ""
        if "{solution-start}" in text:
            inside = True
        if inside:
            cells.add(i)
        if "{solution-end}" in text:
            inside = False
    return cells


def _student_version():
    spec = importlib.util.spec_from_file_location("student_version", Path(__file__).with_name("student_version.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def publish_ready(notebook: Path, student: bool = False) -> dict:
    """Make an executed notebook path-free for publishing; returns its cells' papermill durations.

    Hides the injected-parameters cell, makes papermill's input/output paths relative and drops
    stderr streams (the book removes them from pages anyway; the downloadable copy must match).
    ``student``: the solutions, which ran like every cell, are then removed from the page. (With
    sphinx-exercise 1.2.1, ``hide_solutions`` alone drops a gated solution's start but not its end or
    the code cells between, and the build crashes; so the build removes them itself.)
    """
    path = STAGE / notebook
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            meta[key] = str(notebook)
    solutions = solution_span(nb)
    cells = solution_seconds = 0.0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell.metadata["tags"] = sorted(set(cell.metadata["tags"]) | {"remove-cell"})
        cell.outputs = [o for o in cell.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        seconds = cell.metadata.get("papermill", {}).get("duration") or 0.0
        cells += seconds
        solution_seconds += seconds if i in solutions else 0.0
    if student:
        _student_version().strip_solutions(nb, str(notebook), handout=False)
    nbformat.write(nb, path)
    title = next((c.source.splitlines()[0].lstrip("# ").strip() for c in nb.cells
                  if c.cell_type == "markdown" and c.source.startswith("# ")), str(notebook))
    exercises = sum(c.source.count("{exercise}") for c in nb.cells if c.cell_type == "markdown")
    return dict(notebook=str(notebook), title=title, cells_seconds=round(cells, 1),
                solutions_seconds=round(solution_seconds, 1), exercises=exercises)


#: Above this much load that was not the build's own, its times are not the book's speed.
BUSY = 0.5


def idle_benchmark_line(path: Path = BENCH_BUILDS) -> str:
    """One sentence on the newest default-scale build that ``benchmarks/bench_book.py`` recorded on an
    idle machine (its whole time and each chapter's), or "" when there is none."""
    try:
        builds = json.loads(path.read_text())["builds"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    idle = [b for b in builds if not b.get("busy", True) and b.get("scale") == "embedded" and b.get("total_seconds")]
    if not idle:
        return ""
    b = idle[-1]
    chapters = "; ".join(f"chapter {Path(name).name[:2].lstrip('0')}: {c['seconds'] / 60:.1f} min"
                         for name, c in sorted(b["chapters"].items()))
    return (f"The book's build benchmark (`python benchmarks/bench_book.py`, kept in "
            f"`results/benchmarks/book_build.json`) last built the book at `SCALE = \"embedded\"` on an idle "
            f"machine ({b['machine']}, {b['date']}, build `{b['build_id']}`) in {b['total_seconds'] / 60:.1f} min "
            f"in all ({chapters}). Against its targets of 10 min in all and 4 min per chapter: {b['verdict']}.")


def chapter_times_table(durations: dict, benchmark: str | None = None) -> str:
    """The course guide's run-time table (MyST markdown), from this build's papermill durations, with
    the CPU time and the machine's load beside each wall time, and the build benchmark's newest idle
    default-scale build (``benchmark``: that sentence; default: read from ``BENCH_BUILDS``)."""
    benchmark = idle_benchmark_line() if benchmark is None else benchmark
    rows = ["| chapter | run time | CPU time | load average (not this build's) | of which exercise solutions "
            "| exercises |", "|---|---:|---:|---:|---:|---:|"]
    chapters = [e for e in durations["notebooks"] if e["notebook"].startswith("notebooks/")]
    for entry in chapters:
        link = f"[{entry['title']}](../{entry['notebook']})"
        load = (f"{entry['load_average']:.1f} ({entry['other_load']:.1f})" if "load_average" in entry else "n/a")
        cpu = f"{entry['cpu_seconds'] / 60:.1f} min" if "cpu_seconds" in entry else "n/a"
        rows.append(f"| {link} | {entry['seconds'] / 60:.1f} min | {cpu} | {load} "
                    f"| {entry['solutions_seconds'] / 60:.1f} min | {entry['exercises']} |")
    busy = [e for e in chapters if e.get("other_load", 0.0) > BUSY]
    verdict = (f" The machine was busy with other work during {len(busy)} of the {len(chapters)} chapters (a load "
               f"of more than {BUSY} that was not this build's): their wall times overstate what a student's "
               "machine takes; the CPU time is the better guide." if busy else
               " The machine ran nothing else meanwhile (the load average is this build's own), so the wall "
               "times are what an idle machine of this kind takes.")
    return "\n".join([
        f"Measured by the build `{durations['build_id']}` at `SCALE = \"{durations['scale']}\"` on "
        f"{durations['machine']}, {durations['date']}: the wall time of each chapter's papermill run, "
        "kernel start included, its CPU time, and the machine's 1-minute load average while it ran (in "
        "brackets, the part that was not this build's)." + verdict
        + (" This build reused measurements cached by an earlier one (`--keep-cache`), so chapters that "
           "measure WERs ran faster than a fresh run." if durations.get("reused_cache") else ""),
        "",
        *rows,
        "",
        *([benchmark, ""] if benchmark else []),
    ])


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
    if f"environment {environment_fingerprint()}" not in text and f"environment {sys.prefix}" not in text:
        problems.append(f"{notebook}: the kernel did not report this environment (fingerprint "
                        f"{environment_fingerprint()} of {sys.prefix})")
    return problems


def check_html(notebook: Path, build_id: str) -> list[str]:
    page = HTML / notebook.with_suffix(".html")
    if not page.is_file():
        return [f"{page.relative_to(ROOT)} was not built"]
    if build_id not in page.read_text(encoding="utf-8"):
        return [f"{page.relative_to(ROOT)} does not show this build's BUILD_ID {build_id}"]
    return []


PUBLISHED = (".html", ".ipynb", ".md", ".txt", ".json", ".js")


def check_paths(html: Path, paths: list[str] | None = None) -> list[str]:
    """Published files (pages, their sources, search index) that show an absolute path of this machine."""
    paths = machine_paths() if paths is None else paths
    problems = []
    for f in sorted(html.rglob("*")):
        if not f.is_file() or f.suffix not in PUBLISHED or "_static" in f.parts:
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        for path in paths:
            if path in text:
                at = text.index(path)
                problems.append(f"{f.relative_to(html)} shows the machine path {path!r}: "
                                f"...{text[max(0, at - 60):at + len(path) + 20]!r}...")
                break
    return problems


class _Images(HTMLParser):
    """Collects the content images of a page and whether each has alt text or sits in a captioned figure."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.figures: list[dict] = []  # open <figure> elements: has a caption?
        self.images: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.figures.append(dict(caption=False, images=[]))
        elif tag == "figcaption" and self.figures:
            self.figures[-1]["caption"] = True
        elif tag == "img":
            classes = attrs.get("class") or ""
            if "logo" in classes or "navbar" in classes:
                return
            image = dict(src=attrs.get("src", ""), alt=(attrs.get("alt") or "").strip(), caption=False)
            self.images.append(image)
            if self.figures:
                self.figures[-1]["images"].append(image)

    def handle_endtag(self, tag):
        if tag == "figure" and self.figures:
            figure = self.figures.pop()
            for image in figure["images"]:
                image["caption"] = image["caption"] or figure["caption"]


def check_figures(html: Path) -> list[str]:
    """Images without alt text (or with a file name for alt text) that no figure caption describes."""
    problems = []
    for page in sorted(html.rglob("*.html")):
        if "_static" in page.parts or "_sources" in page.parts:
            continue
        parser = _Images()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        for image in parser.images:
            alt = image["alt"]
            described = alt and not alt.lower().endswith((".png", ".svg", ".jpg", ".jpeg")) and "/" not in alt
            if not (described or image["caption"]):
                problems.append(f"{page.relative_to(html)}: image {image['src']} has no alt text or caption")
    return problems


# MyST roles that reach a rendered page as text: the role was not parsed (nested backticks in a markdown
# cell, a role inside inline code) and the reader sees its markup instead of its value.
UNRENDERED_ROLE = re.compile(r"\{(glue(:\w+)?|term|cite(:\w+)?|ref|numref|doc|eq|download|abbr|sub-ref)\}")
# Words about how the project was organised (who asked for what, in which work session), which mean
# nothing to a reader of the book. Matched case-insensitively on word boundaries.
INSIDER_WORDS = (
    r"the brief", r"brief's", r"previous session", r"this session", r"earlier session", r"next session",
    r"last session", r"the CEO", r"issue #\d*", r"lead engineer",
    r"ticket #\d*", r"the task (?:says|asks)", r"as (?:requested|asked) by",
)
_INSIDER = re.compile(r"(?<![\w-])(" + "|".join(INSIDER_WORDS) + r")(?![\w-])", re.IGNORECASE)


class _Text(HTMLParser):
    """The text a reader sees on a page (and image alt text), without scripts, styles or the page head."""

    SKIP = {"script", "style", "head", "template", "noscript"}

    def __init__(self):
        super().__init__()
        self.skipping = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag == "img" and not self.skipping:
            self.parts.append(dict(attrs).get("alt") or "")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def visible_text(html: str) -> str:
    """The reader-visible text of an HTML page, whitespace collapsed."""
    parser = _Text()
    parser.feed(html)
    return re.sub(r"\s+", " ", " ".join(parser.parts))


def text_problems(name: str, html: str) -> list[str]:
    """Unrendered MyST roles and insider words in the visible text of one page (``name`` labels it)."""
    text = visible_text(html)
    problems = []
    for pattern, what in ((UNRENDERED_ROLE, "an unrendered role"), (_INSIDER, "an insider word")):
        for found in pattern.finditer(text):
            problems.append(f"{name} shows {what} {found.group(0)!r}: "
                            f"...{text[max(0, found.start() - 60):found.end() + 40]}...")
    return problems


def check_text(html: Path) -> list[str]:
    """Pages whose rendered text shows MyST markup instead of its value, or words of the project's insiders."""
    problems = []
    for page in content_pages(html):
        problems += text_problems(str(page.relative_to(html)), page.read_text(encoding="utf-8", errors="replace"))
    return problems


MATHJAX = "_static/mathjax/tex-chtml.js"  # served with the book (_config.yml's mathjax_path)


def check_mathjax(html: Path) -> list[str]:
    """Pages with equations that would not render offline: MathJax loaded from elsewhere than the
    book's own copy, or that copy missing from the build."""
    problems = []
    for page in content_pages(html):
        text = page.read_text(encoding="utf-8", errors="replace")
        sources = re.findall(r"<script[^>]*\bsrc=\"([^\"]*mathjax[^\"]*)\"", text, re.IGNORECASE)
        has_math = 'class="math' in text or "\\(" in text or "\\[" in text
        if not sources:
            if has_math:
                problems.append(f"{page.relative_to(html)} has equations but loads no MathJax")
            continue
        for src in sources:
            local = (page.parent / src.split("?")[0]).resolve()
            if re.match(r"^(https?:)?//", src) or not local.is_file():
                problems.append(f"{page.relative_to(html)} loads MathJax from {src!r}, not the copy served with "
                                f"the book ({MATHJAX}): equations would not render without a network")
    return problems


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _chromium(args: list[str], timeout: int = 60) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--disable-component-update", "--no-first-run", "--hide-scrollbars",
                   "--allow-file-access-from-files",
                   f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


# Run at the end of a copy of each page, shown in a phone-wide frame: the page's width and its widest
# elements, written onto the frame's parent. Headless Chromium's window is at least 500 px wide, so
# the phone width comes from the frame. (Synchronous on purpose: --dump-dom may come before the load
# event of a page whose online resources never load.)
_OVERFLOW_PROBE = """<script>
(() => {
  const root = document.documentElement, width = root.clientWidth, wide = [];
  const contained = el => {  // fixed, or inside a box that scrolls or clips: not the page's overflow
    if (getComputedStyle(el).position === "fixed") return true;
    for (el = el.parentElement; el && el !== document.body; el = el.parentElement) {
      const style = getComputedStyle(el);
      if (style.position === "fixed" || !["visible", ""].includes(style.overflowX)) return true;
    }
  };
  for (const el of document.body.querySelectorAll("*")) {
    const box = el.getBoundingClientRect();
    if (box.width > 0 && box.right > width + 1 && !contained(el))
      wide.push([box.right, el.tagName.toLowerCase() + (typeof el.className === "string" && el.className.trim()
                ? "." + el.className.trim().split(/\\s+/).join(".") : "") + " (" + Math.round(box.right) + " px)"]);
  }
  wide.sort((a, b) => b[0] - a[0]);
  parent.document.body.setAttribute("data-overflow-probe",
    JSON.stringify({viewport: width, scroll: root.scrollWidth, wide: wide.slice(0, 5).map(w => w[1])}));
})();
</script>"""


def _framed(page: Path, width: int, height: int, probe: bool) -> tuple[Path, list[Path]]:
    """A page that shows ``page`` in a frame ``width`` CSS pixels wide; returns it and the files to remove."""
    shown = page
    made = []
    if probe:
        shown = page.with_name(f".probe-{page.name}")
        shown.write_text(page.read_text(encoding="utf-8").replace("</body>", _OVERFLOW_PROBE + "</body>", 1),
                         encoding="utf-8")
        made.append(shown)
    frame = page.with_name(f".frame-{page.name}")
    frame.write_text(f'<html><body style="margin:0"><iframe src="{shown.name}" width="{width}" height="{height}" '
                     f'style="border:0;display:block"></iframe></body></html>', encoding="utf-8")
    return frame, made + [frame]


def content_pages(html: Path) -> list[Path]:
    """The book's pages (not the search page, the index redirect or the genindex)."""
    skip = {"search.html", "genindex.html", "index.html"}
    pages = [p for p in sorted(html.rglob("*.html"))
             if "_static" not in p.parts and "_sources" not in p.parts and not (p.parent == html and p.name in skip)]
    return pages


def check_phone_overflow(html: Path, width: int = PHONE) -> list[str]:
    """Pages that scroll sideways at ``width`` CSS pixels in headless Chromium (horizontal overflow).

    Tables and code blocks that scroll inside their own box are fine; the page itself must not.
    """
    problems = []
    for page in content_pages(html):
        frame, made = _framed(page, width, 900, probe=True)
        try:
            done = _chromium(["--window-size=800,900", "--dump-dom", frame.as_uri()])
        finally:
            for f in made:
                f.unlink()
        found = re.search(r'data-overflow-probe="([^"]*)"', done.stdout)
        if not found:
            problems.append(f"{page.relative_to(html)}: the overflow probe did not report (chromium exit "
                            f"{done.returncode})")
            continue
        report = json.loads(unescape(found.group(1)))
        if report["scroll"] > report["viewport"] + 1:
            problems.append(f"{page.relative_to(html)} is {report['scroll']} px wide at a {report['viewport']} px "
                            f"phone viewport; widest elements: {', '.join(report['wide']) or '?'}")
    return problems


# Run at the end of a copy of a page: the width, in CSS pixels, that an image of a code cell's output may
# take (images are shown at their own size up to the width of their output box, then scaled down to it).
_COLUMN_PROBE = """<script>
(() => {
  const box = document.querySelector("div.cell_output") || document.querySelector("article.bd-article")
              || document.querySelector("main") || document.body;
  const probe = document.createElement("div");
  probe.style.cssText = "width:100%;height:1px;padding:0;margin:0;border:0";
  box.appendChild(probe);
  parent.document.body.setAttribute("data-column-probe",
    JSON.stringify({viewport: document.documentElement.clientWidth, column: probe.getBoundingClientRect().width,
                    box: box.tagName.toLowerCase() + "." + String(box.className).trim().split(/\\s+/).join(".")}));
})();
</script>"""

# The width of the book's output column when no Chromium measures it, CSS pixels (sphinx-book-theme 1.3,
# measured with column_width on a chapter: a 390 px viewport gives 358 px, 1280 px gives 688 px, the width of
# div.cell_output; images wider than it are scaled down to it exactly).
COLUMN = {PHONE: 358.0, DESKTOP: 688.0}
# The smallest text a figure may show, CSS pixels, at each viewport.
MIN_TEXT_PX = {PHONE: 9.0, DESKTOP: 8.0}
# Whether a figure that breaks them fails the build (else the build prints it as a warning).
FIGURE_CHECK_FAILS = True


def column_width(page: Path, width: int) -> float | None:
    """The width an output image may take on ``page`` at a ``width`` CSS-pixel viewport, measured in
    headless Chromium (None when it does not report)."""
    probe = page.with_name(f".column-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _COLUMN_PROBE + "</body>", 1),
                     encoding="utf-8")
    frame = page.with_name(f".frame-{page.name}")
    frame.write_text(f'<html><body style="margin:0"><iframe src="{probe.name}" width="{width}" height="900" '
                     f'style="border:0;display:block"></iframe></body></html>', encoding="utf-8")
    try:
        done = _chromium([f"--window-size={max(width, 800)},900", "--dump-dom", frame.as_uri()])
    finally:
        probe.unlink()
        frame.unlink()
    found = re.search(r'data-column-probe="([^"]*)"', done.stdout)
    return float(json.loads(unescape(found.group(1)))["column"]) if found else None


def figure_log(notebook: Path) -> Path:
    """The JSON-lines file where a notebook's figures are logged (speechprune.book.figure_log)."""
    return BUILD / "figures" / (str(notebook.with_suffix("")).replace("/", "__") + ".jsonl")


def read_figure_log(notebook: Path) -> list[dict]:
    path = figure_log(notebook)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def figure_problems(page: str, records: list[dict], columns: dict[int, float] = COLUMN,
                    minimum: dict[int, float] = MIN_TEXT_PX) -> list[str]:
    """One line per figure of ``page`` whose smallest text the page shows below ``minimum`` CSS pixels at a
    viewport (its image scaled down to the output column ``columns[viewport]`` when wider), or whose panels
    stand side by side (a phone cannot show two panels in one row legibly: they go one per row)."""
    from speechprune.book.figure_log import shown_text_px

    problems = []
    for i, record in enumerate(records, 1):
        name = f"{page}, figure {i} {record.get('title', '')!r}"
        if "error" in record:
            problems.append(f"{name}: could not be measured ({record['error']})")
            continue
        if record.get("columns", 1) > 1:
            problems.append(f"{name}: {record['columns']} panels side by side; draw them one per row "
                            "(or as separate figures)")
        for viewport, column in columns.items():
            shown = shown_text_px(record, column)
            if shown is not None and shown < minimum[viewport] - 1e-6:
                where = "a phone" if viewport == PHONE else "a desktop page"
                problems.append(
                    f"{name}: its smallest text ({record.get('min_text')!r}, {record['min_text_px']:.1f} px in a "
                    f"{record['width_px']:.0f} px wide image) shows at {shown:.1f} px on {where} ({viewport} px "
                    f"viewport, {column:.0f} px column); at least {minimum[viewport]:g} px is needed")
    return problems


def check_figure_text(notebooks: list[Path], html: Path) -> list[str]:
    """Every logged figure of the build against :data:`MIN_TEXT_PX` at phone and desktop width, with the
    output column measured in Chromium where it is installed (else :data:`COLUMN`)."""
    columns = dict(COLUMN)
    if chromium():
        page = next((html / nb.with_suffix(".html") for nb in notebooks if (html / nb.with_suffix(".html")).is_file()
                     and read_figure_log(nb)), None)
        for viewport in columns if page else ():
            measured = column_width(page, viewport)
            if measured:
                columns[viewport] = measured
    print("figure text check: output column " + ", ".join(f"{w:.0f} px at a {v} px viewport" for v, w in columns.items()),
          flush=True)
    problems = []
    for nb in notebooks:
        problems += figure_problems(str(nb.with_suffix(".html")), read_figure_log(nb), columns)
    return problems


def screenshot(page: Path, out: Path, width: int, height: int = 2400) -> Path:
    """A PNG of the top ``height`` CSS pixels of ``page`` at ``width`` CSS pixels."""
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    frame, made = _framed(page, width, height, probe=False)
    try:
        _chromium([f"--window-size={max(width, 800)},{height}", f"--screenshot={out}", frame.as_uri()], timeout=120)
    finally:
        for f in made:
            f.unlink()
    with Image.open(out) as image:
        image.crop((0, 0, width, height)).save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    global HTML
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small parameters for CI (SCALE='smoke', 16 utterances)")
    parser.add_argument("--student", action="store_true",
                        help="hide the exercises' solutions (sphinx-exercise hide_solutions), into _build/student/")
    parser.add_argument("--keep-cache", action="store_true",
                        help="reuse measurements cached by an earlier build instead of measuring afresh")
    args = parser.parse_args(argv)

    scale = "smoke" if args.smoke else "embedded"
    build_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    if not args.keep_cache:
        shutil.rmtree(CACHE, ignore_errors=True)
    out = BUILD / "student" if args.student else ROOT
    HTML = out / "_build" / "html"
    # The kernel imports this working tree's package, and `python` on its PATH is this interpreter.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    print(f"build {build_id}, SCALE {scale!r}: {', '.join(f'{k}={v}' for k, v in SCALES[scale].items())}", flush=True)
    stage_sources(student=args.student)
    timings: list[tuple[str, float]] = []
    durations = dict(build_id=build_id, scale=scale, date=f"{datetime.now(timezone.utc):%Y-%m-%d}",
                     reused_cache=args.keep_cache,
                     machine=f"{os.cpu_count()} CPU cores, no GPU" if not _has_cuda() else "a CUDA GPU",
                     notebooks=[])
    for notebook in notebooks_in_toc():
        print(f"executing {notebook} ...", flush=True)
        log = figure_log(notebook)  # speechprune.book logs the notebook's figures there (figure_log.py)
        log.unlink(missing_ok=True)
        os.environ[FIGURE_LOG] = str(log)
        try:
            measured = execute(notebook, parameters_for(notebook, scale, build_id))
        except papermill.PapermillExecutionError as err:
            print(f"\nFAILED: {notebook}: {err.ename}: {err.evalue}\n"
                  f"the executed notebook is kept for inspection: {(STAGE / notebook).relative_to(ROOT)}",
                  file=sys.stderr)
            return 1
        seconds = measured["seconds"]
        timings.append((str(notebook), seconds))
        problems = check_executed(notebook, build_id)
        if problems:
            print("\n".join(["FAILED: the executed notebook is incomplete:", *problems]), file=sys.stderr)
            return 1
        durations["notebooks"].append(dict(publish_ready(notebook, student=args.student), **measured))
        print(f"  done in {seconds:.0f} s (CPU {measured['cpu_seconds']:.0f} s, load average "
              f"{measured['load_average']:.1f}, of which not this build's {measured['other_load']:.1f})", flush=True)

    (BUILD / "durations.json").write_text(json.dumps(durations, indent=1))
    (STAGE / "book" / "chapter_times.md").write_text(chapter_times_table(durations))

    started = time.perf_counter()
    for old in (HTML, out / "_build" / ".doctrees", out / "_build" / "jupyter_execute"):  # a clean build
        shutil.rmtree(old, ignore_errors=True)
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    book = subprocess.run([str(jupyter_book), "build", "-W", "-n", "--keep-going",
                           "--path-output", str(out), str(STAGE)], cwd=ROOT)
    timings.append(("jupyter-book build", time.perf_counter() - started))
    if book.returncode != 0:
        print(f"FAILED: jupyter-book build exited with {book.returncode}", file=sys.stderr)
        return book.returncode
    shutil.copy2(BUILD / "durations.json", HTML / "durations.json")

    problems = [p for nb, _ in timings[:-1] for p in check_html(Path(nb), build_id)]
    problems += check_paths(HTML) + check_figures(HTML) + check_text(HTML) + check_mathjax(HTML)
    figures = check_figure_text([Path(nb) for nb, _ in timings[:-1]], HTML)
    if FIGURE_CHECK_FAILS:
        problems += figures
    elif figures:
        print("\n".join(["warning: figures too small to read (not failing the build):", *figures]), file=sys.stderr)
    if chromium():
        started = time.perf_counter()
        problems += check_phone_overflow(HTML)
        timings.append((f"phone-width check ({PHONE} px)", time.perf_counter() - started))
    else:
        print("note: no chromium on PATH, so the phone-width overflow check was skipped "
              "(apt-get install chromium)", file=sys.stderr)
    if problems:
        print("\n".join(["FAILED: the built book has problems:", *problems]), file=sys.stderr)
        return 1

    print(f"\n{'step':45s} {'seconds':>8s}")
    for name, seconds in timings:
        print(f"{name:45s} {seconds:8.0f}")
    print(f"{'total':45s} {sum(s for _, s in timings):8.0f}")
    print(f"\nbuild {build_id}: every notebook ran in this build; open {(HTML / 'index.html').relative_to(ROOT)}")
    return 0


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
