"""The package's version, written once: here.

``speechprune/__init__.py`` re-exports it, the package metadata reads it (``pyproject.toml``), the
release workflow checks the tag against it, and the modules that record which speechprune wrote a
file or measured a record import it from here. This module imports nothing, so reading the version
does not depend on the order in which the package's ``__init__`` imports its modules.
"""

__version__ = "0.4.0"
