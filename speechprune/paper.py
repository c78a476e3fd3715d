"""Deprecated alias of :mod:`speechprune.book`, kept for one release.

Importing it warns; its public names are :mod:`speechprune.book`'s (the same objects). Its private
helpers are gone: they live, private, in :mod:`speechprune.presets` and :mod:`speechprune.book`.
"""

from __future__ import annotations

import warnings

from speechprune import book
from speechprune.book import *  # noqa: F401,F403  (the same objects, under the old module name)

warnings.warn("speechprune.paper is deprecated and will be removed in the next release; import from speechprune.book",
              DeprecationWarning, stacklevel=2)

__all__ = list(book.__all__)
