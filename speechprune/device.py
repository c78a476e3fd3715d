"""The one default-device rule: ``cuda`` when a GPU is visible, else ``cpu``."""

from __future__ import annotations

import torch


def default_device(device: str | torch.device | None = None) -> str | torch.device:
    """``device`` when given, else ``"cuda"`` when available, else ``"cpu"``.

    ``compress``, ``evaluate`` and ``compare`` on the command line all use it, so every
    command runs on the same device unless told otherwise.
    """
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"
