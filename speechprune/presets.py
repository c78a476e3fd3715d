"""Cached measurements for the book: presets of the study runner, and the spread of their WERs.

:func:`measure` evaluates one (model, data, method, sparsity, scope, allocation) setting through
:func:`speechprune.study.execute` and caches the record as JSON keyed by its settings, so that
the chapters and the results page share runs instead of repeating them. :func:`wer_interval` and
:func:`wer_difference` hand such records to :mod:`speechprune.stats` (per-utterance bootstrap).
``speechprune compare`` (:func:`speechprune.experiment.run_comparison`) is the study runner's other preset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


from speechprune._version import __version__
from speechprune.data import load_speech
from speechprune.errors import SpeechPruneError, check_device
from speechprune.models import load_model
from speechprune.options import CompressionOptions
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
    settings = dict(model=model, data=data, max_samples=max_samples, method=method,
                    sparsity=f.get("sparsity", 0.0), scope=f.get("scope"), allocation=f.get("allocation"),
                    seed=f.get("seed"), features=f.get("features") if method == "cluster" else None,
                    speechprune=__version__)
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
