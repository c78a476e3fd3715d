"""Errors that name the user's mistake. The command line prints them without a traceback."""

from __future__ import annotations

from collections.abc import Collection


class SpeechPruneError(ValueError):
    """Bad input: an unsupported model, a sparsity out of range, unreadable audio, ..."""


def check_choice(kind: str, value: object, choices: Collection[str]) -> None:
    """Raise ``unknown <kind> <value>: use one of <choices>`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise SpeechPruneError(f"unknown {kind} {value!r}: use one of {', '.join(choices)}")
