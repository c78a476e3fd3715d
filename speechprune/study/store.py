"""A study's records and the file that holds them, shared by every worker of the study.

Every run's record (:func:`study_record`: settings, WER, S/D/I and the per-utterance counts that
the bootstrap of :mod:`speechprune.stats` resamples) is written to the study's JSON file as soon as
the run finishes (the whole file is rewritten atomically), keyed by a hash of the run's settings.
A record is checked (:func:`check_record`) whenever it is read: a corrupt one is reported and
measured again. Several workers may run the same study at once (two terminals, or one per GPU):
each claims the next run that nobody has saved or claimed, under a lock beside the results file,
and merges its record into the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from speechprune.errors import SpeechPruneError
from speechprune.outputs import stamp, write_file
from speechprune.study.spec import KEY_FIELDS, Run, Study, run_key

try:  # POSIX; elsewhere a study has one worker at a time
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

RECORD_FORMAT = 1
REQUIRED_RECORD_FIELDS = KEY_FIELDS + (
    "key", "n_utterances", "wer", "substitutions", "deletions", "insertions", "ref_words",
    "utterance_ids", "utterance_errors", "utterance_words", "hypotheses", "param_sparsity", "date",
    "versions", "seconds")



def per_utterance(record: dict) -> dict:
    """The scored utterances of an evaluation record (:func:`speechprune.evaluate.evaluate`'s) in the
    per-utterance form that a study saves and :mod:`speechprune.stats` resamples: ``utterance_ids``,
    ``utterance_errors`` (S+D+I), ``utterance_words`` (normalised reference words) and ``hypotheses``.
    Utterances without a score (no reference words) are left out."""
    scored = [u for u in record["utterances"] if u["errors"] is not None]
    return dict(utterance_ids=[u["id"] for u in scored], utterance_errors=[u["errors"] for u in scored],
                utterance_words=[len(u["reference_normalized"].split()) for u in scored],
                hypotheses=[u.get("hypothesis") for u in scored])  # records made by hand may lack them


def study_record(run: Run, full: dict, seconds: float) -> dict:
    """The compact record a study saves: settings, WER, S/D/I and per-utterance counts for the bootstrap."""
    utterances = per_utterance(full)
    comp = full.get("compression") or {}
    return dict(
        format=RECORD_FORMAT,
        key=run.key,
        label=run.label,
        recipe=run.recipe,
        **run.settings(),
        n_utterances=len(utterances["utterance_ids"]),
        wer=full["wer"],
        substitutions=full["substitutions"],
        deletions=full["deletions"],
        insertions=full["insertions"],
        ref_words=full["ref_words"],
        param_sparsity=comp.get("param_sparsity", 0.0),
        params=comp.get("params_after", full["model"]["parameters"]),
        **utterances,
        decoding_settings=full.get("decoding"),
        normalizer=full.get("normalizer"),
        dtype=full.get("dtype"),
        device=full.get("device"),
        date=full["date"],
        versions={k: full["versions"][k] for k in ("speechprune", "torch", "transformers")},
        threads=_threads(),
        compress_seconds=round(comp.get("seconds", 0.0), 3),
        decode_seconds=full["decode_seconds"],
        seconds=round(seconds, 2),
    )


def _threads() -> int:
    return torch.get_num_threads()


def check_record(record: Any) -> str | None:
    """Why a saved record cannot be used (None when it can): fields missing, a key that does not match."""
    if not isinstance(record, dict):
        return f"not an object ({type(record).__name__})"
    missing = [k for k in REQUIRED_RECORD_FIELDS if k not in record]
    if missing:
        return f"missing {', '.join(missing)}"
    if record["key"] != run_key(record):
        return "its key does not match its settings"
    lists = [record[k] for k in ("utterance_errors", "utterance_words", "utterance_ids", "hypotheses")]
    if not all(isinstance(x, list) for x in lists):
        return "per-utterance fields are not lists"
    n = len(record["utterance_errors"])
    if not (len(record["utterance_words"]) == len(record["utterance_ids"]) == n == record["n_utterances"]):
        return "per-utterance lists of different lengths"
    if n == 0:
        return "no utterances"
    if len(set(map(str, record["utterance_ids"]))) != n:
        return "the same utterance id twice"
    counts = record["utterance_errors"] + record["utterance_words"]
    counts += [record[k] for k in ("substitutions", "deletions", "insertions", "ref_words")]
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        return "error and word counts must be non-negative integers"
    if min(record["utterance_words"]) < 1:
        return "an utterance with no reference words (such utterances are dropped before scoring)"
    errors, words = sum(record["utterance_errors"]), sum(record["utterance_words"])
    if words != record["ref_words"]:
        return f"ref_words {record['ref_words']} is not the sum of its per-utterance words ({words})"
    if record["substitutions"] + record["deletions"] + record["insertions"] != errors:
        return "substitutions + deletions + insertions is not the sum of its per-utterance errors"
    wer = 100.0 * errors / words
    if not _finite(record["wer"]) or not math.isclose(wer, record["wer"], abs_tol=0.01):
        return f"WER {record['wer']!r} does not match its per-utterance counts ({wer:.2f})"
    sparsity, p = record["sparsity"], record["param_sparsity"]
    if not (_finite(sparsity) and 0.0 <= sparsity < 1.0) or not (_finite(p) and 0.0 <= p < 1.0):
        return "sparsity outside [0, 1)"
    if not _finite(record["seconds"]) or record["seconds"] < 0:
        return "negative or missing run time"
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

# --- the results file -------------------------------------------------------------------------

def read_results(path: Path, *, repair: bool = True) -> tuple[dict[str, dict], list[str]]:
    """Usable records by key, and one line per record (or file) that could not be used.

    A results file that is not valid JSON is moved aside (``NAME.corrupt-TIME``) with ``repair``,
    and left as it is without (``--dry-run`` changes nothing).
    """
    if not path.is_file():
        return {}, []
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        if not repair:
            return {}, [f"{path} is not valid JSON ({err}); a run would move it aside and measure every run"]
        aside = path.with_name(path.name + f".corrupt-{int(time.time())}")
        os.replace(path, aside)
        return {}, [f"{path} is not valid JSON ({err}); moved to {aside.name}, every run will be measured"]
    if not isinstance(saved, dict) or not isinstance(saved.get("records"), list):
        return {}, [f"{path} has no 'records' list: every run will be measured"]
    good, problems = {}, []
    for i, record in enumerate(saved["records"]):
        why = check_record(record)
        if why:
            problems.append(f"record {i} ({record.get('label', '?') if isinstance(record, dict) else '?'}): "
                            f"{why}; it will be measured again")
        else:
            good[record["key"]] = record
    return good, problems


def write_results(path: Path, study: Study, records: list[dict]) -> None:
    """Rewrite the whole results file atomically (a temporary file beside it, then a rename)."""
    payload = dict(
        study=study.name,
        description=study.description,
        source=_relative(study.source),
        spec=study.spec,
        n_runs=len(study.runs),
        n_done=sum(1 for r in records if r["key"] in {run.key for run in study.runs}),
        updated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        written_by=stamp(),
        records=records,
    )
    write_file(path, json.dumps(payload, indent=1) + "\n")


def _relative(path: str | None) -> str | None:
    """``path`` relative to the working folder when it lies below it (no machine paths in results)."""
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.name


def reusable_records(out: Path, keys: set[str]) -> dict[str, dict]:
    """Sound records with one of ``keys`` in the other study files beside ``out`` (same settings, same key)."""
    found: dict[str, dict] = {}
    for path in sorted(out.parent.glob("*.json")) if out.parent.is_dir() else []:
        if path == out or not keys - set(found):
            continue
        try:
            records = json.loads(path.read_text(encoding="utf-8")).get("records", [])
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
        for r in records:
            if isinstance(r, dict) and r.get("key") in keys and r["key"] not in found and check_record(r) is None:
                found[r["key"]] = dict(r, reused_from=r.get("reused_from") or path.name)
    return found


@contextlib.contextmanager
def _locked(out: Path):
    """Hold an exclusive lock on the lock file beside ``out`` (``.NAME.json.lock``) while the block runs."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(f".{out.name}.lock"), "a+") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


#: a claim counts as abandoned after this many seconds (a run takes minutes; a worker on another
#: machine sharing the folder cannot be asked whether it is alive, and a process id can be reused)
CLAIM_TIMEOUT_S = 12 * 3600


def _claims_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.claims")


def _claim_alive(claim: dict) -> bool:
    """True while the worker that made ``claim`` may still be measuring it."""
    try:
        if time.time() - float(claim.get("since", 0)) >= CLAIM_TIMEOUT_S:
            return False
    except (TypeError, ValueError):
        return False
    if claim.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(claim.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _read_claims(out: Path) -> dict[str, dict]:
    """The live claims of other workers on ``out``'s runs (key -> claim); call under :func:`_locked`."""
    try:
        claims = json.loads(_claims_path(out).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(claims, dict):
        return {}
    return {k: c for k, c in claims.items() if isinstance(c, dict) and _claim_alive(c)}


def _write_claims(out: Path, claims: dict[str, dict]) -> None:
    path = _claims_path(out)
    if not claims:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(claims), encoding="utf-8")
    os.replace(tmp, path)


def _claim_next(out: Path, todo: list[Run]) -> tuple[Run | None, int]:
    """Claim the first run of ``todo`` that is neither saved in ``out`` nor claimed by a live worker.

    Returns the run (None when nothing is left for this worker) and how many runs of ``todo`` are
    still unsaved (claimed by others included), for the progress bar.
    """
    with _locked(out):
        saved, _ = read_results(out)
        claims = {k: c for k, c in _read_claims(out).items() if k not in saved}
        left = [r for r in todo if r.key not in saved]
        run = next((r for r in left if r.key not in claims), None)
        if run is not None:
            claims[run.key] = dict(pid=os.getpid(), host=socket.gethostname(), since=time.time(),
                                   run=run.describe())
        _write_claims(out, claims)
    return run, len(left)


def _release(out: Path, keys: Iterable[str]) -> None:
    """Drop this worker's claims on ``keys``."""
    keys = set(keys)
    if not keys:
        return
    with _locked(out):
        claims = _read_claims(out)
        _write_claims(out, {k: c for k, c in claims.items()
                            if not (k in keys and c.get("pid") == os.getpid() and c.get("host") == socket.gethostname())})


def _save_record(out: Path, study: Study, record: dict) -> list[dict]:
    """Merge ``record`` into the results file as it is on disk now (other workers' records kept)."""
    with _locked(out):
        saved, _ = read_results(out)
        saved[record["key"]] = record
        write_results(out, study, list(saved.values()))
        return list(saved.values())


def records_of(study: Study, records: list[dict]) -> list[dict]:
    """The records of ``study``'s runs, in the study's order."""
    by_key = {r["key"]: r for r in records}
    return [by_key[r.key] for r in study.runs if r.key in by_key]


def load_records(path: str | Path) -> dict:
    """A saved study file: the parsed JSON with only its usable records (problems listed under 'problems').

    A file that is not a study's results (not JSON, or no 'records' list) is a :class:`SpeechPruneError`.
    """
    path = Path(path)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SpeechPruneError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): not a study's "
                               "results file (a run of the study moves it aside and measures again)") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("records"), list):
        raise SpeechPruneError(f"{path} is not a study's results file: it has no 'records' list")
    good, problems = [], []
    for i, r in enumerate(saved.get("records", [])):
        why = check_record(r)
        (problems.append(f"record {i}: {why}") if why else good.append(r))
    saved["records"], saved["problems"] = good, problems
    return saved


