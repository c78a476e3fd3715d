"""Rehearse CI's version jobs on this machine, as far as it can: the ``versions`` matrix of
``.github/workflows/test.yml`` (the oldest versions ``pyproject.toml`` allows, and Google Colab's).

    python scripts/rehearse_versions.py              # every job of the matrix
    python scripts/rehearse_versions.py --plan       # what it would install and run; nothing else
    python scripts/rehearse_versions.py --job colab  # the jobs whose name contains this

Each job gets its own venv (under ``--dir``, kept between calls: a second call reuses it) with the
job's pins, the package with the extras the job installs, and runs the job's test steps as written
in the workflow. What this machine cannot give is replaced and said so on every line it affects:

- torch: the job's pin becomes this interpreter's torch (``torch==2.13.0``, the CPU wheel on disk),
  because PyPI's torch 2.4 and 2.11 are CUDA builds and the CPU index is out of reach here;
- Python: this interpreter's, not the job's (3.13 for Colab's).

It prints one row per job and step, and exits 1 when a step failed. The jobs on GitHub remain the
authority; this finds what the other pins (transformers, numpy) and a venv without the ``deploy`` and
``hub`` extras break, before a push does.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "test.yml"
INSTALL_STEP = "Install these versions and the package"


@dataclass
class Job:
    name: str
    python: str
    pins: list[str]
    extras: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # (step name, command with .venv/bin/python)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower().split("(")[0]).strip("-")


def local_torch() -> str:
    import torch

    return torch.__version__.split("+")[0]


def read_jobs(workflow: Path = WORKFLOW) -> list[Job]:
    """The matrix jobs of the workflow's ``versions`` job, with the extras and test steps it runs."""
    spec = yaml.safe_load(workflow.read_text(encoding="utf-8"))
    versions = spec["jobs"]["versions"]
    steps = versions["steps"]
    names = [s.get("name") for s in steps]
    if INSTALL_STEP not in names:
        raise SystemExit(f"{workflow.name}: no step named {INSTALL_STEP!r} in the versions job")
    install = steps[names.index(INSTALL_STEP)]["run"]
    extras = re.search(r"-e '\.\[([a-z,]+)\]'", install)
    if extras is None:
        raise SystemExit(f"{workflow.name}: the install step installs no '.[extras]'")
    tests = [(s["name"], s["run"].strip()) for s in steps[names.index(INSTALL_STEP) + 1:] if "run" in s]
    return [Job(name=entry["name"], python=str(entry["python"]), pins=entry["pins"].split(),
                extras=extras.group(1), steps=tests)
            for entry in versions["strategy"]["matrix"]["include"]]


def here(job: Job, torch_version: str) -> list[str]:
    """The job's pins as installed here: its torch pin replaced by this machine's torch."""
    return [f"torch=={torch_version}" if re.match(r"torch\b(?![-_])", pin) else pin for pin in job.pins]


def run(command: list[str] | str, log, **kwargs) -> int:
    log.write(f"$ {command if isinstance(command, str) else shlex.join(command)}\n")
    log.flush()
    return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, **kwargs).returncode


def rehearse(job: Job, folder: Path, torch_version: str) -> Iterator[tuple[str, str, float]]:
    """Install the job's venv (once) and run its steps; yields ``(step, outcome, seconds)`` as each ends."""
    folder.mkdir(parents=True, exist_ok=True)
    venv, stamp = folder / "venv", folder / "installed"
    python = venv / "bin" / "python"
    pins = here(job, torch_version)
    with open(folder / "log.txt", "a", encoding="utf-8") as log:
        started = time.perf_counter()
        if not stamp.is_file() or stamp.read_text() != " ".join(pins):
            (folder / "pins.txt").write_text("\n".join(pins) + "\n")
            ok = (run([sys.executable, "-m", "venv", "--clear", str(venv)], log) == 0
                  and run([str(python), "-m", "pip", "install", "--quiet", f"torch=={torch_version}"], log) == 0
                  and run([str(python), "-m", "pip", "install", "--quiet", "-c", str(folder / "pins.txt"), *pins],
                          log) == 0
                  and run([str(python), "-m", "pip", "install", "--quiet", "-c", str(folder / "pins.txt"), "-e",
                           f".[{job.extras}]"], log) == 0)
            yield "install", "ok" if ok else "FAILED", time.perf_counter() - started
            if not ok:
                return
            stamp.write_text(" ".join(pins))
        for name, command in job.steps:
            started = time.perf_counter()
            code = run(command.replace(".venv/bin/python", shlex.quote(str(python))), log, shell=True)
            yield name, "passed" if code == 0 else f"FAILED (exit {code})", time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/speechprune-versions"),
                        help="where the venvs and logs go (reused between calls)")
    parser.add_argument("--job", default=None, help="only the jobs whose name contains this (case-insensitive)")
    parser.add_argument("--plan", action="store_true", help="print what would be installed and run; do nothing")
    args = parser.parse_args(argv)
    torch_version = local_torch()
    jobs = [j for j in read_jobs() if args.job is None or args.job.lower() in j.name.lower()]
    if not jobs:
        parser.error(f"no job of {WORKFLOW.name} matches --job {args.job!r}")
    if args.dir.resolve().is_relative_to(ROOT):
        parser.error(f"--dir {args.dir} is inside the checkout: the venvs would travel with it; choose another")
    python = ".".join(map(str, sys.version_info[:2]))
    failed = False
    print("| job | step | outcome | seconds |\n|---|---|---|---|")
    for job in jobs:
        pins = here(job, torch_version)
        swaps = [f"torch {torch_version} for the job's {p}" for p in job.pins if p not in pins]
        if python != job.python:
            swaps.append(f"Python {python} for {job.python}")
        title = f"{job.name}; here: {', '.join(pins)}" + (f" ({'; '.join(swaps)})" if swaps else "")
        if args.plan:
            print(f"| {title} | install | `-e .[{job.extras}]` | |")
            for name, command in job.steps:
                print(f"| {title} | {name} | `{command}` | |")
            continue
        for step, outcome, seconds in rehearse(job, args.dir / job.slug, torch_version):
            failed |= outcome not in ("passed", "ok")
            print(f"| {title} | {step} | {outcome} | {seconds:.0f} |", flush=True)
    if failed:
        print(f"logs: {args.dir}/*/log.txt", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
