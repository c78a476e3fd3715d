"""Run a grid of compressions and evaluations, one saved record per run: the study runner.

A study is settings (model, scope, sparsity) × compression options (method, features,
allocation, merge, weighting, or a ``recipe``) × k-means seeds × data × decoding, described by
a small TOML file under ``studies/``. Every run's record is written to the study's JSON file as
soon as the run finishes (the whole file is rewritten atomically), keyed by a hash of the run's
settings. Running the same study again resumes it: finished runs are kept, a corrupt record is
reported and run again, and ``rerun=True`` measures everything afresh. Several workers may run
the same study at once (two terminals, or one per GPU): each claims the next run that nobody has
saved or claimed, under a lock beside the results file, and merges its record into the file.

The grid is ordered seed-major (the dense models, every magnitude run and seed 0 of every
clustering option first, then seed 1, ...) so that a study cut short still covers every
setting. ``speechprune compare`` and :func:`speechprune.paper.measure` are presets of
:func:`execute`, the function that compresses and evaluates one run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import socket
import statistics
import sys
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from speechprune.errors import SpeechPruneError, cli_int
from speechprune.outputs import check_output_file, stamp, write_file

try:  # POSIX; elsewhere a study has one worker at a time
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

DECODINGS = ("greedy", "fallback")
SEEDLESS = ("magnitude", "pairs")  # methods without a k-means seed: one run per setting
RECORD_FORMAT = 1

# the settings that make a run; the key of a record is a hash of these
KEY_FIELDS = ("model", "data", "max_samples", "scope", "sparsity", "method", "features", "allocation",
              "merge", "weighting", "seed", "decoding", "batch_size")
REQUIRED_RECORD_FIELDS = KEY_FIELDS + (
    "key", "n_utterances", "wer", "substitutions", "deletions", "insertions", "ref_words",
    "utterance_ids", "utterance_errors", "utterance_words", "hypotheses", "param_sparsity", "date",
    "versions", "seconds")


@dataclass(frozen=True)
class Run:
    """One compression (or none: ``method="dense"``) and one evaluation."""

    model: str
    data: str
    max_samples: int | None = None
    scope: str | None = None
    sparsity: float = 0.0
    method: str = "dense"
    features: str | None = None
    allocation: str | None = None
    merge: str | None = None
    weighting: str | None = None
    seed: int | None = None
    decoding: str = "greedy"
    batch_size: int = 8
    label: str = field(default="", compare=False)
    recipe: str | None = field(default=None, compare=False)

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in KEY_FIELDS}

    @property
    def key(self) -> str:
        return run_key(self.settings())

    def describe(self) -> str:
        if self.method == "dense":
            return f"{self.model} dense on {self.data}"
        what = self.label or self.method
        seed = "" if self.seed is None else f" seed {self.seed}"
        return f"{self.model} {self.scope} {self.sparsity:g} {what}{seed} on {self.data}"


def run_key(settings: dict) -> str:
    """A short hash of a run's settings (sorted JSON)."""
    canonical = {k: settings.get(k) for k in KEY_FIELDS}
    if canonical["sparsity"] is not None:
        canonical["sparsity"] = float(canonical["sparsity"])
    return hashlib.sha1(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]


def make_run(model: str, data: str, *, method: str = "dense", scope: str | None = None, sparsity: float = 0.0,
             features: str = "both", allocation: str = "uniform", merge: str = "mean", weighting: str = "none",
             seed: int | None = 0, decoding: str = "greedy", batch_size: int = 8, max_samples: int | None = None,
             label: str = "", recipe: str | None = None) -> Run:
    """A :class:`Run` with the fields that do not apply to ``method`` set to None.

    Magnitude pruning has no k-means: no seed, features, merge rule or weighting; ``pairs``
    (closest pairs first) has no seed. The dense model has no compression at all.
    """
    if method == "dense":
        return Run(model, data, max_samples, decoding=decoding, batch_size=batch_size, label=label or "dense")
    if method == "pairs":  # no seed: closest pairs first is deterministic
        return Run(model, data, max_samples, scope, float(sparsity), method, features, allocation, merge, weighting,
                   None, decoding, batch_size, label or _label(method, allocation, features, merge, weighting),
                   recipe)
    if method == "magnitude":
        return Run(model, data, max_samples, scope, float(sparsity), method, None, allocation, None, None, None,
                   decoding, batch_size, label or _label(method, allocation, features, merge, weighting), recipe)
    return Run(model, data, max_samples, scope, float(sparsity), method, features, allocation, merge, weighting,
               int(seed or 0), decoding, batch_size, label or _label(method, allocation, features, merge, weighting),
               recipe)


def _label(method: str, allocation: str, features: str, merge: str, weighting: str) -> str:
    """``cluster``, ``magnitude variance``, ``cluster producer projection``: what differs from the defaults."""
    parts = [method] + ([allocation] if allocation != "uniform" else [])
    if method != "magnitude":
        parts += [x for x, default in ((features, "both"), (merge, "mean"), (weighting, "none")) if x != default]
    return " ".join(parts)


# --- one run ----------------------------------------------------------------------------------

def execute(run: Run, dense, processor, speech, *, device: str | None = None, progress: bool = False) -> dict:
    """Compress a copy of ``dense`` as ``run`` says and evaluate it: evaluate's full record.

    The record gets ``compression`` (the report as a dict, or None for the dense model) and
    ``label``. ``dense`` itself is never changed.
    """
    from speechprune.compress import compress
    from speechprune.evaluate import evaluate

    report = None
    target = dense
    if run.method != "dense":
        target = copy.deepcopy(dense)
        report = compress(target, method=run.method, sparsity=run.sparsity, scope=run.scope,
                          allocation=run.allocation, seed=run.seed or 0, features=run.features,
                          weighting=run.weighting, merge_rule=run.merge, progress=progress)
    record = evaluate(target, processor, speech, batch_size=run.batch_size, device=device, progress=progress,
                      label=run.label or run.method, decoding=run.decoding)
    record.update(label=run.label or run.method, compression=report.to_dict() if report else None)
    return record


def study_record(run: Run, full: dict, seconds: float) -> dict:
    """The compact record a study saves: settings, WER, S/D/I and per-utterance counts for the bootstrap."""
    utts = full["utterances"]
    scored = [u for u in utts if u["errors"] is not None]
    comp = full.get("compression") or {}
    return dict(
        format=RECORD_FORMAT,
        key=run.key,
        label=run.label,
        recipe=run.recipe,
        **run.settings(),
        n_utterances=len(scored),
        wer=full["wer"],
        substitutions=full["substitutions"],
        deletions=full["deletions"],
        insertions=full["insertions"],
        ref_words=full["ref_words"],
        param_sparsity=comp.get("param_sparsity", 0.0),
        params=comp.get("params_after", full["model"]["parameters"]),
        utterance_ids=[u["id"] for u in scored],
        utterance_errors=[u["errors"] for u in scored],
        utterance_words=[len(u["reference_normalized"].split()) for u in scored],
        hypotheses=[u["hypothesis"] for u in scored],
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
    import torch

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


# --- the study file ---------------------------------------------------------------------------

STUDY_KEYS = {
    "name": "a short name (the results file is results/studies/<name>.json)",
    "description": "what the study asks",
    "models": "list of models, e.g. [\"embedded:whisper-base\"]",
    "data": "list of speech sets, e.g. [\"embedded-full\"]",
    "max_samples": "first N utterances of each set (optional)",
    "seeds": "number of k-means seeds (0 .. N-1) or a list of seeds",
    "decoding": f"list of decodings, from {', '.join(DECODINGS)}",
    "batch_size": "evaluation batch size",
    "dense": "also evaluate the uncompressed model (default true)",
    "settings": "list of tables with scope and sparsity (and optionally models)",
    "options": "list of tables: method, features, allocation, merge, weighting, recipe, label",
}
SETTING_KEYS = ("scope", "sparsity", "models")
OPTION_KEYS = ("method", "features", "allocation", "merge", "weighting", "recipe", "label")


@dataclass
class Study:
    name: str
    runs: list[Run]
    description: str = ""
    source: str | None = None
    spec: dict = field(default_factory=dict)


def _fail(where: str, message: str) -> SpeechPruneError:
    return SpeechPruneError(f"{where}: {message}")


def _list(value: Any, key: str, where: str, kind: type = str) -> list:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _fail(where, f"'{key}' is empty")
    for item in items:
        if not isinstance(item, kind) or isinstance(item, bool) and kind is not bool:
            raise _fail(where, f"'{key}' must hold {kind.__name__} values, got {item!r}")
    return items


def _choice(value: Any, key: str, choices: Iterable[str], where: str) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise _fail(where, f"'{key}' = {value!r} is not one of {', '.join(choices)}")
    return value


def parse_study(spec: dict, where: str = "study") -> Study:
    """Check a study description (a dict read from TOML) and expand it into runs, seed-major.

    Every key and value is checked here; nothing about the models is (see :func:`check_scopes`).
    """
    from speechprune.allocation import ALLOCATIONS
    from speechprune.prune import FEATURES, MERGES, METHODS, WEIGHTINGS
    from speechprune.recipes import RECIPES, recipe_options

    for key in spec:
        if key not in STUDY_KEYS:
            raise _fail(where, f"unknown key '{key}': use {', '.join(STUDY_KEYS)}")
    for key in ("name", "models", "data", "settings", "options"):
        if key not in spec:
            raise _fail(where, f"missing key '{key}' ({STUDY_KEYS[key]})")
    name = spec["name"]
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ ") or name.startswith("."):
        raise _fail(where, f"'name' must be a plain file name, got {name!r}")
    models = _list(spec["models"], "models", where)
    data = _list(spec["data"], "data", where)
    decodings = [_choice(d, "decoding", DECODINGS, where) for d in _list(spec.get("decoding", "greedy"), "decoding", where)]
    max_samples = spec.get("max_samples")
    if max_samples is not None and (not isinstance(max_samples, int) or isinstance(max_samples, bool) or max_samples < 1):
        raise _fail(where, f"'max_samples' must be a positive integer, got {max_samples!r}")
    batch_size = spec.get("batch_size", 8)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise _fail(where, f"'batch_size' must be a positive integer, got {batch_size!r}")
    dense = spec.get("dense", True)
    if not isinstance(dense, bool):
        raise _fail(where, f"'dense' must be true or false, got {dense!r}")
    seeds_value = spec.get("seeds", 5)
    if isinstance(seeds_value, int) and not isinstance(seeds_value, bool):
        if not 1 <= seeds_value <= 1000:
            raise _fail(where, f"'seeds' must be between 1 and 1000, got {seeds_value}")
        seeds = list(range(seeds_value))
    else:
        seeds = _list(seeds_value, "seeds", where, int)
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise _fail(where, f"'seeds' must be distinct non-negative integers, got {seeds!r}")

    settings = []
    for i, s in enumerate(_list(spec["settings"], "settings", where, dict)):
        w = f"{where}: settings[{i}]"
        for key in s:
            if key not in SETTING_KEYS:
                raise _fail(w, f"unknown key '{key}': use {', '.join(SETTING_KEYS)}")
        if "scope" not in s or "sparsity" not in s:
            raise _fail(w, "needs 'scope' and 'sparsity'")
        if not isinstance(s["scope"], str) or not s["scope"].strip():
            raise _fail(w, f"'scope' must be a non-empty string, got {s['scope']!r}")
        sp = s["sparsity"]
        if not isinstance(sp, (int, float)) or isinstance(sp, bool) or not (0.0 < sp < 1.0):
            raise _fail(w, f"'sparsity' must be a number in (0, 1), got {sp!r}")
        settings.append((s["scope"], float(sp), _list(s.get("models", models), "models", w)))

    options = []
    for i, o in enumerate(_list(spec["options"], "options", where, dict)):
        w = f"{where}: options[{i}]"
        for key in o:
            if key not in OPTION_KEYS:
                raise _fail(w, f"unknown key '{key}': use {', '.join(OPTION_KEYS)}")
        recipe = _choice(o["recipe"], "recipe", RECIPES, w) if "recipe" in o else None
        chosen = {**(recipe_options(recipe) if recipe else {"method": "cluster"}),
                  **{k: v for k, v in o.items() if k not in ("recipe", "label")}}
        opt = dict(method=_choice(chosen.get("method", "cluster"), "method", METHODS, w),
                   features=_choice(chosen.get("features", "both"), "features", FEATURES, w),
                   allocation=_choice(chosen.get("allocation", "uniform"), "allocation", ALLOCATIONS, w),
                   merge=_choice(chosen.get("merge", "mean"), "merge", MERGES, w),
                   weighting=_choice(chosen.get("weighting", "none"), "weighting", WEIGHTINGS, w))
        label = o.get("label", "")
        if not isinstance(label, str):
            raise _fail(w, f"'label' must be a string, got {label!r}")
        options.append((opt, label, recipe))
    _check_labels_unique(options, where)

    runs: list[Run] = []
    seen: set[str] = set()

    def add(run: Run) -> None:
        if run.key not in seen:
            seen.add(run.key)
            runs.append(run)

    for s_index, seed in enumerate(seeds):  # seed-major: every setting early
        for decoding in decodings:
            for d in data:
                for model in models:
                    if dense and s_index == 0:
                        add(make_run(model, d, decoding=decoding, batch_size=batch_size, max_samples=max_samples))
                for scope, sparsity, setting_models in settings:
                    for model in setting_models:
                        for opt, label, recipe in options:
                            if opt["method"] in SEEDLESS and s_index > 0:
                                continue
                            add(make_run(model, d, scope=scope, sparsity=sparsity, seed=seed, decoding=decoding,
                                         batch_size=batch_size, max_samples=max_samples, label=label,
                                         recipe=recipe, **opt))
    return Study(name=name, runs=runs, description=spec.get("description", ""), spec=spec)


def _check_labels_unique(options: list[tuple[dict, str, str | None]], where: str) -> None:
    """Refuse two different options under one label: the tables would merge them into one row."""
    seen: dict[str, tuple] = {}
    for i, (opt, label, _) in enumerate(options):
        run = make_run("m", "d", scope="s", sparsity=0.5, label=label, **opt)
        what = (run.method, run.features, run.allocation, run.merge, run.weighting)
        if run.label in seen and seen[run.label][1] != what:
            raise _fail(f"{where}: options[{i}]",
                        f"label {run.label!r} is already used by options[{seen[run.label][0]}], a different option "
                        "(its runs would be merged into one row): give each option its own 'label'")
        seen.setdefault(run.label, (i, what))


def load_study(path: str | Path) -> Study:
    """Read and check a study file (TOML)."""
    path = Path(path)
    if not path.is_file():
        raise SpeechPruneError(f"no study file {path}: see studies/README.md for the format")
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SpeechPruneError(f"{path}: not valid TOML: {err}") from None
    study = parse_study(spec, where=str(path))
    study.source = str(path)
    return study


def check_scopes(study: Study, load=None) -> None:
    """Refuse a setting whose scope matches no unit of its model, before any run."""
    from speechprune.structure import parse_scope, units_in_scope

    pairs = sorted({(r.model, r.scope) for r in study.runs if r.scope is not None})
    for model_name in sorted({m for m, _ in pairs}):
        model = load(model_name)
        for _, scope in [p for p in pairs if p[0] == model_name]:
            try:
                parts = parse_scope(scope, model)
                if not units_in_scope(model, parts):
                    raise SpeechPruneError("no unit")
            except SpeechPruneError as err:
                raise SpeechPruneError(f"{study.source or study.name}: settings: 'scope' = {scope!r} matches "
                                       f"no unit of {model_name}: {err}") from None


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
    import torch
    from tqdm.auto import tqdm

    from speechprune.data import load_speech
    from speechprune.models import load_model

    out = Path(out)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
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


# --- command line ---------------------------------------------------------------------------

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
            print(markdown_scores(records, complete=len(records) >= len(study.runs), n_cells=grid_cells(study)))
        elif args.target:
            print(markdown_target(records))
        else:
            print(markdown_summary(records))
        return 0
    if args.dry_run:
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
    from speechprune.stats import study_summary

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
    from speechprune.recipes import resolve

    label = f"{resolve(recipe)['method']} ({recipe})"  # cluster (paper), pairs (recommended)
    spec["options"] = [o if o.get("method") == "magnitude" else {"recipe": recipe, "label": label}
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


# --- figures and summaries for the book -----------------------------------------------------------

#: Saved studies that ship with the package (``results/studies`` in the repository links here), so
#: that a chapter opened alone, on Colab, finds them.
PACKAGE_STUDIES = Path(__file__).resolve().parent / "data" / "results" / "studies"


def saved_study(name: str, results_dir: str | Path | None = None) -> dict | None:
    """The saved study ``name`` (:func:`load_records`), or None when there is none.

    Looks in ``results_dir/studies/name.json`` first, then in the copy shipped with the package.

    Examples
    --------
    >>> saved = saved_study("whisper-base-full")
    >>> saved["study"], {r["data"] for r in saved["records"]}
    ('whisper-base-full', {'embedded-full'})
    >>> saved_study("no-such-study") is None
    True
    """
    for folder in ([Path(results_dir) / "studies"] if results_dir else []) + [PACKAGE_STUDIES]:
        path = folder / f"{name}.json"
        if path.is_file():
            return load_records(path)
    return None


def saved_comparison(name: str, results_dir: str | Path | None = None, *, pairs: list[tuple[str, str]],
                     n_boot: int = 2000, **where) -> tuple[str, list[dict], dict[tuple[str, str], str]]:
    """What a chapter shows of saved study ``name``: its provenance line, the records of one setting
    (``where``: scope=, sparsity=, decoding= ...; the dense runs are kept), and one generated
    sentence per pair of option labels (:func:`speechprune.stats.versus`).

    A study that is absent, or has no runs of a pair yet, gives sentences that say so.
    """
    from speechprune.stats import versus

    saved = saved_study(name, results_dir)
    if saved is None or not saved["records"]:
        missing = f"not measured yet (no saved study {name!r})"
        return missing, [], {pair: missing for pair in pairs}
    records = [r for r in saved["records"]
               if r["method"] == "dense" or all(r.get(k) == v for k, v in where.items())]
    sentences = {}
    for a, b in pairs:
        found = versus(records, a, b, n_boot=n_boot)
        sentences[(a, b)] = found[1] if found else f"not measured yet (no saved runs of both {a} and {b})"
    return study_status(saved), records, sentences


def status_headline(status: str) -> str:
    """The head of a :func:`study_status` line: ``"NAME (complete)"`` or ``"NAME (PARTIAL: 22 of 34 runs
    saved so far)"``, for a sentence in the book."""
    head, paren, _ = status.partition(")")
    return head + paren if paren else status


def study_status(saved: dict) -> str:
    """One line of provenance: what the file is, how complete, when and with which versions."""
    records = saved["records"]
    n_runs = saved.get("n_runs", len(records))
    dates = sorted(r["date"] for r in records)
    versions = sorted({f"speechprune {r['versions']['speechprune']}, torch {r['versions']['torch']}, "
                       f"transformers {r['versions']['transformers']}" for r in records})
    complete = "complete" if len(records) >= n_runs else f"PARTIAL: {len(records)} of {n_runs} runs saved so far"
    converted = any(r.get("converted_from") for r in records)
    return (f"{saved.get('study')} ({complete}): {saved.get('description', '')}. Measured "
            f"{dates[0][:16]} to {dates[-1][:16]} UTC" + (f" with {'; '.join(versions)}" if versions else "")
            + (" (converted from an older results file)" if converted else "")
            + (f"; study file {saved['source']}" if saved.get("source") else "") + ".") if records else \
        f"{saved.get('study')}: no runs saved yet."


def plot_records(records: list[dict], *, title: str | None = None):
    """One panel per setting: a dot per seed and a box per option, magnitude as a single run, dense as a line."""
    import matplotlib.pyplot as plt

    from speechprune.stats import groups, setting_key

    by_setting: dict[tuple, dict[str, list[dict]]] = {}
    dense: dict[tuple, float] = {}
    for g, rs in groups(records).items():
        r0 = rs[0]
        if r0["method"] == "dense":
            dense[(r0["model"], r0["data"], r0.get("max_samples"), r0["decoding"])] = r0["wer"]
            continue
        by_setting.setdefault(setting_key(r0), {})[r0.get("label") or r0["method"]] = rs
    if not by_setting:
        return None
    fig, axes = plt.subplots(1, len(by_setting), figsize=(3.6 * len(by_setting) + 0.6, 3.8), squeeze=False)
    for ax, (setting, options) in zip(axes[0], sorted(by_setting.items(), key=str)):
        names = sorted(options, key=lambda n: (not n.startswith("magnitude"), n))
        for i, name in enumerate(names):
            wers = [r["wer"] for r in options[name]]
            colour = "#d1495b" if name.startswith("magnitude") else "#2a7ab9"
            if len(wers) > 1:
                ax.boxplot([wers], positions=[i], widths=0.5, showfliers=False,
                           medianprops=dict(color=colour), boxprops=dict(color="#777777"))
                ax.scatter([i] * len(wers), wers, color=colour, s=18, zorder=3)
            else:
                ax.scatter([i], wers, color=colour, marker="D", s=30, zorder=3)
                ax.annotate("single run", (i, wers[0]), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7)
        key = setting[:3] + (setting[3],)
        if key in dense:
            ax.axhline(dense[key], color="black", linestyle="--", linewidth=1, label=f"dense {dense[key]:.1f}%")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=7)
        n_seeds = max(len(v) for v in options.values())
        ax.set_title(f"{setting[0].removeprefix('embedded:')}, {setting[4]} {setting[5]:.0%}\n"
                     f"{setting[1]}, {setting[3]}, {n_seeds} seed{'s' if n_seeds > 1 else ''}", fontsize=8)
        ax.set_ylabel("WER (%)")
        top = max(r["wer"] for v in options.values() for r in v)
        ax.set_ylim(0, top * 1.15 + 1)  # room for the "single run" labels above the points
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def markdown_summary(records: list[dict], n_boot: int = 2000) -> str:
    """Markdown tables of a study, one per model, data and decoding: a row per setting, a column per
    option (median WER, range and number of seeds), and each option's comparison with magnitude."""
    from speechprune.stats import comparisons

    rows = comparisons(records, n_boot=n_boot)
    tables: dict[tuple, dict[tuple, dict[str, dict]]] = {}
    for r in rows:
        tables.setdefault((r["model"], r["data"], r["decoding"]), {}).setdefault((r["scope"], r["sparsity"]), {})[
            r["option"]] = r
    out = []
    for (model, data, decoding), settings in tables.items():
        options = sorted({o for by in settings.values() for o in by}, key=lambda o: (o != "magnitude", o))
        baselines = {o for by in settings.values() for o, r in by.items() if r["method"] == "magnitude"}
        compared = [o for o in options if o not in baselines]
        dense = next((r["dense"] for by in settings.values() for r in by.values() if "dense" in r), None)
        n_utts = next(iter(next(iter(settings.values())).values()))["summary"].n_utterances
        out.append(f"{model}, {data} ({n_utts} utterances), {decoding} decoding"
                   + (f"; uncompressed {dense:.2f}%" if dense is not None else "") + ":\n")
        out.append("| setting | " + " | ".join(options) + " | " +
                   " | ".join(f"{o} against magnitude" for o in compared) + " |")
        out.append("|---" * (1 + len(options) + len(compared)) + "|")
        for (scope, sparsity), by in sorted(settings.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            cells = []
            for o in options:
                if o not in by:
                    cells.append("")
                    continue
                sm = by[o]["summary"]
                cells.append(f"{sm.median:.2f} (single run)" if sm.n_seeds == 1 else
                             f"{sm.median:.2f} ({sm.low:.2f}-{sm.high:.2f}), {sm.n_seeds} seeds")
            cells += [by[o].get("sentence", "") if o in by else "" for o in compared]
            out.append(f"| {scope} {sparsity:.0%} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _recipe_of(record: dict) -> str | None:
    """``paper`` or ``recommended`` when a record's options are exactly that recipe's, else None."""
    from speechprune.recipes import RECIPES_OPTIONS

    mine = {k: record.get(k) for k in ("method", "features", "allocation", "merge", "weighting")}
    return next((name for name, opts in RECIPES_OPTIONS.items() if opts == mine), None)


def markdown_target(records: list[dict], n_boot: int = 2000) -> str:
    """One compact Markdown table per model and data: per setting, the uncompressed model, magnitude
    pruning, the paper's recipe (median and range over seeds) and the recommended recipe, the
    recommended recipe's WER as a multiple of the uncompressed model's, and its paired difference
    with magnitude pruning (points, 95% interval; "cannot decide" where the interval holds 0)."""
    from speechprune.stats import comparisons

    rows = comparisons(records, n_boot=n_boot)
    blocks: dict[tuple, dict] = {}
    for r in rows:
        role = "magnitude" if r["method"] == "magnitude" else _recipe_of(r["records"][0])
        if role:
            blocks.setdefault((r["model"], r["data"], r["decoding"]), {}).setdefault(
                (r["scope"], r["sparsity"]), {})[role] = r
    out = []
    for (model, data, decoding), settings in blocks.items():
        n_utts = next(iter(next(iter(settings.values())).values()))["summary"].n_utterances
        out.append(f"{model}, {data} ({n_utts} utterances), {decoding} decoding:\n")
        out.append("| setting | uncompressed | magnitude | paper's recipe | recommended | recommended / "
                   "uncompressed | recommended − magnitude |")
        out.append("|---|---|---|---|---|---|---|")
        for (scope, sparsity), by in sorted(settings.items()):
            first = next(iter(by.values()))
            dense = first.get("dense")

            def cell(role: str) -> str:
                if role not in by:
                    return "—"
                s = by[role]["summary"]
                return f"{s.median:.2f}" + (f" ({s.low:.2f}-{s.high:.2f}, {s.n_seeds} seeds)" if s.n_seeds > 1 else "")
            rec = by.get("recommended")
            ratio = f"{rec['summary'].median / dense:.1f}×" if rec and dense else "—"
            diff = "—"
            if rec and "difference" in rec:
                d = rec["difference"]
                sure = "" if d.interval[0] > 0 or d.interval[1] < 0 else ", cannot decide"
                diff = f"{d.median:+.1f} [{d.interval[0]:+.1f}, {d.interval[1]:+.1f}]{sure}".replace("-", "−")
            out.append(f"| {scope} {sparsity:.0%} | {dense:.2f} | {cell('magnitude')} | {cell('paper')} | "
                       f"{cell('recommended')} | {ratio} | {diff} |" if dense is not None else
                       f"| {scope} {sparsity:.0%} | — | {cell('magnitude')} | {cell('paper')} | {cell('recommended')} "
                       f"| {ratio} | {diff} |")
        out.append("")
    return "\n".join(out).rstrip("\n")


def screening_scores(records: list[dict]) -> list[dict]:
    """Step 1 of the selection rule in ``studies/README.md``, from a screening's records.

    Per option: the median WER over seeds in each cell (model and setting; a single run for an
    option without a seed), averaged over the cells (``score``); the largest WER over seeds,
    averaged the same way (``worst``); and how many cells it covers. Sorted by score.
    """
    from speechprune.stats import groups, option_label, setting_key

    cells: dict[str, dict[tuple, list[float]]] = {}
    for rs in groups(records).values():
        r0 = rs[0]
        if r0["method"] == "dense":
            continue
        cell = setting_key(r0)
        cells.setdefault(option_label(r0), {})[cell] = [r["wer"] for r in rs]
    every = set().union(*cells.values()) if cells else set()
    rows = []
    for option, by in cells.items():
        rows.append(dict(option=option, score=statistics.fmean(statistics.median(v) for v in by.values()),
                         worst=statistics.fmean(max(v) for v in by.values()), cells=len(by), of_cells=len(every),
                         seeds=min(len(v) for v in by.values()), seeded=any(len(v) > 1 for v in by.values())))
    return sorted(rows, key=lambda r: (r["score"], r["worst"]))


def grid_cells(study: Study) -> int:
    """How many cells (model, data and setting; the options aside) the study's grid has."""
    from speechprune.stats import setting_key

    return len({setting_key(r.settings()) for r in study.runs if r.method != "dense"})


def markdown_scores(records: list[dict], complete: bool, n_cells: int | None = None) -> str:
    """A screening as a Markdown table: per option, its median WER over seeds in each cell (model
    and setting) with the number of seeds, its score and worst case (step 1 of the rule in
    ``studies/README.md``), and which options the rule keeps, marked provisional until ``complete``.
    ``n_cells``: the number of cells in the whole grid (default: the cells with runs so far)."""
    from speechprune.stats import groups, option_label, setting_key

    cells: dict[tuple, str] = {}
    table: dict[str, dict[tuple, str]] = {}
    for rs in groups(records).values():
        r0 = rs[0]
        if r0["method"] == "dense":
            continue
        cell = setting_key(r0)
        cells[cell] = f"{r0['model'].removeprefix('embedded:')} {r0['scope']} {r0['sparsity']:.0%}"
        wers = [r["wer"] for r in rs]
        table.setdefault(option_label(r0), {})[cell] = (f"{statistics.median(wers):.2f} ({len(wers)})"
                                                        if len(wers) > 1 else f"{wers[0]:.2f}")
    if not table:
        return "no runs saved yet"
    order = sorted(cells, key=str)
    scores = screening_scores(records)
    for row in scores:
        row["of_cells"] = n_cells or row["of_cells"]
    lines = ["| option | " + " | ".join(cells[c] for c in order) + " | score | worst | cells |",
             "|---|" + "---|" * (len(order) + 3)]
    for row in scores:
        by = table[row["option"]]
        lines.append(f"| {row['option']} | " + " | ".join(by.get(c, "") for c in order)
                     + f" | {row['score']:.2f} | {row['worst']:.2f} | {row['cells']} of {row['of_cells']} |")
    kept = select_options(scores)
    note = ("Each cell: median WER (%) over k-means seeds, the number of seeds in brackets (a single run for "
            "magnitude pruning and closest pairs, which have no seed). Score: the medians averaged over the "
            "cells; worst: the largest WER over seeds, averaged the same way.")
    verdict = (f"The rule keeps {' and '.join(kept)}" if kept else "No option covers every cell yet")
    verdict += "." if complete else " (provisional: the screening is not complete, and scores over different cells do not compare)."
    return "\n".join(lines) + "\n\n" + note + " " + verdict


def select_options(scores: list[dict], n: int = 2, *, tie: float = 1.0, exclude: tuple[str, ...] = ("magnitude",)
                   ) -> list[str]:
    """The ``n`` options with the lowest score among those that cover every cell; a score within
    ``tie`` points of the best left goes to the lower worst case (the rule in ``studies/README.md``)."""
    left = [r for r in scores if r["option"] not in exclude and r["cells"] == r["of_cells"]]
    kept = []
    while left and len(kept) < n:
        best = min(left, key=lambda r: r["score"])
        close = [r for r in left if r["score"] - best["score"] <= tie]
        pick = min(close, key=lambda r: (r["worst"], r["score"]))
        kept.append(pick["option"])
        left.remove(pick)
    return kept


#: The paper's recipe as the screening (``studies/screen-recipes.toml``) and the final studies label
#: it: the fallback of step 3 and the recipe the book compares the recommended one with.
PAPER_OPTION = "A paper (both)"


def recommend(records: list[dict], *, fallback: str, tie: float = 1.0, need: int = 2, n_boot: int = 2000) -> dict:
    """Step 3 of the selection rule in ``studies/README.md``, from a final study's records.

    Per option (magnitude pruning aside): the median WER over seeds in each setting averaged over
    the settings (``score``), the largest WER over seeds averaged the same way (``worst``), and
    ``wins``, the settings where its paired difference with magnitude pruning is negative with a
    95% interval that excludes 0. The option with the lowest score among those that cover every
    setting is chosen (a score within ``tie`` points of the best goes to the lower worst case),
    provided it has at least ``need`` wins; otherwise the choice is ``fallback`` (the paper's
    recipe). Returns the choice, the reason in words, and one row per option.
    """
    from speechprune.stats import comparisons

    by_option: dict[str, dict[tuple, dict]] = {}
    for row in comparisons(records, n_boot=n_boot):
        if row["method"] == "magnitude":
            continue
        by_option.setdefault(row["option"], {})[row["setting"]] = row
    every = set().union(*by_option.values()) if by_option else set()
    rows = []
    for option, per in by_option.items():
        wins = sum(1 for r in per.values() if "difference" in r and r["difference"].interval[1] < 0)
        rows.append(dict(option=option, score=statistics.fmean(r["summary"].median for r in per.values()),
                         worst=statistics.fmean(r["summary"].high for r in per.values()), wins=wins,
                         settings=len(per), of_settings=len(every),
                         seeds=min(r["summary"].n_seeds for r in per.values())))
    rows.sort(key=lambda r: (r["score"], r["worst"]))
    chosen = select_options([dict(r, cells=r["settings"], of_cells=r["of_settings"]) for r in rows], n=1, tie=tie,
                            exclude=())  # the same tie rule as the screening's
    if not chosen:
        return dict(choice=fallback, reason="no option covers every setting: the recipe stays the paper's",
                    rows=rows)
    pick = next(r for r in rows if r["option"] == chosen[0])
    if pick["wins"] >= need:
        reason = (f"{pick['option']} has the lowest median WER averaged over the {pick['of_settings']} settings "
                  f"({pick['score']:.2f}%) and beats magnitude pruning, with an interval that excludes 0, in "
                  f"{pick['wins']} of them")
        return dict(choice=pick["option"], reason=reason, rows=rows)
    reason = (f"{pick['option']} has the lowest median WER averaged over the settings ({pick['score']:.2f}%) but "
              f"beats magnitude pruning clearly in only {pick['wins']} of {pick['of_settings']} (at least {need} "
              f"needed): the recipe stays {fallback}")
    return dict(choice=fallback, reason=reason, rows=rows)


def target_rows(records: list[dict], ratio: float = 0.5, n_boot: int = 2000) -> list[dict]:
    """The brief's target, per setting and clustering option: is the median WER over seeds at most
    ``ratio`` (kept as ``limit``) times magnitude pruning's at the same budget, on the same clips?
    Each row carries the comparison with magnitude pruning in words (``sentence``), so that
    :func:`target_sentences` and :func:`target_table` need no second bootstrap."""
    from speechprune.stats import comparisons

    rows = comparisons(records, n_boot=n_boot)
    magnitude = {r["setting"]: r["summary"].median for r in rows if r["method"] == "magnitude"}
    out = []
    for r in rows:
        if r["method"] == "magnitude" or r["setting"] not in magnitude:
            continue
        m, base = r["summary"].median, magnitude[r["setting"]]
        out.append(dict(model=r["model"], data=r["data"], decoding=r["decoding"], scope=r["scope"],
                        sparsity=r["sparsity"], option=r["option"], seeds=r["summary"].n_seeds, median=m,
                        magnitude=base, ratio=m / base if base else math.inf, met=m <= ratio * base,
                        limit=ratio, sentence=r.get("sentence")))
    return out


def target_sentences(rows: list[dict], *, target: bool = True) -> dict[tuple, list[str]]:
    """The brief's target in words, per ``(scope, sparsity)``, from :func:`target_rows`: one sentence
    per clustering option, the lowest median first, each with its paired comparison with magnitude
    pruning (generated by :func:`speechprune.stats.comparisons`, so a comparison the data cannot
    decide says so). ``target=False`` leaves out whether the target is met (for clips the recipe
    was chosen on)."""
    out: dict[tuple, list[str]] = {}
    for t in sorted(rows, key=lambda t: t["median"]):
        seeds = f"{t['seeds']} seeds" if t["seeds"] > 1 else "a single run"
        out.setdefault((t["scope"], t["sparsity"]), []).append(
            f"{t['option']}, median {t['median']:.2f}% over {seeds}, {t['ratio']:.2f} times magnitude pruning's "
            f"{t['magnitude']:.2f}%" + (f" (target {'met' if t['met'] else 'not met'})" if target else "")
            + (f": {t['sentence']}" if t["sentence"] else ""))
    return out


def target_table(rows: list[dict], seeds: int = 5):
    """A pandas table of :func:`target_rows`: median, magnitude's, the ratio and whether the target
    is met (``so far`` while an option has fewer than ``seeds`` seeds)."""
    import pandas as pd

    table = [{
        "setting": f"{t['model'].removeprefix('embedded:')}, {t['scope']} {t['sparsity']:.0%}, {t['data']}",
        "option": t["option"], "seeds": t["seeds"], "median WER (%)": round(t["median"], 2),
        "magnitude (%)": round(t["magnitude"], 2), "ratio": round(t["ratio"], 2),
        f"target (ratio at most {t['limit']})": ("met" if t["met"] else "not met")
        + ("" if t["seeds"] >= seeds or t["seeds"] == 1 else f" so far ({t['seeds']} of {seeds} seeds)"),
    } for t in rows]
    return pd.DataFrame(table).set_index(["setting", "option"]) if table else pd.DataFrame()


def comparison_table(records: list[dict], n_boot: int = 2000, *, sentences: bool = True):
    """A pandas table: per setting and option, WER over seeds, the interval and (with ``sentences``)
    the comparison with magnitude pruning in words; a page that lists the sentences below its
    table leaves them out, so that the table fits a phone."""
    import pandas as pd

    from speechprune.stats import comparisons

    rows = []
    for r in sorted(comparisons(records, n_boot=n_boot),
                    key=lambda r: (str(r["setting"]), r["method"] != "magnitude", r["option"])):
        s = r["summary"]
        rows.append({
            "setting": f"{r['model'].removeprefix('embedded:')}, {r['scope']} {r['sparsity']:.0%}, {r['data']}, "
                       f"{r['decoding']}" + (f" (dense {r['dense']:.2f}%)" if "dense" in r else ""),
            "option": r["option"],
            "seeds": s.n_seeds,
            "median WER (%)": round(s.median, 2),
            "range": f"{s.low:.2f}-{s.high:.2f}" if s.n_seeds > 1 else "single run",
            "95% interval": f"[{s.interval[0]:.1f}, {s.interval[1]:.1f}]",
            **({"versus magnitude": r.get("sentence", "")} if sentences else {}),
        })
    return pd.DataFrame(rows).set_index(["setting", "option"]) if rows else pd.DataFrame()
