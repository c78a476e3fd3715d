"""Running a study: compress and evaluate each run, save its record, resume where it stopped.

Running the same study again resumes it: finished runs are kept, a corrupt record is reported
and run again, and ``rerun=True`` measures everything afresh. Several workers may run the same
study at once, each claiming its next run (:mod:`speechprune.study.store`). ``speechprune
compare`` and :func:`speechprune.paper.measure` are presets of :func:`execute`, the function that
compresses and evaluates one run.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from speechprune.compress import compress
from speechprune.data import load_speech
from speechprune.errors import check_device
from speechprune.evaluate import evaluate
from speechprune.models import load_model
from speechprune.study.spec import Run, Study, check_scopes, check_sources
from speechprune.study.store import (_claim_next, _locked, _read_claims, _release, _save_record, read_results,
                                     reusable_records, study_record, write_results)


def execute(run: Run, dense, processor, speech, *, device: str | None = None, progress: bool = False) -> dict:
    """Compress a copy of ``dense`` as ``run`` says and evaluate it: evaluate's full record.

    The record gets ``compression`` (the report as a dict, or None for the dense model) and
    ``label``. ``dense`` itself is never changed.
    """
    report = None
    target = dense
    if run.method != "dense":
        target = copy.deepcopy(dense)
        report = compress(target, run.options(), progress=progress)
    record = evaluate(target, processor, speech, batch_size=run.batch_size, device=device, progress=progress,
                      label=run.label or run.method, decoding=run.decoding)
    record.update(label=run.label or run.method, compression=report.to_dict() if report else None)
    return record


def prepare_results(study: Study, out: Path, *, rerun: bool = False, reuse: bool = True,
                    log=print) -> tuple[dict[str, dict], dict[str, dict]]:
    """As a study starts: under the lock, clear ``out``'s records of the study (``rerun``) or copy
    runs from other studies (``reuse``), relabel, and return the saved records and live claims.

    :func:`run_study` calls it, and so does a cluster executor before it submits the workers.
    """
    keys = {r.key for r in study.runs}
    relabel = {r.key: (r.label, r.recipe) for r in study.runs}
    with _locked(out):
        saved, problems = read_results(out)
        for line in problems:
            log(f"warning: {line}")
        changed = bool(problems) and out.is_file()
        if rerun:
            changed = changed or bool(keys & set(saved))
            saved = {k: v for k, v in saved.items() if k not in keys}
        elif reuse:
            found = reusable_records(out, keys - set(saved))
            if found:
                log(f"{len(found)} runs reused from other studies in {out.parent}")
                saved.update(found)
                changed = True
        for k, r in list(saved.items()):  # a run copied from another study, or saved under an older label,
            if k in relabel and (r.get("label"), r.get("recipe")) != relabel[k]:  # shows this study's name
                saved[k] = dict(r, label=relabel[k][0], recipe=relabel[k][1])
                changed = True
        if changed:
            write_results(out, study, list(saved.values()))
        others = _read_claims(out)
    return saved, others


def run_study(study: Study, out: str | Path, *, rerun: bool = False, reuse: bool = True, device: str | None = None,
              progress: bool = True, limit: int | None = None, log=print) -> list[dict]:
    """Run every run of ``study`` that ``out`` does not hold yet; returns the study's records.

    Records of other runs already in ``out`` are kept. With ``reuse``, a run already measured by
    another study in the same folder (same settings, so the same key) is copied, not measured
    again. ``limit`` stops after that many new runs. Other workers may run the same study into
    the same ``out`` at the same time: each run is claimed before it starts, so none is measured
    twice, and each record is merged into the file as it is on disk (give ``rerun`` to one
    worker only: it clears the study's saved records when it starts).
    """
    out = Path(out)
    device = check_device(device)
    loaded: dict[str, Any] = {}

    def model(name: str):
        if ("model", name) not in loaded:
            for k in [k for k in loaded if k[0] == "model"]:
                del loaded[k]  # one model in memory at a time
            loaded[("model", name)] = load_model(name, device=device)
        return loaded[("model", name)]

    def speech(name: str, max_samples: int | None):
        if ("speech", name, max_samples) not in loaded:
            loaded[("speech", name, max_samples)] = load_speech(name, max_samples=max_samples)
        return loaded[("speech", name, max_samples)]

    check_sources(study)  # names that do not resolve, before a model is loaded
    check_scopes(study, lambda name: model(name)[0])
    for d, m in sorted({(r.data, r.max_samples) for r in study.runs}, key=str):
        speech(d, m)  # a bad data spec fails here, before any run

    keys = {r.key for r in study.runs}
    saved, others = prepare_results(study, out, rerun=rerun, reuse=reuse, log=log)
    records = list(saved.values())
    todo = [r for r in study.runs if r.key not in saved]
    busy = sum(r.key in others for r in todo)
    log(f"{study.name}: {len(study.runs)} runs, {len(study.runs) - len(todo)} saved in {out}, {len(todo)} to measure"
        + (f" ({busy} of them being measured by another worker)" if busy else ""))
    total = len(todo) if limit is None else min(limit, len(todo))
    bar = tqdm(total=total, desc=study.name, unit="run", disable=not progress, file=sys.stderr, smoothing=0.1)
    claimed: list[str] = []
    measured = 0  # by this worker (a disabled tqdm does not count)
    try:
        while limit is None or measured < limit:
            run, left = _claim_next(out, todo)
            if run is None:
                break
            claimed.append(run.key)
            bar.total = measured + (left if limit is None else min(left, limit - measured))
            bar.set_postfix_str(run.describe()[-60:])
            started = time.perf_counter()
            dense, processor = model(run.model)
            full = execute(run, dense, processor, speech(run.data, run.max_samples), device=device)
            record = study_record(run, full, time.perf_counter() - started)
            records = _save_record(out, study, record)
            _release(out, [run.key])
            claimed.remove(run.key)
            measured += 1
            bar.update(1)
            log(f"{run.describe()}: WER {record['wer']:.2f}% (S {record['substitutions']} D {record['deletions']} "
                f"I {record['insertions']}) in {record['seconds']:.0f} s")
    finally:
        bar.close()
        _release(out, claimed)
    with _locked(out):
        records = list(read_results(out)[0].values()) or records
    waiting = [r for r in todo if r.key not in {x["key"] for x in records}]
    if waiting and limit is None:
        log(f"{len(waiting)} runs are still being measured by other workers; their records will join {out}")
    return [r for r in records if r["key"] in keys]
