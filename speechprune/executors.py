"""Where a study's runs are measured: here (the lock-file workers of :mod:`speechprune.study`), or on
a cluster through `submitit <https://github.com/facebookincubator/submitit>`_ (a SLURM job array).

``speechprune study FILE --executor submitit`` submits ``--jobs`` array tasks. Each task is one
study worker, exactly as a second terminal would be: it runs :func:`speechprune.study.run_study`,
which claims the next run that nobody has saved or claimed, measures it, merges its record into
the results file and claims the next, until none is left. So the rules of resume, claims and
records are those of the local workers, and the results file must lie on a file system that the
login node and the compute nodes share. Before submitting, this process applies ``--rerun`` and
reuse once (:func:`speechprune.study.prepare_results`); then it waits for the jobs, showing how
many runs are saved. A job that times out or is preempted requeues itself (its run in progress
is measured again); one stopped otherwise leaves the saved runs, and the same command resumes.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from speechprune.errors import SpeechPruneError
from speechprune.study.runner import prepare_results, run_study
from speechprune.study.store import _locked, read_results

EXECUTORS = ("local", "submitit")
CLUSTERS = ("auto", "slurm", "local")
INSTALL = "pip install 'speechprune[cluster]'"
#: the options that only mean something with --executor submitit (argparse dest -> flag)
SUBMITIT_OPTIONS = {"jobs": "--jobs", "cluster": "--cluster", "partition": "--partition", "gpus": "--gpus",
                    "cpus": "--cpus", "mem_gb": "--mem-gb", "timeout": "--timeout", "no_wait": "--no-wait"}


def _submitit():
    """The submitit module, or one line that names the extra to install."""
    try:
        import submitit
    except ImportError:
        raise SpeechPruneError(f"--executor submitit needs the submitit package: {INSTALL}") from None
    return submitit


class StudyWorker:
    """One array task: a worker of ``study`` writing into ``out`` (picklable, run in the job's process)."""

    def __init__(self, study, out: str | Path, device: str | None = None, limit: int | None = None):
        self.study, self.out, self.device, self.limit = study, str(out), device, limit

    def __call__(self, index: int) -> int:
        """Measure runs until none is left; returns how many runs of the study are saved when it stops."""
        # SLURM stops a job (scancel) with SIGTERM, then SIGKILL, which no `finally` survives; submitit
        # ignores SIGTERM (its timeouts come as SIGUSR2). Stop as on Ctrl-C instead: run_study releases
        # this worker's claim, so the run in progress is free at once, not after CLAIM_TIMEOUT_S.
        signal.signal(signal.SIGTERM, _interrupt)
        print(f"worker {index} of study {self.study.name} on {socket.gethostname()}, pid {os.getpid()}", flush=True)
        records = run_study(self.study, self.out, reuse=False, device=self.device, progress=False,
                            limit=self.limit, log=functools.partial(print, flush=True))
        return len(records)

    def checkpoint(self, index: int):
        """On timeout or preemption submitit requeues the same worker: it claims what is still unsaved."""
        return _submitit().helpers.DelayedSubmission(self, index)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """The ``speechprune study`` options of the executors."""
    g = p.add_argument_group("executor", "where the runs are measured (see studies/README.md)")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this process is one worker (start more in other terminals); submitit: submit "
                        f"--jobs workers to a cluster (SLURM job array; needs {INSTALL})")
    g.add_argument("--jobs", type=int, default=None,
                   help="submitit: how many workers (array tasks) to submit (default: 4, or fewer when fewer runs "
                        "are left); each measures runs until none is left")
    g.add_argument("--cluster", choices=CLUSTERS, default=None,
                   help="submitit: slurm, or local (separate processes on this machine, for trying it out); "
                        "default auto: slurm where its commands are installed, else local")
    g.add_argument("--partition", default=None, help="submitit: the SLURM partition")
    g.add_argument("--gpus", type=int, default=None, help="submitit: GPUs per worker (default 1 on SLURM, 0 locally)")
    g.add_argument("--cpus", type=int, default=None, help="submitit: CPU cores per worker")
    g.add_argument("--mem-gb", type=float, default=None, help="submitit: memory per worker, in GB")
    g.add_argument("--timeout", type=int, default=None,
                   help="submitit: minutes per job before it is requeued (default 240); a run in progress at "
                        "that time is measured again")
    g.add_argument("--no-wait", action="store_true",
                   help="submitit: submit and return; run the same command later to see what is saved")


def study_runner(args: argparse.Namespace) -> Callable[..., list[dict]]:
    """The function that runs the study for these command-line options (``run_study``'s signature)."""

    if args.executor == "local":
        given = [flag for dest, flag in SUBMITIT_OPTIONS.items() if getattr(args, dest, None) not in (None, False)]
        if given:
            raise SpeechPruneError(f"{', '.join(given)}: only with --executor submitit")
        return run_study
    for dest in ("jobs", "gpus", "cpus", "timeout"):
        value = getattr(args, dest)
        if value is not None and value < (1 if dest != "gpus" else 0):
            raise SpeechPruneError(f"{SUBMITIT_OPTIONS[dest]} must be at least {1 if dest != 'gpus' else 0}, "
                                   f"got {value}")
    if args.mem_gb is not None and not args.mem_gb > 0:
        raise SpeechPruneError(f"--mem-gb must be positive, got {args.mem_gb}")
    _submitit()  # a missing package stops here, before anything is written
    return functools.partial(submit_study, jobs=args.jobs, cluster=args.cluster or "auto", partition=args.partition,
                             gpus=args.gpus, cpus=args.cpus, mem_gb=args.mem_gb, timeout=args.timeout,
                             wait=not args.no_wait)


def log_folder(out: Path) -> Path:
    """Where submitit keeps the jobs' pickles and logs: a hidden folder beside the results file."""
    return out.with_name(f".{out.stem}.submitit")


def submit_study(study, out: str | Path, *, rerun: bool = False, reuse: bool = True, device: str | None = None,
                 limit: int | None = None, jobs: int | None = None, cluster: str = "auto",
                 partition: str | None = None, gpus: int | None = None, cpus: int | None = None,
                 mem_gb: float | None = None, timeout: int | None = None, wait: bool = True,
                 poll: float = 5.0, progress: bool = True, log=print) -> list[dict]:
    """Measure ``study``'s unsaved runs on a cluster, by ``jobs`` workers in a submitit job array.

    The same results file, claims and records as :func:`speechprune.study.run_study` (each job
    runs it); ``limit`` applies to each job. With ``wait``, returns when every job has ended:
    the study's records then. A job that failed is one line of a :class:`SpeechPruneError`, once
    the other jobs have ended (the saved runs are kept).
    """
    from tqdm.auto import tqdm


    submitit = _submitit()
    out = Path(out)
    keys = {r.key for r in study.runs}
    saved, others = prepare_results(study, out, rerun=rerun, reuse=reuse, log=log)
    todo = [r for r in study.runs if r.key not in saved]
    busy = sum(r.key in others for r in todo)
    log(f"{study.name}: {len(study.runs)} runs, {len(study.runs) - len(todo)} saved in {out}, {len(todo)} to measure"
        + (f" ({busy} of them being measured by another worker)" if busy else ""))
    if len(todo) == busy:
        return [r for r in saved.values() if r["key"] in keys]

    n_jobs = max(1, min(jobs or 4, len(todo) - busy))
    folder = log_folder(out)
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=None if cluster == "auto" else cluster)
    on_slurm = executor.cluster == "slurm"
    parameters: dict[str, Any] = dict(name=f"speechprune-{study.name}", timeout_min=timeout or 240,
                                      gpus_per_node=gpus if gpus is not None else int(on_slurm), tasks_per_node=1,
                                      slurm_array_parallelism=n_jobs)
    parameters.update({k: v for k, v in dict(cpus_per_task=cpus, mem_gb=mem_gb, slurm_partition=partition).items()
                       if v is not None})
    executor.update_parameters(**parameters)
    worker = StudyWorker(study, out.resolve(), device=device, limit=limit)
    submitted = executor.map_array(worker, list(range(n_jobs)))
    ids = ", ".join(j.job_id for j in submitted)
    log(f"submitted {n_jobs} worker(s) to {executor.cluster}: job(s) {ids}; logs in {folder}")
    if not wait:
        log(f"not waiting: each record joins {out} as its run ends; run the same command again to see what is saved")
        return [r for r in saved.values() if r["key"] in keys]

    def n_saved() -> int:
        with _locked(out):
            return len(keys & set(read_results(out)[0]))

    bar = tqdm(total=len(study.runs), initial=len(study.runs) - len(todo), desc=study.name, unit="run",
               disable=not progress, file=sys.stderr)
    try:
        while not all(j.done() for j in submitted):
            time.sleep(poll)
            bar.update(n_saved() - bar.n)
        bar.update(n_saved() - bar.n)
    except KeyboardInterrupt:
        print(f"\nstopped waiting: the job(s) {ids} keep running and their records join {out} "
              f"(scancel them on SLURM to stop them); run the same command again to resume", file=sys.stderr)
        raise
    finally:
        bar.close()
    failed = [(j, j.exception()) for j in submitted]
    failed = [(j, e) for j, e in failed if e is not None]
    with _locked(out):
        records = [r for r in read_results(out)[0].values() if r["key"] in keys]
    if failed:
        job, err = failed[0]
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise SpeechPruneError(f"{len(failed)} of {n_jobs} job(s) failed; job {job.job_id}: "
                               f"{lines[-1].strip() if lines else type(err).__name__} (its log: {job.paths.stderr}); "
                               f"{len(records)} of {len(study.runs)} runs are saved in {out}: run the same command "
                               "to measure the rest")
    return records
