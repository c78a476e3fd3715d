"""Cached measurements for the book: presets of the study runner, and the spread of their WERs.

:func:`measure` evaluates one (model, data, method, sparsity, scope, allocation) setting through
:func:`speechprune.study.execute` and caches the record as JSON keyed by its settings, so that
the chapters and the results page share runs instead of repeating them. :func:`wer_interval` and
:func:`wer_difference` hand such records to :mod:`speechprune.stats` (per-utterance bootstrap).
``speechprune compare`` (:func:`speechprune.experiment.run_comparison`) is the study runner's other preset;
:func:`measure_main_job` is its main job (:func:`speechprune.experiment.run_main_job`) through :func:`measure`'s cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


from speechprune._version import __version__
from speechprune.data import load_speech
from speechprune.errors import SpeechPruneError, check_device
from speechprune.experiment import main_job_plan, main_job_record, main_job_result
from speechprune.models import load_model
from speechprune.options import RECORD_FIELDS, CompressionOptions
from speechprune.outputs import write_json
from speechprune.stats import paired_difference, summarize
from speechprune.study import execute, make_run, per_utterance

_loaded: dict[str, Any] = {}


def dense_model(spec: str, device: str = "cpu"):
    """``load_model(spec)``, loaded once per process and shared by every :func:`measure` call."""
    key = f"model:{spec}:{device}"
    if key not in _loaded:
        for old in [k for k in _loaded if k.startswith("model:")]:  # hold one model at a time
            del _loaded[old]
        _loaded[key] = load_model(spec, device=device)
    return _loaded[key]


def _speech(spec: str, max_samples: int | None):
    key = f"speech:{spec}:{max_samples}"
    if key not in _loaded:
        _loaded[key] = load_speech(spec, max_samples=max_samples)
    return _loaded[key]


def measure(model: str, data: str, options: CompressionOptions | None = None, *, max_samples: int | None = None,
            batch_size: int = 8, device: str | None = None, cache_dir: str | Path | None = None,
            build_id: str | None = None, **fields: Any) -> dict:
    """WER record of ``model`` on ``data``: dense without ``options``, else compressed with them first.

    ``options`` is a :class:`~speechprune.options.CompressionOptions`; its fields may be given as
    keywords instead (``method="cluster", sparsity=0.2, scope="ffn", ...``; no ``method``: dense).
    The record is :func:`speechprune.evaluate.evaluate`'s, plus ``compression`` (the
    :class:`~speechprune.compress.CompressionReport` as a dict, or None), ``settings`` and
    ``build_id``. With ``cache_dir``, a record saved for the same settings is loaded instead of
    measured again; delete the folder to measure afresh.
    """
    if options is None and fields.get("method") not in (None, "dense"):
        options = CompressionOptions(**fields)
    elif options is not None and fields:
        raise SpeechPruneError(f"measure: give options or their fields ({', '.join(fields)}), not both")
    f = options.record_fields() if options is not None else {}
    method = f.get("method")
    # every field that can change the compressed model (CompressionOptions.record_fields, the ones its
    # method ignores None, and .key(), which adds an explicit budget), so no two recipes share a record
    settings = dict(model=model, data=data, max_samples=max_samples, **{k: f.get(k) for k in RECORD_FIELDS},
                    options_key=options.key() if options is not None else None, speechprune=__version__)
    settings["sparsity"] = f.get("sparsity", 0.0)
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"{method or 'dense'}-{digest}.json" if cache_dir else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())

    device = check_device(device)
    dense, processor = dense_model(model, device)
    allocation = f.get("allocation")
    label = "dense" if not method else method if allocation == "uniform" else f"{method} ({allocation})"
    run = make_run(model, data, options, batch_size=batch_size, max_samples=max_samples, label=label)
    record = execute(run, dense, processor, _speech(data, max_samples), device=device)
    record.update(settings=settings, build_id=build_id)
    if path is not None:
        write_json(path, record, indent=1)
    return record


def measure_comparison(model: str, data_sets: list[str], *, sparsity: float, scope: str, seed: int = 0,
                       **run) -> dict[str, dict[str, dict]]:
    """Dense, magnitude and cluster records on each data set, by column title ("ours: DATA (N utt.)").

    ``run`` goes to :func:`measure` (``max_samples``, ``batch_size``, ``device``, ``cache_dir``, ``build_id``).
    """
    ours = {}
    for data in data_sets:
        recs = {"dense": measure(model, data, **run)}
        for method in ("magnitude", "cluster"):
            recs[method] = measure(model, data, method=method, sparsity=sparsity, scope=scope, seed=seed, **run)
        ours[f"ours: {data} ({recs['dense']['n_utterances']} utt.)"] = recs
    return ours


def measure_main_job(model: str, data: str, *, sparsity: float, scope: str, seeds: int = 3,
                     max_samples: int | None = None, batch_size: int = 8, device: str | None = None,
                     cache_dir: str | Path | None = None, build_id: str | None = None) -> dict:
    """:func:`speechprune.experiment.run_main_job` through :func:`measure`: the same runs (the dense
    model, the paper's recipe at seeds 0 .. ``seeds`` - 1, the recommended recipe, magnitude pruning)
    and the same result, but each run's record comes from ``cache_dir`` when it is there. After
    :func:`measure_comparison` at seed 0 with the same settings, the dense model, magnitude pruning
    and the paper's recipe at seed 0 are not measured again, and the dense model is loaded once.
    A record from the cache keeps the seconds it took when it was measured (compression and decoding).
    """
    plan = main_job_plan(model, data, sparsity=sparsity, scope=scope, seeds=seeds, batch_size=batch_size,
                         max_samples=max_samples)
    records = []
    for role, options, run in plan:
        full = measure(model, data, options, max_samples=max_samples, batch_size=batch_size, device=device,
                       cache_dir=cache_dir, build_id=build_id)
        seconds = (full.get("compression") or {}).get("seconds", 0.0) + full.get("decode_seconds", 0.0)
        records.append(main_job_record(role, run, full, seconds))
    return main_job_result(model, data, records, sparsity=sparsity, scope=scope, seeds=seeds)


# --- spread ----------------------------------------------------------------------------------

def _as_study_record(record: dict) -> dict:
    """An evaluate record in the per-utterance form :mod:`speechprune.stats` reads."""
    return dict(per_utterance(record), seed=(record.get("compression") or {}).get("seed"))


def wer_interval(record: dict, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval (over utterances) of one run's corpus WER, in percent."""
    return summarize([_as_study_record(record)], n_boot=n_boot, seed=seed).interval


def wer_difference(a: dict, b: dict, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """WER(a) - WER(b) in points with its 95% paired bootstrap interval; same utterances required."""
    d = paired_difference([_as_study_record(a)], [_as_study_record(b)], n_boot=n_boot, seed=seed)
    return d.median, d.interval[0], d.interval[1]
