"""Errors and warnings that name the user's mistake. The command line prints them in one line."""

from __future__ import annotations

import argparse
import math
import numbers
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


#: The seeds speechprune accepts: what numpy and torch generators both take.
SEED_MAX = 2**32 - 1


def check_int(name: str, value: object, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum], or a :class:`SpeechPruneError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            value = int(value)
        else:
            raise SpeechPruneError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = (f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}")
        raise SpeechPruneError(f"{name} must be {bounds}, got {value}")
    return value


def check_number(name: str, value: object, *, minimum: float | None = None, above: float | None = None) -> float:
    """``value`` as a finite float, at least ``minimum`` or strictly above ``above``."""
    try:
        number = float(value)  # type: ignore[arg-type]
        ok = not isinstance(value, bool) and math.isfinite(number)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SpeechPruneError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and number < minimum:
        raise SpeechPruneError(f"{name} must be at least {minimum:g}, got {value!r}")
    if above is not None and number <= above:
        raise SpeechPruneError(f"{name} must be greater than {above:g}, got {value!r}")
    return number


def check_seed(seed: object, name: str = "seed") -> int:
    """A seed numpy and torch both accept: a whole number in [0, 2**32 - 1]."""
    return check_int(name, seed, minimum=0, maximum=SEED_MAX)


def cli_int(minimum: int | None = None, maximum: int | None = None):
    """An argparse ``type`` for a whole number in [minimum, maximum] (a bad value: one line, exit 2)."""
    def parse(text: str) -> int:
        try:
            return check_int("the value", text.strip(), minimum=minimum, maximum=maximum)
        except SpeechPruneError as err:
            raise argparse.ArgumentTypeError(str(err).replace("the value ", "")) from None
    parse.__name__ = "whole number"
    return parse


def cli_float(minimum: float | None = None, above: float | None = None):
    """An argparse ``type`` for a finite number, at least ``minimum`` or above ``above``."""
    def parse(text: str) -> float:
        try:
            return check_number("the value", text, minimum=minimum, above=above)
        except SpeechPruneError as err:
            raise argparse.ArgumentTypeError(str(err).replace("the value ", "")) from None
    parse.__name__ = "number"
    return parse


cli_seed = cli_int(0, SEED_MAX)
