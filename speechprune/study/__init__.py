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

One module per job, all names reachable from here:

* :mod:`~speechprune.study.spec`: the study file (:func:`parse_study`, :func:`load_study`,
  :func:`dump_study`) and the runs it expands to (:class:`Run`, :func:`make_run`, :func:`run_key`);
* :mod:`~speechprune.study.store`: records and the results file, with the workers' lock and claims;
* :mod:`~speechprune.study.runner`: :func:`execute` one run, :func:`run_study` a whole study;
* :mod:`~speechprune.study.selection`: the selection rule of ``studies/README.md``;
* :mod:`~speechprune.study.tables`: tables, figures and sentences of saved studies, for the book;
* :mod:`~speechprune.study.cli`: ``speechprune study``.
"""

from speechprune.study.cli import register_cli
from speechprune.study.runner import execute, prepare_results, run_study
from speechprune.study.selection import (PAPER_OPTION, grid_cells, markdown_scores, recommend, screening_scores,
                                         select_options)
from speechprune.study.spec import (DECODINGS, KEY_FIELDS, OPTION_KEYS, SETTING_KEYS, STUDY_KEYS, Run,
                                    Study, check_scopes, check_sources, dump_study, load_study, make_run,
                                    parse_study, run_key)
from speechprune.study.store import (CLAIM_TIMEOUT_S, RECORD_FORMAT, REQUIRED_RECORD_FIELDS, check_record,
                                     load_records, per_utterance, read_results, records_of, reusable_records,
                                     study_record, write_results)
from speechprune.study.store import _claims_path, _locked  # noqa: F401  (private, but tests use them)
from speechprune.study.tables import (PACKAGE_STUDIES, seeds_table, markdown_summary, markdown_target,
                                      plot_records, recipe_of, saved_comparison, saved_study, status_headline,
                                      study_status,
                                      target_rows, target_sentences, target_table,
                                      LOSSLESS_TARGETS, lossless_rows)

__all__ = [
    # the study file and its runs
    "DECODINGS", "KEY_FIELDS", "OPTION_KEYS", "SETTING_KEYS", "STUDY_KEYS", "Run", "Study",
    "check_scopes", "check_sources", "dump_study", "load_study", "make_run", "parse_study", "run_key",
    # records and the results file
    "CLAIM_TIMEOUT_S", "RECORD_FORMAT", "REQUIRED_RECORD_FIELDS", "check_record", "load_records", "per_utterance",
    "read_results", "records_of", "reusable_records", "study_record", "write_results",
    # running
    "execute", "prepare_results", "run_study",
    # the selection rule
    "PAPER_OPTION", "grid_cells", "markdown_scores", "recommend", "screening_scores", "select_options",
    # the book's tables and figures
    "PACKAGE_STUDIES", "seeds_table", "markdown_summary", "markdown_target", "plot_records", "recipe_of",
    "saved_comparison", "saved_study", "status_headline", "study_status", "target_rows", "target_sentences",
    "target_table", "LOSSLESS_TARGETS", "lossless_rows",
    # the command line
    "register_cli",
]


def __getattr__(name: str):
    """``comparison_table``, the name of :func:`seeds_table` in 0.3 (the book's helpers have another
    ``comparison_table``, the paper against this project): it works for one release, with a warning."""
    if name == "comparison_table":
        import warnings

        warnings.warn("speechprune.study.comparison_table is deprecated and will be removed in the next release; "
                      "it is speechprune.study.seeds_table", DeprecationWarning, stacklevel=2)
        return seeds_table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
