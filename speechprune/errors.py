"""Errors that name the user's mistake. The command line prints them without a traceback."""

from __future__ import annotations

from collections.abc import Collection


class SpeechPruneError(ValueError):
    """Bad input: an unsupported model, a sparsity out of range, unreadable audio, ...

    Every message names the problem and the fix; the command line prints it without a
    traceback and exits with status 2. It subclasses ``ValueError``.

    Examples
    --------
    >>> from speechprune import SpeechPruneError, compress
    >>> from speechprune.testing import tiny_model
    >>> try:
    ...     compress(tiny_model("hubert"), sparsity=1.5, progress=False)
    ... except SpeechPruneError as err:
    ...     print(err)
    sparsity must be in [0, 1), got 1.5
    """


def check_choice(kind: str, value: object, choices: Collection[str]) -> None:
    """Raise ``unknown <kind> <value>: use one of <choices>`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise SpeechPruneError(f"unknown {kind} {value!r}: use one of {', '.join(choices)}")
