"""One line for a GPU that runs out of memory: which step, how much it asked for, what to lower."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from speechprune.errors import SpeechPruneError


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


@contextlib.contextmanager
def out_of_memory_as_error(step: str, advice: str) -> Iterator[None]:
    """Turn a CUDA out-of-memory error inside the block into one :class:`SpeechPruneError` line that
    says which ``step`` ran out, how much it asked for, what was free, and ``advice`` (which parameter
    to lower). The GPU's cache is emptied first, so the process can go on."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]iB)", str(err))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info()
            room = f"{_gib(free)} free of {_gib(total)}"
        else:
            room = "free memory unknown"
        needed = f"it asked for {asked.group(1)}" if asked else "the size it asked for is unknown"
        raise SpeechPruneError(f"the GPU ran out of memory while {step} ({needed}; {room}): {advice}") from None
