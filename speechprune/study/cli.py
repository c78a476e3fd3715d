"""``speechprune study``: its options, and the code that runs, lists or summarises a study.

:func:`register_cli` adds the sub-command to the ``speechprune`` command line
(:mod:`speechprune.commands` calls it with the cluster executors' options and runner).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path

from speechprune.errors import SpeechPruneError, cli_int
from speechprune.outputs import check_output_file
from speechprune.options import CompressionOptions
from speechprune.recipes import BASELINE
from speechprune.stats import study_summary
from speechprune.study.runner import run_study
from speechprune.study.selection import SCREENING_EXCLUDES, grid_cells, markdown_scores
from speechprune.study.spec import Study, check_sources, load_study, parse_study
from speechprune.study.store import _read_claims, load_records, read_results, records_of
from speechprune.study.tables import markdown_summary, markdown_target, study_status


def register_cli(sub: argparse._SubParsersAction, *,
                 add_options: Callable[[argparse.ArgumentParser], None] | None = None,
                 runner: Callable[[argparse.Namespace], Callable[..., list[dict]]] | None = None) -> None:
    """Add ``speechprune study``. ``add_options`` adds more options (the executors' cluster options) and
    ``runner(args)`` picks the function that runs the study (default :func:`run_study`); the command
    line passes :mod:`speechprune.executors`' own, so that this module needs no import of it."""
    p = sub.add_parser("study", help="run a saved grid of compressions over seeds; resumes where it stopped",
                       description="Run the study described by a TOML file (see studies/README.md). Each run's "
                                   "record is saved as soon as it finishes; running again resumes.")
    p.add_argument("study", help="a study file, e.g. studies/whisper-base-full.toml")
    p.add_argument("--out", default=None, help="results file (default: results/studies/<name>.json)")
    p.add_argument("--rerun", action="store_true", help="measure every run again, even those already saved")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out replace a file that is not a study's results (never the study file or an input)")
    p.add_argument("--no-reuse", action="store_true",
                   help="do not copy runs with the same settings from the other study files beside --out")
    p.add_argument("--limit", type=cli_int(1), default=None, help="stop after this many new runs")
    p.add_argument("--recipe", default=None, help="replace every cluster option by this recipe (paper, recommended)")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--dry-run", action="store_true", help="check the file and list the runs; measure nothing")
    p.add_argument("--summary", action="store_true",
                   help="print the saved runs' statistics as Markdown tables (what the README quotes); measure nothing")
    p.add_argument("--target", action="store_true",
                   help="print the compact table of the uncompressed model, magnitude pruning, the paper's and the "
                        "recommended recipe (what the README shows); measure nothing")
    p.add_argument("--scores", action="store_true",
                   help="print a screening's scores (the selection rule in studies/README.md) as a Markdown table; "
                        "measure nothing")
    if add_options is not None:
        add_options(p)  # --executor submitit and its cluster options
    p.set_defaults(func=_run_cli, runner=runner or (lambda args: run_study))


def _run_cli(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    if args.recipe is not None:
        study = _with_recipe(study, args.recipe)
    out = Path(args.out) if args.out else Path("results") / "studies" / f"{study.name}.json"
    if args.summary or args.scores or args.target:
        if not out.is_file():
            raise SpeechPruneError(f"no saved runs: {out} does not exist (run `speechprune study {args.study}` first)")
        saved = load_records(out)
        for line in saved["problems"]:
            print(f"warning: unusable record left out: {line}")
        print(study_status(saved) + "\n")
        records = records_of(study, saved["records"])
        if args.scores:
            print(markdown_scores(records, complete=len(records) >= len(study.runs), n_cells=grid_cells(study),
                                  exclude=SCREENING_EXCLUDES.get(study.name, ("magnitude",))))
        elif args.target:
            print(markdown_target(records))
        else:
            print(markdown_summary(records))
        return 0
    if args.dry_run:
        check_sources(study)
        saved, problems = read_results(out, repair=False) if out.is_file() else ({}, [])
        for line in problems:
            print(f"warning: {line}")
        claims = _read_claims(out)
        for run in study.runs:
            state = "saved  " if run.key in saved else "running" if run.key in claims else "to run "
            print(f"{state} {run.key} {run.describe()}")
        busy = sum(r.key in claims and r.key not in saved for r in study.runs)
        print(f"{len(study.runs)} runs, {sum(r.key in saved for r in study.runs)} saved in {out}"
              + (f", {busy} being measured" if busy else ""))
        return 0
    _check_results_out(out, study, args)
    try:
        records = args.runner(args)(study, out, rerun=args.rerun, reuse=not args.no_reuse, device=args.device,
                                     limit=args.limit)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the finished runs are saved in {out}; run the same command to resume",
              file=sys.stderr)
        return 130
    print(study_summary(records))
    print(f"results: {out}")
    return 0


def _check_results_out(out: Path, study: Study, args: argparse.Namespace) -> None:
    """Refuse a results file that would replace an input, or a file that is not a study's results
    (unless ``--overwrite``), before any run."""
    inputs = [args.study] + sorted({r.model for r in study.runs} | {r.data for r in study.runs})
    check_output_file(out, overwrite=True, inputs=inputs, flag="--out", example=f"{study.name}.json")
    if not out.is_file() or args.overwrite:
        return
    try:
        saved = json.loads(out.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SpeechPruneError(f"--out {out} is not valid JSON ({err}); it was left as it is: move it away, or pass "
                               "--overwrite (it is then kept beside as .corrupt-TIME and every run is measured)"
                               ) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("records"), list):
        raise SpeechPruneError(f"--out {out} is not a study's results file (no 'records' list); it was left as it "
                               "is: name another file, or pass --overwrite to replace it")


def _with_recipe(study: Study, recipe: str) -> Study:
    spec = copy.deepcopy(study.spec)
    label = f"{CompressionOptions(recipe=recipe).method_name} ({recipe})"  # cluster (paper), pairs (recommended)
    spec["options"] = [o if o.get("method") == BASELINE else {"recipe": recipe, "label": label}
                       for o in spec["options"]]
    dedup = []
    for o in spec["options"]:
        if o not in dedup:
            dedup.append(o)
    spec["options"] = dedup
    spec["name"] = f"{study.name}-{recipe}"
    new = parse_study(spec, where=study.source or study.name)
    new.source = study.source
    return new
