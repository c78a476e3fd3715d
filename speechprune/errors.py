"""Errors and warnings that name the user's mistake. The command line prints them in one line."""

from __future__ import annotations

import warnings
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


class SpeechPruneWarning(UserWarning):
    """Something the user should know: audio cut, a budget rounded to nothing, ... The run goes on."""


def warn(message: str) -> None:
    """Issue a :class:`SpeechPruneWarning` (the command line prints it as one line on stderr)."""
    warnings.warn(message, SpeechPruneWarning, stacklevel=2)


def check_choice(kind: str, value: object, choices: Collection[str]) -> None:
    """Raise ``unknown <kind> <value>: use one of <choices>`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise SpeechPruneError(f"unknown {kind} {value!r}: use one of {', '.join(choices)}")


def check_device(device: str | None, flag: str = "--device") -> str:
    """The device to run on (default: cuda when available, else cpu); refuse one this machine lacks."""
    import torch

    if device is None:
        from speechprune.device import default_device

        return default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise SpeechPruneError(f"unknown {flag} {device!r}: use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise SpeechPruneError(f"{flag} {device}: this machine has no usable CUDA GPU "
                                   f"(torch {torch.__version__}); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise SpeechPruneError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                                   f"numbered from 0")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise SpeechPruneError(f"{flag} {device}: this machine has no Apple GPU; use --device cpu")
    elif parsed.type != "cpu":
        raise SpeechPruneError(f"unsupported {flag} {device!r}: use cpu, cuda or cuda:N")
    return device
