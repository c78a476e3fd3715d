"""Errors that name the user's mistake. The command line prints them without a traceback."""


class SpeechPruneError(ValueError):
    """Bad input: an unsupported model, a sparsity out of range, unreadable audio, ..."""
